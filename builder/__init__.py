"""Build prebuilt mkosi-initrd images (cpio initrds and UKIs) offline from a local RPM repository."""

__version__ = "0.1.0"

"""Installed as the package mkosi_initrd_builder.data (see setup.cfg): the spec template, the
kernel-install files and the product variants the builder reads with importlib.resources."""

"""The files the builder ships as package data: spec/ in the source tree, installed as the package
mkosi_initrd_builder.data and found with importlib.resources, so an installed builder (a wheel, an
RPM, an editable checkout) needs no checkout beside it."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from mkosi_initrd_builder.util.errors import BuilderError

DATA_PACKAGE = "mkosi_initrd_builder.data"


def data_path(*parts: str) -> Path:
    """A file or directory of the package data, as a real path: rpmbuild, mkosi and the spec's
    Sources need files on disk, so a zipped installation is refused rather than extracted."""
    try:
        path = files(DATA_PACKAGE)
    except ModuleNotFoundError:
        raise BuilderError(f"the package data {DATA_PACKAGE} is not installed",
                           hint="reinstall mkosi-initrd-builder") from None
    for part in parts:
        path = path / part
    if not isinstance(path, Path):
        raise BuilderError(f"{DATA_PACKAGE} is installed in a form that is not a directory "
                           f"({type(path).__name__}): install the package unpacked")
    return path


def product_variants_dir() -> Path:
    """The product's variant files (spec/variants/*.toml)."""
    return data_path("variants")


def spec_template() -> Path:
    """The template of the mkosi-initrd-initrd spec (spec/mkosi-initrd-initrd.spec.in)."""
    return data_path("mkosi-initrd-initrd.spec.in")


def kernel_install_dir() -> Path:
    """The kernel-install plugin and its configuration files (spec/kernel-install/)."""
    return data_path("kernel-install")

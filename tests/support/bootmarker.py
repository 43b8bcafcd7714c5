"""What the fixture init (tests/fixtures/SOURCES/initrd-init.sh) prints, as a boot probe: test
knowledge, kept out of the product, whose boot check works without it."""

from __future__ import annotations

import re

from mkosi_initrd_builder.checking.qemu import BootProbe

BOOT_MARKER = "MKOSI-INITRD-BOOT-OK"
FAIL_MARKER = "MKOSI-INITRD-BOOT-FAIL"


def fixture_marker(variant: str, kernel_version: str) -> str:
    """The regex of the line the fixture init prints once every module loaded."""
    return rf"{BOOT_MARKER} variant={re.escape(variant)} kernel={re.escape(kernel_version)}\b"


def fixture_probe(variant: str, kernel_version: str) -> BootProbe:
    return BootProbe(expect=fixture_marker(variant, kernel_version), fail=rf"{FAIL_MARKER}|Kernel panic - not syncing")


def renamed_fixture_variant(text: str, old: str, new: str) -> str:
    """A fixture variant file's text for a copy named `new`: the name the fixture init prints comes
    from the variant's own [files] entry, which must follow the file's new name."""
    line = f'"/etc/mkosi-initrd-fixture-variant" = "{old}\\n"'
    if line not in text:
        raise AssertionError(f"the fixture variant {old} no longer names itself with {line}")
    return text.replace(line, f'"/etc/mkosi-initrd-fixture-variant" = "{new}\\n"')

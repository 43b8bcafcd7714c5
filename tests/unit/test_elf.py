"""The ELF reader's DT_NEEDED list against binutils' readelf, and the removal checks built on it."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from mkosi_initrd_builder.building.formats.initrd import broken_links, leftovers
from mkosi_initrd_builder.checking.cpio import CpioEntry
from mkosi_initrd_builder.util.elf import is_elf64, needed

HOST_BINARIES = [Path(p) for p in ("/usr/bin/ls", "/usr/bin/python3", "/usr/bin/zstd", "/usr/bin/cpio")
                 if Path(p).is_file()]


@pytest.mark.skipif(shutil.which("readelf") is None, reason="binutils' readelf is not installed to compare with")
@pytest.mark.parametrize("binary", HOST_BINARIES, ids=lambda p: p.name)
def test_needed_matches_readelf(binary):
    out = subprocess.run(["readelf", "-d", str(binary)], capture_output=True, text=True, check=True).stdout
    assert needed(binary.read_bytes()) == tuple(re.findall(r"\(NEEDED\).*\[(.*)\]", out))


def test_not_elf_and_truncated_elf_are_told_apart():
    assert not is_elf64(b"#!/bin/sh\n")
    data = HOST_BINARIES[0].read_bytes()
    with pytest.raises(ValueError):
        needed(data[:0x48])


def entry(name: str, data: bytes = b"", mode: int = stat.S_IFREG | 0o755) -> CpioEntry:
    return CpioEntry(name, mode, len(data), 0, data)


def test_removing_a_linked_library_is_named_with_the_file_that_links_it():
    ls = HOST_BINARIES[0].read_bytes()
    sonames = needed(ls)
    assert sonames, "the host's ls links libraries"
    kept = [entry(f"usr/lib64/{s}") for s in sonames[1:]]
    image = [entry("usr/bin/ls", ls), *kept]
    gone = sonames[0]
    # The removed library's glob is found; a glob that could not have taken it is not blamed.
    assert broken_links(["/usr/lib*/**/" + gone.split(".so")[0] + ".so*", "/usr/bin/nothing*"], image) == \
        [("/usr/lib*/**/" + gone.split(".so")[0] + ".so*", "usr/bin/ls", gone)]
    # With the library in the image, or no removal that names it, nothing is broken.
    assert broken_links(["/usr/lib*/**/" + gone.split(".so")[0] + ".so*"], [*image, entry(f"usr/lib/{gone}")]) == []
    assert broken_links(["/usr/bin/nothing*"], image) == []


def test_leftovers_name_files_a_glob_should_have_taken():
    image = [entry("usr/bin/btrfs"), entry("usr/bin", mode=stat.S_IFDIR | 0o755), entry("usr/bin/bash"),
             entry("usr/share/zsh/f/_a")]
    assert leftovers(["/usr/bin/btrfs*", "/usr/share/zsh"], image) == \
        [("/usr/bin/btrfs*", "usr/bin/btrfs"), ("/usr/share/zsh", "usr/share/zsh/f/_a")]
    assert leftovers(["/usr/sbin/*"], image) == []

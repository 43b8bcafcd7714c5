"""The real-content distribution's table and helpers, offline: the mapping covers every package the
product variants and mkosi-initrd ask for, versions and file names map to RPM, dlopen notes
become dependencies."""

from __future__ import annotations

import json
import re
import struct

import pytest

from mkosi_initrd_builder.building.variants import load_variants
from tests.conftest import PRODUCT_VARIANTS, TOOLS
from tests.realcontent.distribution import LOCALE_FILE_RE, rpm_file_entry, rpm_version
from tests.realcontent.elfnotes import NOTE_TYPE, dlopen_dependencies, read_dlopen_notes, soname_dependency
from tests.realcontent.mapping import MappingError, glob_match, load_mapping

MKOSI_INITRD = TOOLS / "mkosi/usr/lib/python3/dist-packages/mkosi/resources/mkosi-initrd"


def provided_names() -> set[str]:
    mapping = load_mapping()
    return {p.name for p in mapping.packages} | {x for p in mapping.packages for x in p.provides}


def mkosi_initrd_fedora_packages() -> set[str]:
    """Packages= of mkosi-initrd's configuration files that apply to Fedora (cpio output)."""
    if not MKOSI_INITRD.is_dir():
        pytest.skip("mkosi is not extracted into .tools (run 'make setup')")
    names: set[str] = set()
    for conf in (MKOSI_INITRD / "mkosi.conf", MKOSI_INITRD / "mkosi.conf.d/10-azure-centos-fedora.conf",
                 MKOSI_INITRD / "mkosi.conf.d/10-fedora.conf"):
        collecting = False
        for raw in conf.read_text().splitlines():
            line = raw.split("#", 1)[0].rstrip()
            if re.match(r"^Packages=", line):
                collecting = True
                names.update(line.split("=", 1)[1].split())
            elif collecting and line.startswith((" ", "\t")):
                names.update(line.split())
            elif line.strip():
                collecting = False
    return names


def test_mapping_provides_every_package_the_product_variants_ask_for():
    wanted = {p for v in load_variants(PRODUCT_VARIANTS) for p in v.packages} | {"systemd-boot-unsigned"}
    assert sorted(wanted - provided_names()) == []


def test_mapping_provides_mkosi_initrd_fedora_package_set():
    assert sorted(mkosi_initrd_fedora_packages() - provided_names()) == []


def test_mapping_splits_like_fedora():
    mapping = load_mapping()
    splits = {p.name: p.split_from for p in mapping.packages if p.split_from}
    assert splits["xfsprogs-xfs_scrub"] == "xfsprogs"
    assert splits["glibc-gconv-extra"] == "glibc"
    assert splits["util-linux-core"] == "util-linux"
    scrub = mapping.package("xfsprogs-xfs_scrub")
    assert scrub.takes("/usr/sbin/xfs_scrub") and not scrub.takes("/usr/sbin/xfs_repair")
    gconv = mapping.package("glibc-gconv-extra")
    assert gconv.takes("/usr/lib/x86_64-linux-gnu/gconv/IBM1047.so")
    assert not gconv.takes("/usr/lib/x86_64-linux-gnu/gconv/UTF-16.so")


def test_mapping_rejects_unknown_keys_naming_package_and_key(tmp_path):
    bad = tmp_path / "mapping.toml"
    bad.write_text('[distribution]\nsuite="trixie"\ncomponents=["main"]\nuris=["http://x"]\nsigned-by="/k"\n'
                   'debian-arch="amd64"\nrpm-arch="x86_64"\n[package.foo]\ndebian=["foo"]\nrequire=["bar"]\n')
    with pytest.raises(MappingError, match=r"\[package.foo\]: unknown key 'require'"):
        load_mapping(bad)
    # an unquoted dotted name in [exclude] is a TOML table, not a package name
    bad.write_text(bad.read_text().replace("require=", "requires=") + '[exclude]\nlogin.defs = "why"\n')
    with pytest.raises(MappingError, match=r"\[exclude\]: login: expected the reason as a string"):
        load_mapping(bad)


@pytest.mark.parametrize("pattern,path,matches", [
    ("/usr/share/doc/**", "/usr/share/doc/bash/copyright", True),
    ("/usr/lib/x/gconv/*.so", "/usr/lib/x/gconv/A.so", True),
    ("/usr/lib/x/gconv/*.so", "/usr/lib/x/gconv/sub/A.so", False),
    ("/usr/*bin/partx", "/usr/sbin/partx", True),
    ("/usr/lib/systemd/system/xfs_scrub*", "/usr/lib/systemd/system/xfs_scrub@.service", True),
])
def test_glob_match(pattern, path, matches):
    assert glob_match(path, pattern) is matches


@pytest.mark.parametrize("debian,version,release", [
    ("2:2.7.5-2", "2.7.5", "2"),
    ("257.13-1~deb13u1", "257.13", "1~deb13u1"),
    ("3.1-20250104-1", "3.1_20250104", "1"),
    ("0.280", "0.280", "0"),
])
def test_debian_version_becomes_rpm_version(debian, version, release):
    v = rpm_version(debian)
    assert (v.version, v.release) == (version, release)


def test_file_names_are_escaped_for_files_lists():
    assert rpm_file_entry("/usr/bin/[") == "/usr/bin/[[]"
    assert rpm_file_entry("/a/x\\x2d*") == "/a/x[\\]x2d[*]"
    assert rpm_file_entry("/usr/lib/systemd/system/system-systemd\\x2dcryptsetup.slice") == \
        "/usr/lib/systemd/system/system-systemd\\x2dcryptsetup.slice"
    assert rpm_file_entry("/a b%c") == '"/a b%%c"'
    assert LOCALE_FILE_RE.match("/usr/share/locale/sr@latin/LC_MESSAGES/x.mo").group(1) == "sr@latin"
    assert LOCALE_FILE_RE.match("/usr/share/locale/locale.alias") is None


def elf_with_dlopen_note(entries: list[dict]) -> bytes:
    """A minimal ELF64 little-endian object with one .note.dlopen section."""
    desc = json.dumps(entries).encode() + b"\0"
    desc += b"\0" * (-len(desc) % 4)
    note = struct.pack("<III", 4, len(desc), NOTE_TYPE) + b"FDO\0" + desc
    shstrtab = b"\0.note.dlopen\0.shstrtab\0"
    data_off = 64
    strtab_off = data_off + len(note)
    shoff = strtab_off + len(shstrtab)
    shoff += -shoff % 8
    header = b"\x7fELF" + bytes([2, 1, 1]) + b"\0" * 9
    header += struct.pack("<HHIQQQIHHHHHH", 3, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 3, 2)
    sections = struct.pack("<IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    sections += struct.pack("<IIQQQQIIQQ", 1, 7, 2, 0, data_off, len(note), 0, 0, 4, 0)
    sections += struct.pack("<IIQQQQIIQQ", 14, 3, 0, 0, strtab_off, len(shstrtab), 0, 0, 1, 0)
    body = header + note + shstrtab
    return body + b"\0" * (shoff - len(body)) + sections


def test_dlopen_notes_become_dependencies_by_priority():
    elf = elf_with_dlopen_note([
        {"feature": "kmod", "priority": "recommended", "soname": ["libkmod.so.2"]},
        {"feature": "bpf", "priority": "suggested", "soname": ["libbpf.so.1", "libbpf.so.0"]},
        {"feature": "zstd", "priority": "required", "soname": ["libzstd.so.1"]},
    ])
    notes = read_dlopen_notes(elf)
    assert [n.feature for n in notes] == ["kmod", "bpf", "zstd"]
    deps = dlopen_dependencies(notes, load_mapping().dlopen)
    assert deps == {
        "Requires": ["libkmod.so.2()(64bit)", "libzstd.so.1()(64bit)"],
        "Suggests": ["(libbpf.so.1()(64bit) or libbpf.so.0()(64bit))"],
    }
    assert soname_dependency(["libfoo.so.1"], bits64=False) == "libfoo.so.1()"
    assert read_dlopen_notes(b"not an elf") == []


def test_boot_cases_have_distinct_roots_and_document_the_luks_method():
    from tests.realcontent.disks import BOOT_CASES, UUIDS

    names = [c.name for c in BOOT_CASES]
    assert names[:3] == ["plain", "lvm", "luks"] and len(set(names)) == len(names)
    luks = next(c for c in BOOT_CASES if c.name == "luks")
    line = luks.append()
    assert f"rd.luks.name={UUIDS['luks']}=cryptroot" in line
    assert f"rd.luks.key={UUIDS['luks']}=/root.key:LABEL=rckey" in line
    assert "key" in luks.disks and "key file" in luks.method
    assert len({(c.disks, c.append()) for c in BOOT_CASES}) == len(BOOT_CASES)


def test_failed_units_are_read_from_the_console():
    from tests.realcontent.matrix import MARKER_RE, failed_units

    console = ("[\x1b[0;32m  OK  \x1b[0m] Started foo.\n"
               "[\x1b[0;1;31mFAILED\x1b[0m] Failed to start \x1b[0;1;39mldconfig.service\x1b[0m - Rebuild.\n")
    assert failed_units(console) == ("Failed to start ldconfig.service - Rebuild.",)
    m = MARKER_RE.search("REALCONTENT-ROOT-OK case=lvm uptime=18.85 root=/dev/mapper/rcvg-root")
    assert m and m.groups() == ("lvm", "18.85", "/dev/mapper/rcvg-root")

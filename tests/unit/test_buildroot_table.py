"""The buildroot's table (tests/realcontent/buildroot.toml) and the machinery it added to the
real-content builder, offline: /usr/sbin relocation, the skeleton-link check, reserved names,
comps groups, and the agreement of the table with the fixture filesystem it is installed on."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.realcontent.buildroot import BUILDROOT_FILE, IMAGE_TOOLS
from tests.realcontent.distribution import (
    DistributionError, RpmPlan, check_skeleton_links, relocate, requirement_alternatives,
)
from tests.realcontent.mapping import MappingError, load_mapping
from tests.support.fixtures import SPECS_DIR

HEADER = ('[distribution]\nsuite="trixie"\ncomponents=["main"]\nuris=["http://x"]\nsigned-by="/k"\n'
          'debian-arch="amd64"\nrpm-arch="x86_64"\n')


def tree(root: Path, files: dict[str, str]) -> Path:
    """files: path -> content, or '-> target' for a symlink."""
    for path, content in files.items():
        full = root / path.lstrip("/")
        full.parent.mkdir(parents=True, exist_ok=True)
        if content.startswith("-> "):
            full.symlink_to(content[3:])
        else:
            full.write_text(content)
    return root


def test_relocate_moves_files_and_keeps_relative_links_working(tmp_path):
    root = tree(tmp_path / "t", {"/usr/sbin/ldconfig": "x", "/usr/sbin/modprobe": "-> ../bin/kmod",
                                 "/usr/sbin/halt": "-> ldconfig", "/usr/bin/kmod": "k"})
    relocate(root, [("/usr/sbin", "/usr/bin")], "pkg")
    assert not (root / "usr/sbin").exists()
    assert (root / "usr/bin/ldconfig").read_text() == "x"
    assert (root / "usr/bin/modprobe").resolve() == (root / "usr/bin/kmod").resolve()
    assert (root / "usr/bin/halt").resolve() == (root / "usr/bin/ldconfig").resolve()


def test_relocate_keeps_one_of_two_links_to_the_same_file(tmp_path):
    # trixie's kmod ships lsmod in both /usr/bin (-> kmod) and /usr/sbin (-> ../bin/kmod).
    root = tree(tmp_path / "t", {"/usr/bin/kmod": "k", "/usr/bin/lsmod": "-> kmod", "/usr/sbin/lsmod": "-> ../bin/kmod"})
    relocate(root, [("/usr/sbin", "/usr/bin")], "kmod")
    assert os.readlink(root / "usr/bin/lsmod") == "kmod"


@pytest.mark.parametrize("files", [
    {"/usr/bin/tool": "a", "/usr/sbin/tool": "b"},
    {"/usr/bin/tool": "-> a", "/usr/sbin/tool": "-> b"},
])
def test_relocate_refuses_a_name_clash(tmp_path, files):
    root = tree(tmp_path / "t", files)
    with pytest.raises(DistributionError, match=r"pkg: relocating /usr/sbin/tool to /usr/bin: /usr/bin/tool exists"):
        relocate(root, [("/usr/sbin", "/usr/bin")], "pkg")


def test_skeleton_links_may_not_be_shipped_or_shipped_below(tmp_path):
    ok = RpmPlan("ok", "1", "1", "x86_64", "s", tree(tmp_path / "ok", {"/usr/bin/a": "a", "/usr/lib64/ld.so": "l"}), [])
    check_skeleton_links([ok], ["/lib64", "/usr/sbin"])
    bad = RpmPlan("bad", "1", "1", "x86_64", "s", tree(tmp_path / "bad", {"/usr/sbin/x": "x"}), [])
    with pytest.raises(DistributionError, match=r"/usr/sbin/x \(bad\)"):
        check_skeleton_links([ok, bad], ["/lib64", "/usr/sbin"])


def test_requirement_alternatives():
    assert requirement_alternatives("(libfoo.so.1()(64bit) or libfoo.so.0()(64bit))") == \
        ["libfoo.so.1()(64bit)", "libfoo.so.0()(64bit)"]
    assert requirement_alternatives("python(abi) = 3.13") == ["python(abi)"]


def test_tables_reject_reserved_names_and_unknown_group_members(tmp_path):
    bad = tmp_path / "t.toml"
    bad.write_text(HEADER + 'reserved=["busybox"]\n[package.busybox]\ndebian=["busybox"]\n')
    with pytest.raises(MappingError, match=r"t.toml: \[package.busybox\]: the name is reserved"):
        load_mapping(bad)
    bad.write_text(HEADER + 'reserved=["filesystem"]\n[package.bash]\ndebian=["bash"]\n'
                   '[groups]\nbuild=["filesystem", "bash", "nosuch"]\n')
    with pytest.raises(MappingError, match=r"\[groups\]: build: no package nosuch"):
        load_mapping(bad)
    bad.write_text(HEADER + 'relocated={"/usr/sbin"="/usr/bin"}\n')
    with pytest.raises(MappingError, match=r"\[distribution\]: unknown key\(s\) relocated"):
        load_mapping(bad)


def fixture_spec_names() -> set[str]:
    names = set()
    for spec in SPECS_DIR.glob("*.spec"):
        text = spec.read_text()
        names |= set(re.findall(r"^Name:\s+(\S+)", text, re.M))
        names |= set(re.findall(r"^%package -n (\S+)", text, re.M))
    return names


def test_buildroot_table_reserves_exactly_the_fixture_packages():
    table = load_mapping(BUILDROOT_FILE)
    assert set(table.distribution.reserved) == fixture_spec_names()
    assert "kmod" in {p.name for p in table.packages}


def test_buildroot_skeleton_matches_the_fixture_filesystem():
    """The directories and links the table expects are the ones filesystem.spec ships."""
    spec = (SPECS_DIR / "filesystem.spec").read_text()
    dirs = set(re.findall(r"^%dir (?:%attr\([^)]*\) )?(\S+)$", spec, re.M))
    # /etc/os-release is a link to a file, not a directory: a package shipping it is a plain file
    # conflict (check_file_conflicts), nothing can land below it.
    links = {"/" + m for m in re.findall(r"^ln -s \S+ (\S+)$", spec, re.M)} - {"/etc/os-release"}
    table = load_mapping(BUILDROOT_FILE)
    assert set(table.distribution.skeleton) == dirs
    assert set(table.distribution.skeleton_links) == links
    assert dict(table.distribution.relocate) == {"/usr/sbin": "/usr/bin"}


def test_buildroot_table_makes_the_build_group_and_the_image_tools():
    table = load_mapping(BUILDROOT_FILE)
    names = {p.name for p in table.packages}
    group = table.groups["build"]
    assert set(group) - names == {"filesystem", "basesystem", "setup"}   # the fixture's
    # mock: the host's useradd --prefix edits setup's /etc/passwd; nspawn resolves the build user
    # with glibc-common's getent inside the buildroot.
    for wanted in ("bash", "coreutils", "util-linux", "rpm", "rpm-build", "cpio", "zstd", "glibc-common"):
        assert wanted in group
    assert set(IMAGE_TOOLS) <= names
    assert {"python3", "python3-dnf", "dnf", "python3-rpm", "python3-pefile", "createrepo_c", "python3-createrepo_c",
            "python3-zstandard"} <= names

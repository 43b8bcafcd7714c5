"""Path containment and temp-then-rename writes."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from mkosi_initrd_builder.util.fsutil import (
    RemoveGlobs, atomic_write, is_within, link_or_private_copy, normalized_absolute, private_copy, replace_dir,
)


@pytest.mark.parametrize("path, root, inside", [
    ("/srv/repo/a.rpm", "/srv/repo", True),
    ("/srv/repo", "/srv/repo", True),
    ("/srv/repository/a.rpm", "/srv/repo", False),   # a string prefix, not a path prefix
    ("/srv/repo/../etc/passwd", "/srv/repo", False),
    ("/srv/repo/x/../a.rpm", "/srv/repo", True),
    ("/srv", "/srv/repo", False),
])
def test_is_within_compares_whole_components(path, root, inside):
    assert is_within(Path(path), Path(root)) is inside


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    atomic_write(target, "old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError):
        atomic_write(target, "new")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_replace_dir_swaps_whole_directory(tmp_path):
    final = tmp_path / "variant"
    final.mkdir()
    (final / "old-only").write_text("x")
    new = tmp_path / "new"
    new.mkdir()
    (new / "initrd").write_text("y")
    replace_dir(new, final)
    assert sorted(p.name for p in final.iterdir()) == ["initrd"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["variant"]


@pytest.mark.parametrize("text, path", [("//", "/"), ("///var//cache/", "/var/cache"), ("//srv/./a/../b", "/srv/b")])
def test_normalized_absolute_folds_slashes_and_dots(text, path):
    assert str(normalized_absolute(text)) == path


def test_private_copy_owns_its_inode_and_hashes_what_it_holds(tmp_path):
    src = tmp_path / "src"
    data = os.urandom(3 * (1 << 20) + 17)  # more than one chunk, not a multiple of it
    src.write_bytes(data)
    size, digests, _ = private_copy(src, tmp_path / "dst", ["sha256", "sha1"])
    assert size == len(data)
    assert digests == {"sha256": hashlib.sha256(data).hexdigest(), "sha1": hashlib.sha1(data).hexdigest()}
    assert not os.path.samefile(src, tmp_path / "dst")
    with open(src, "r+b") as f:  # a later writer changes the source in place
        f.write(b"\0" * 16)
    assert (tmp_path / "dst").read_bytes() == data


@pytest.mark.parametrize("place", [private_copy, link_or_private_copy], ids=lambda f: f.__name__)
def test_placing_a_package_never_overwrites(tmp_path, place):
    (tmp_path / "src").write_bytes(b"new")
    (tmp_path / "dst").write_bytes(b"old")
    with pytest.raises(FileExistsError):
        place(tmp_path / "src", tmp_path / "dst", ["sha256"])
    assert (tmp_path / "dst").read_bytes() == b"old"


def test_link_or_private_copy_links_within_a_file_system(tmp_path):
    (tmp_path / "src").write_bytes(b"package")
    assert link_or_private_copy(tmp_path / "src", tmp_path / "dst", ["sha256"]) is None
    assert os.path.samefile(tmp_path / "src", tmp_path / "dst")


@pytest.mark.parametrize("code", [errno.EXDEV, errno.EMLINK, errno.EPERM])
def test_link_or_private_copy_copies_where_the_link_is_refused(tmp_path, monkeypatch, code):
    data = os.urandom(70_000)
    (tmp_path / "src").write_bytes(data)

    def refuse(src, dst):
        raise OSError(code, os.strerror(code), str(src), None, str(dst))

    monkeypatch.setattr(os, "link", refuse)
    got = link_or_private_copy(tmp_path / "src", tmp_path / "dst", ["sha256"])
    assert got == (len(data), {"sha256": hashlib.sha256(data).hexdigest()})
    assert not os.path.samefile(tmp_path / "src", tmp_path / "dst")


@pytest.mark.parametrize("pattern, name, removed", [
    ("/usr/bin/btrfs*", "usr/bin/btrfs-convert", True),
    ("/usr/bin/btrfs*", "usr/sbin/btrfs", False),
    ("/usr/*bin/mkfs*", "usr/sbin/mkfs.xfs", True),
    ("/usr/lib*/**/libssl.so*", "usr/lib64/libssl.so.3", True),
    ("/usr/lib*/**/libssl.so*", "usr/lib/x86_64-linux-gnu/libssl.so.3", True),
    ("/usr/lib*/**/libssl.so*", "usr/libssl.so.3", False),
    ("/usr/share/zsh", "usr/share/zsh/functions/_x", True),   # a directory takes its contents along
    ("/usr/share/zsh", "usr/share/zsh-extra", False),         # whole components, not prefixes
    ("/usr/*/x", "usr/a/b/x", False),                         # '*' stays within one component
    ("/usr/**", "usr", True),
])
def test_glob_removes_reads_globs_as_path_glob_does(pattern, name, removed):
    assert bool(RemoveGlobs.compile([pattern]).removing(name)) is removed


def test_glob_removes_agrees_with_path_glob(tmp_path):
    names = ["usr/bin/btrfs", "usr/bin/btrfs-convert", "usr/sbin/mkfs.xfs", "usr/lib64/libssl.so.3",
             "usr/lib/x86_64-linux-gnu/libssl.so.3", "usr/lib/x86_64-linux-gnu/engines/x.so", "usr/share/zsh/f/_a",
             "usr/bin/[b", "usr/bin/a]b", "usr/lib/.hidden/x.so", "etc/libssl.so.1"]
    for n in names:
        (tmp_path / n).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / n).write_text("")
    for pattern in ("/usr/*bin/btrfs*", "/usr/lib*/**/libssl.so*", "/usr/lib*/**/*.so", "/usr/share/zsh",
                    "/usr/*/x86_64-linux-gnu", "/**/libssl.so*", "/usr/s[!b]*", "/usr/bin/btrfs?convert",
                    "/usr/bin/[b", "/usr/bin/[!b]*", "/usr/bin/[]a]*", "/usr/lib/*/x.so", "/usr/lib*/[e-m]*/*.so",
                    "/usr/**/[.]hidden", "/etc/*.so.[0-9]", "/usr/bin[!x]btrfs"):
        globbed = {p.relative_to(tmp_path).as_posix() for p in tmp_path.glob(pattern.lstrip("/"))}
        taken = {n for n in names if any(n == g or n.startswith(g + "/") for g in globbed)}
        removals = RemoveGlobs.compile([pattern])
        assert {n for n in names if removals.removing(n)} == taken, pattern


def test_remove_globs_names_each_pattern_that_takes_a_name():
    removals = RemoveGlobs.compile(["/usr/*bin/btrfs*", "/usr/bin", "/usr/lib*/**/libssl.so*", "/usr/share/zsh"])
    assert removals.removing("usr/bin/btrfs-convert") == ["/usr/*bin/btrfs*", "/usr/bin"]
    assert removals.removing("usr/lib/x86_64-linux-gnu/libssl.so.3") == ["/usr/lib*/**/libssl.so*"]
    assert removals.removing("usr/share/zsh-extra/x") == []
    assert RemoveGlobs.compile([]).removing("usr/bin/sh") == []

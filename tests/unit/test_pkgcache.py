"""The package cache touches only what it made: it claims new or empty directories with a marker,
refuses any other, and cleans only its own temporary files."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from mkosi_initrd_builder.util.errors import CacheError
from mkosi_initrd_builder.staging.cache import MARKER, STALE_TEMP_SECONDS, PackageCache
from mkosi_initrd_builder.util.workdirs import OWNER_FILE, OWNER_FORMAT


def snapshot(root: Path) -> dict[str, tuple[int, float]]:
    """Every path below `root` with its size and mtime: what a test asserts did not change."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime)
    return out


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)


def test_new_directory_becomes_a_marked_cache(tmp_path):
    cache = PackageCache(tmp_path / "a" / "cache")
    assert json.loads((cache.root / MARKER).read_text())["format"].startswith("mkosi-initrd-package-cache/")
    assert sorted(p.name for p in cache.root.iterdir()) == sorted([MARKER, "tmp", "locks", "resolved"])
    PackageCache(cache.root)  # a marked cache is reused


def test_empty_directory_is_claimed(tmp_path):
    (tmp_path / "empty").mkdir()
    PackageCache(tmp_path / "empty")
    assert (tmp_path / "empty" / MARKER).is_file()


def test_unmarked_directory_is_refused_and_left_untouched(tmp_path):
    home = tmp_path / "home"
    (home / "tmp").mkdir(parents=True)
    (home / "tmp" / "old-notes.part").write_text("mine")
    (home / "tmp" / ".x.abcdefgh.part").write_text("looks like ours, is not")
    for p in (home / "tmp").iterdir():
        age(p, 2 * STALE_TEMP_SECONDS)
    (home / "notes.txt").write_text("mine")
    before = snapshot(home)
    with pytest.raises(CacheError) as e:
        PackageCache(home)
    assert e.value.path == home
    assert str(e.value).startswith(f"cache {home}: not empty and holds no {MARKER}")
    assert snapshot(home) == before


def test_double_slash_root_is_the_root(tmp_path):
    cache = PackageCache(Path("/" + str(tmp_path / "c")))
    assert str(cache.root) == str(tmp_path / "c")
    with pytest.raises(CacheError, match=r"^cache /: not empty"):
        PackageCache(Path("//"))


def test_stale_cleanup_removes_only_its_own_temp_files(tmp_path):
    cache = PackageCache(tmp_path / "c")
    live = cache.temp_path("pkg.rpm")  # a staging still running: its partial download stays, however old
    live.write_text("partial")  # the fetch creates it
    loose = cache.root / "tmp" / ".pkg.rpm.abcdefgh.part"  # as earlier versions left them in tmp/
    loose.write_text("partial")
    fresh = cache.root / "tmp" / ".other.rpm.abcdefgh.part"
    fresh.write_text("partial")
    foreign = cache.root / "tmp" / "someone-elses.txt"
    foreign.write_text("x")
    victim = tmp_path / "victim.part"
    victim.write_text("outside")
    link = cache.root / "tmp" / ".link.abcdefgh.part"
    link.symlink_to(victim)
    for p in (live, loose, foreign, link, victim):
        age(p, 2 * STALE_TEMP_SECONDS)
    PackageCache(cache.root)
    assert not loose.exists()
    assert live.exists() and fresh.exists() and foreign.exists() and victim.read_text() == "outside"
    assert link.is_symlink()  # a link is not a file the cache wrote
    cache.close()
    assert sorted(p.name for p in (cache.root / "tmp").iterdir()) == sorted([fresh.name, foreign.name, link.name])


def test_a_killed_stagings_partial_downloads_go_and_look_alikes_stay(tmp_path):
    cache = PackageCache(tmp_path / "c")
    dead = cache.root / "tmp" / "run-deadbeef"  # what a kill -9 leaves: the owner file no one locks
    dead.mkdir()
    (dead / OWNER_FILE).write_text(json.dumps({"format": OWNER_FORMAT, "pid": 999999}))
    (dead / ".pkg.rpm.abcdefgh.part").write_text("partial")
    unproven = cache.root / "tmp" / "run-someones"  # the name, but no owner file
    unproven.mkdir()
    (unproven / ".pkg.rpm.abcdefgh.part").write_text("keep")
    forged = cache.root / "tmp" / "run-forged"  # an owner file that is no owner record of ours
    forged.mkdir()
    (forged / OWNER_FILE).write_text("{}")
    PackageCache(cache.root)
    assert not dead.exists()
    assert (unproven / ".pkg.rpm.abcdefgh.part").read_text() == "keep" and (forged / OWNER_FILE).read_text() == "{}"


def test_layout_directory_replaced_by_a_link_is_refused(tmp_path):
    cache = PackageCache(tmp_path / "c")
    (cache.root / "tmp").rmdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / ".old.abcdefgh.part").write_text("keep")
    age(elsewhere / ".old.abcdefgh.part", 2 * STALE_TEMP_SECONDS)
    (cache.root / "tmp").symlink_to(elsewhere)
    with pytest.raises(CacheError, match="tmp is not a directory"):
        PackageCache(cache.root)
    assert (elsewhere / ".old.abcdefgh.part").read_text() == "keep"


@pytest.mark.parametrize("content, message", [
    ("not json", "unreadable"),
    ('{"format": "other-tool/9"}', "says 'other-tool/9'"),
])
def test_foreign_marker_is_refused(tmp_path, content, message):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / MARKER).write_text(content)
    with pytest.raises(CacheError, match=message):
        PackageCache(tmp_path / "c")
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [MARKER]


def test_a_file_is_no_cache(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(CacheError, match="not a directory"):
        PackageCache(tmp_path / "f")
    with pytest.raises(CacheError, match="not a directory|cannot create"):
        PackageCache(tmp_path / "f" / "c")


def _hold_stripe(cache: PackageCache, checksum: str) -> int:
    import fcntl

    fd = os.open(cache.root / "locks" / checksum[:2], os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_waiting_for_a_held_entry_gives_up_after_its_bound_and_names_the_entry(tmp_path):
    import threading

    cache = PackageCache(tmp_path / "cache")
    checksum = "ab" * 32
    fd = _hold_stripe(cache, checksum)
    try:
        with pytest.raises(CacheError, match=f"waited 0.2s for another staging to finish the entry {checksum}"):
            with cache.lock(checksum, stop=threading.Event(), timeout=0.2):
                pass
    finally:
        os.close(fd)
    with cache.lock(checksum, stop=threading.Event(), timeout=0.2):
        pass  # free again: taken at once


def test_waiting_for_a_held_entry_ends_when_the_staging_is_stopped(tmp_path):
    import threading

    from mkosi_initrd_builder.staging.download import Interrupted

    cache = PackageCache(tmp_path / "cache")
    checksum = "cd" * 32
    fd = _hold_stripe(cache, checksum)
    stop = threading.Event()
    timer = threading.Timer(0.2, stop.set)
    timer.start()
    try:
        with pytest.raises(Interrupted):
            with cache.lock(checksum, stop=stop, timeout=3600):
                pass
    finally:
        timer.cancel()
        os.close(fd)


def _verified_file(path: Path, data: bytes, mode: int = 0o444) -> tuple[str, dict]:
    """A file as a staging leaves it once verified, and the facts verification established."""
    import hashlib

    path.write_bytes(data)
    os.chmod(path, mode)
    digest = hashlib.sha256(data).hexdigest()
    return digest, {"nevra": "p-1-1.noarch", "payloadhash": "0" * 32, "sha256": digest, "size": len(data)}


def _takes_user_attributes(directory: Path) -> bool:
    probe = directory / ".xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
        return True
    except OSError:
        return False
    finally:
        probe.unlink()


def test_an_entry_of_its_own_keeps_its_facts_in_an_attribute_and_trusts_only_its_own(tmp_path, monkeypatch):
    from mkosi_initrd_builder.staging import cache as cache_module

    cache = PackageCache(tmp_path / "cache")
    if not _takes_user_attributes(cache.root):
        pytest.skip("the test's file system takes no user extended attributes")
    # a fetched file: its facts in its attribute, no .json; still read-only; its identity recorded
    digest, facts = _verified_file(cache.root / "tmp" / "fetched", b"fetched")
    entry = cache.add(cache.root / "tmp" / "fetched", "sha256", digest, facts, own_inode=True)
    assert not entry.path.with_suffix(".json").exists()
    assert json.loads(os.getxattr(entry.path, cache_module.FACTS_XATTR))["sha256"] == digest
    assert entry.path.stat().st_mode & 0o7777 == 0o444
    found = cache.lookup("sha256", digest, len(b"fetched"))
    assert found is not None and found.facts["sha256"] == digest and found.verified_as(entry.path.stat())
    # a directory source's file linked in: whatever attribute it carries, the .json beside it counts
    source = tmp_path / "source.rpm"
    digest2, facts2 = _verified_file(source, b"linked", 0o644)
    os.setxattr(source, cache_module.FACTS_XATTR, json.dumps({**facts2, "sha256": "f" * 64}).encode())
    (cache.root / "tmp" / "linked").hardlink_to(source)
    cache.add(cache.root / "tmp" / "linked", "sha256", digest2, facts2, own_inode=False)
    linked = cache.lookup("sha256", digest2, len(b"linked"))
    assert linked is not None and linked.facts["sha256"] == digest2
    assert source.stat().st_mode & 0o7777 == 0o644  # the source's file is left as it was
    # a file system that takes no attributes: the .json
    def refuse(*args):
        raise OSError(95, "Operation not supported")
    monkeypatch.setattr(cache_module.os, "setxattr", refuse)
    digest3, facts3 = _verified_file(cache.root / "tmp" / "plain", b"plain")
    entry3 = cache.add(cache.root / "tmp" / "plain", "sha256", digest3, facts3, own_inode=True)
    assert json.loads(entry3.path.with_suffix(".json").read_text())["sha256"] == digest3
    assert entry3.path.stat().st_mode & 0o7777 == 0o444
    assert cache.lookup("sha256", digest3, len(b"plain")) is not None

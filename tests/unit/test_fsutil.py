"""Path containment and temp-then-rename writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from mkosi_initrd_builder.fsutil import atomic_write, is_within, replace_dir


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

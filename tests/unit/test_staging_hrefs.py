"""Staging's location rules: every href is checked before a file is opened or a URL fetched."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mkosi_initrd_builder.util.errors import StagingError, UnsafeHrefError
from mkosi_initrd_builder.staging.stage import PackageSelection
from mkosi_initrd_builder.staging.resolve import PinnedPackage
from mkosi_initrd_builder.rpmmeta.nevra import NEVRA
from mkosi_initrd_builder.staging.sources import DirectorySource, HttpSource, parse_source
from mkosi_initrd_builder.staging.sources.base import parse_rpmlist, read_rpmlist
from mkosi_initrd_builder.rpmmeta.hrefs import package_relpath

HTTP = parse_source("http://127.0.0.1:8080/kojifiles/repos/f42-build/7/x86_64")


@pytest.mark.parametrize("href", [
    "kmod-30-1.noarch.rpm",
    "Packages/k/kmod-30-1.noarch.rpm",
    "./Packages//kmod-30-1.noarch.rpm",
    "toplink/packages/kmod/30/1/noarch/kmod-30-1.noarch.rpm",
    "toplink/vol/archive/packages/kmod/30/1/noarch/kmod-30-1.noarch.rpm",
])
def test_relative_href_inside_the_repository_is_accepted(href):
    rel = package_relpath(href)
    assert rel.name == "kmod-30-1.noarch.rpm"
    assert ".." not in rel.parts


@pytest.mark.parametrize("href, reason", [
    ("../outside/kmod.rpm", "'..'"),
    ("Packages/../../kmod.rpm", "'..'"),
    ("Packages/%2e%2e/%2E%2E/kmod.rpm", "'..'"),
    ("/etc/passwd", "absolute path"),
    ("%2Fetc/passwd", "absolute path"),
    ("http://evil.example/kmod.rpm", "is a URL"),
    ("//evil.example/kmod.rpm", "is a URL"),
    ("file:///etc/passwd", "is a URL"),
    ("kmod.rpm?x=1", "'?'"),
    ("", "empty"),
    ("toplink/work/tasks/1/1/evil.rpm", "toplink"),
    ("toplink/repos/other/1/x86_64/kmod.rpm", "toplink"),
])
def test_stage_refuses_href_outside_repo(href, reason):
    with pytest.raises(UnsafeHrefError) as e:
        package_relpath(href)
    assert repr(href) in str(e.value)
    assert reason in str(e.value)


def test_http_href_becomes_url_below_the_source():
    url = HTTP.url_of("toplink/packages/busybox/1.35.0/4+deb12u1/x86_64/busybox-1.35.0-4+deb12u1.x86_64.rpm")
    assert url == ("http://127.0.0.1:8080/kojifiles/repos/f42-build/7/x86_64/toplink/packages/busybox/1.35.0/"
                   "4+deb12u1/x86_64/busybox-1.35.0-4+deb12u1.x86_64.rpm")


@pytest.mark.parametrize("href", [
    "http://mirror.example/kojifiles/repos/f42-build/7/x86_64/kmod.rpm",
    "http://127.0.0.1:9999/kojifiles/repos/f42-build/7/x86_64/kmod.rpm",
    "https://127.0.0.1:8080/kojifiles/repos/f42-build/7/x86_64/kmod.rpm",
])
def test_http_source_refuses_url_to_another_host(href):
    with pytest.raises(UnsafeHrefError, match="another host") as e:
        HTTP.url_of(href)
    assert href in str(e.value)


def test_http_source_accepts_same_host_url_below_it():
    href = "http://127.0.0.1:8080/kojifiles/repos/f42-build/7/x86_64/Packages/kmod.rpm"
    assert HTTP.url_of(href) == href


@pytest.mark.parametrize("href", [
    "http://127.0.0.1:8080/kojifiles/repos/f42-build/8/x86_64/kmod.rpm",
    # a string-prefix check would take this one: the last component only starts the same
    "http://127.0.0.1:8080/kojifiles/repos/f42-build/7/x86_64-evil/kmod.rpm",
    "http://127.0.0.1:8080/kojifiles/repos/f42-build/7/x86_64/../../8/x86_64/kmod.rpm",
])
def test_http_source_refuses_same_host_url_outside_it(href):
    with pytest.raises(UnsafeHrefError):
        HTTP.url_of(href)


def test_xml_base_pointing_elsewhere_is_refused():
    # mergerepo_c --koji marks external repositories' packages with xml:base
    with pytest.raises(UnsafeHrefError, match="another host"):
        HTTP.url_of("Packages/k/kmod.rpm", "https://mirror.example/fedora/42/")


def _repo_with(tmp_path: Path) -> tuple[Path, Path]:
    repo = tmp_path / "repo"
    outside = tmp_path / "repo-evil"
    for d in (repo, outside):
        d.mkdir()
    (repo / "good.rpm").write_bytes(b"x")
    (outside / "kmod.rpm").write_bytes(b"x")
    return repo, outside


def test_symlink_inside_the_repository_is_followed(tmp_path):
    repo, _ = _repo_with(tmp_path)
    (repo / "alias.rpm").symlink_to("good.rpm")
    source = parse_source(str(repo))
    assert isinstance(source, DirectorySource)
    assert source.path_of("alias.rpm") == (repo / "good.rpm").resolve()


def test_stage_refuses_symlink_escaping_the_repository(tmp_path):
    repo, outside = _repo_with(tmp_path)
    (repo / "evil.rpm").symlink_to(outside / "kmod.rpm")
    (repo / "sub").symlink_to("../repo-evil")
    source = parse_source(str(repo))
    for href in ("evil.rpm", "sub/kmod.rpm"):
        with pytest.raises(UnsafeHrefError, match="outside the repository") as e:
            source.path_of(href)
        # repo-evil starts with the repository's path as a string; whole components tell them apart
        assert str(outside / "kmod.rpm") in str(e.value)
        assert repr(href) in str(e.value)


def test_koji_toplink_reaches_the_package_trees_only(tmp_path):
    topdir = tmp_path / "topdir"
    arch = topdir / "repos/f42-build/7/x86_64"
    arch.mkdir(parents=True)
    pkg = topdir / "packages/kmod/30/1/noarch/kmod-30-1.noarch.rpm"
    pkg.parent.mkdir(parents=True)
    pkg.write_bytes(b"x")
    (topdir / "work").mkdir()
    (topdir / "work/secret.rpm").write_bytes(b"x")
    os.symlink("../../../..", arch / "toplink")
    source = parse_source(str(arch))
    assert source.koji is not None and (source.koji.tag, source.koji.repo_id) == ("f42-build", 7)
    assert source.path_of("toplink/packages/kmod/30/1/noarch/kmod-30-1.noarch.rpm") == pkg.resolve()
    with pytest.raises(UnsafeHrefError, match="toplink"):
        source.path_of("toplink/work/secret.rpm")
    # a package tree entry that is itself a symlink out of packages/ is caught after resolving
    (topdir / "packages/evil.rpm").symlink_to("../work/secret.rpm")
    with pytest.raises(UnsafeHrefError, match="toplink"):
        source.path_of("toplink/packages/evil.rpm")


def test_toplink_not_pointing_above_the_repository_is_refused(tmp_path):
    repo, outside = _repo_with(tmp_path)
    (outside / "packages/k").mkdir(parents=True)
    (outside / "packages/k/kmod.rpm").write_bytes(b"x")
    os.symlink(outside, repo / "toplink")
    with pytest.raises(UnsafeHrefError, match="does not hold the repository"):
        parse_source(str(repo)).path_of("toplink/packages/k/kmod.rpm")


def test_parse_source_accepts_directories_and_http_urls(tmp_path):
    assert parse_source(str(tmp_path)).directory == tmp_path
    assert parse_source(tmp_path.as_uri()).directory == tmp_path
    src = parse_source("https://koji.example/kojifiles/repos/f42-build/latest/x86_64/")
    assert isinstance(src, HttpSource) and src.url.endswith("/x86_64/")
    assert src.koji is None  # "latest" is a moving symlink, not a repo id
    for bad in ("ftp://koji.example/repo", "http:///no-host", "http://koji.example/repo?x=1",
                "file://otherhost/srv/repo"):
        with pytest.raises(StagingError):
            parse_source(bad)


def test_rpmlist_lines_map_nevra_to_payloadhash():
    text = ('{"name": "kmod", "version": "30", "release": "1", "epoch": null, "arch": "noarch", '
            '"payloadhash": "93710B6C4B6050DBC3E78DD7ADE3AB40"}\n\n')
    assert parse_rpmlist(text, "rpmlist.jsonl") == {NEVRA("kmod", 0, "30", "1", "noarch"): "93710b6c4b6050dbc3e78dd7ade3ab40"}
    with pytest.raises(StagingError, match="rpmlist.jsonl: line 3 is not a koji rpminfo record"):
        parse_rpmlist(text + "{oops\n", "rpmlist.jsonl")


def test_selection_needs_exactly_one_mode():
    with pytest.raises(StagingError, match="^packages, spec, installed-root, pinned: give exactly one$"):
        PackageSelection().mode  # noqa: B018
    with pytest.raises(StagingError, match="got packages, spec"):
        PackageSelection(packages=("kmod",), spec=Path("x.spec")).mode  # noqa: B018
    assert PackageSelection(packages=("kmod",)).mode.value == "packages"


def test_pinned_package_from_kojid_listing():
    p = PinnedPackage.from_koji({"name": "kernel-core", "epoch": None, "version": "6.1", "release": "2",
                                 "arch": "x86_64", "payloadhash": "ABC"})
    assert (p.nevra, p.payloadhash) == (NEVRA("kernel-core", 0, "6.1", "2", "x86_64"), "abc")
    assert str(PinnedPackage.from_koji({"name": "a", "epoch": 2, "version": "1", "release": "1",
                                        "arch": "noarch"}).nevra) == "a-2:1-1.noarch"


def test_rpmlist_that_is_not_utf8_is_named():
    with pytest.raises(StagingError, match=r"^http://x/rpmlist.jsonl: not UTF-8 text \(invalid start byte at byte 1\)$"):
        read_rpmlist(b"{\xff}", "http://x/rpmlist.jsonl")
    assert read_rpmlist(None, "absent") is None


def test_a_registered_source_kind_is_offered_the_text_before_the_directory_fallback(monkeypatch):
    """Adding a kind of source is a class and its line in SOURCE_TYPES: parse_source and the help
    text follow the registry."""
    import dataclasses

    from mkosi_initrd_builder.staging import sources

    @dataclasses.dataclass(frozen=True)
    class BucketSource(sources.Source):
        kind = "bucket"
        schemes = ("bucket://",)
        location: str

        @classmethod
        def parse(cls, text):
            return cls(text) if text.startswith("bucket://") else None

        def __str__(self):
            return self.location

        koji_path = ""
        load_metadata = locate = fetch = None

    monkeypatch.setattr(sources, "SOURCE_TYPES", (HttpSource, BucketSource, DirectorySource))
    assert isinstance(parse_source("bucket://b/repo"), BucketSource)
    assert isinstance(parse_source("http://h/repo"), HttpSource)
    assert sources.describe_schemes() == "http://, https://, bucket://, file:// or a directory"


def test_a_directory_source_and_the_destination_must_not_contain_each_other(tmp_path):
    from mkosi_initrd_builder.util.errors import SettingError

    source = parse_source(str(tmp_path / "repo"))
    (tmp_path / "repo").mkdir()
    for dest in (tmp_path / "repo" / "staged", tmp_path):
        with pytest.raises(SettingError, match="must not contain each other") as e:
            source.check_destination(dest)
        assert e.value.setting == "dest"
    source.check_destination(tmp_path / "staged")  # beside it is fine
    with pytest.raises(StagingError, match="not a directory"):
        parse_source(str(tmp_path / "missing")).check_destination(tmp_path / "staged")

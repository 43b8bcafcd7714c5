"""Staging with the real tools: dnf's depsolver, rpm, createrepo_c, HTTP on 127.0.0.1 from a koji-like
tree, and the builder building an image from what was staged."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from mkosi_initrd_builder.util.errors import FetchError, ResolveError, StagingError, UnsafeHrefError, VerificationError
from mkosi_initrd_builder.staging.download import RetryPolicy
from mkosi_initrd_builder.rpmmeta.repo import open_repository
from mkosi_initrd_builder.rpmmeta.nevra import NEVRA
from mkosi_initrd_builder.staging.stage import (
    STAGE_MANIFEST_NAME, PackageSelection, StageRequest, Via, stage_repository,
)
from mkosi_initrd_builder.staging.resolve import PinnedPackage
from tests.conftest import FIXTURE_VARIANTS, TOP, require_root, require_tools
from tests.support.cli import run_cli
from tests.support.kojitree import Fault, build_koji_tree

pytestmark = pytest.mark.integration

FAST_RETRY = RetryPolicy(attempts=3, backoff=0.01, timeout=20)
# mkosi installs basesystem into every Fedora image, whatever the variant lists.
MINIMAL_PACKAGES = ("initrd-init", "kmod", "kernel-core", "systemd-boot-unsigned", "basesystem")


def stage(source, dest, *, packages=(), cache=None, retry=FAST_RETRY, **kw):
    return stage_repository(StageRequest(source=str(source), dest=dest, cache_dir=cache, retry=retry,
                                         selection=PackageSelection(packages=tuple(packages), **kw)))


def names(result) -> set[str]:
    return {p.nevra.name for p in result.packages}


def koji_url(server, tree) -> str:
    return f"{server.url}/{tree.repo_relpath}"


def package_urlpath(tree, name: str) -> str:
    """The URL path a package is fetched by: through the repo's toplink, as its href says."""
    return f"/{tree.repo_relpath}/toplink/{tree.package_path(name).relative_to(tree.topdir)}"


def read_manifest(dest: Path) -> dict:
    return json.loads((dest / STAGE_MANIFEST_NAME).read_text())


def cache_entry(cache: Path, package) -> Path:
    """The cache's file for a staged package: keyed by the repository's checksum."""
    algo, digest = package.checksum.split(":", 1)
    return cache / ("sha1" if algo == "sha" else algo) / f"{digest}.rpm"


def entry_facts(entry: Path) -> dict:
    """What the cache recorded of an entry: its .json, else its extended attribute (staging/cache.py)."""
    from mkosi_initrd_builder.staging.cache import FACTS_XATTR

    if entry.with_suffix(".json").exists():
        return json.loads(entry.with_suffix(".json").read_text())
    return json.loads(os.getxattr(entry, FACTS_XATTR))


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def flip_byte(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".staging-" in p.name or ".old-" in p.name)


def test_stage_from_directory_hard_links_the_dnf_closure(fixture_repo, tmp_path):
    dest = tmp_path / "staged"
    result = stage(fixture_repo.path, dest, packages=["initrd-init"])
    assert names(result) == {"initrd-init", "busybox", "filesystem"}  # dnf pulled in the Requires
    assert {p.via for p in result.packages} == {Via.link}
    for p in result.packages:
        staged, source = dest / p.file, fixture_repo.rpms[p.nevra.name]
        assert os.path.samefile(staged, source)
        assert p.sha256 == hashlib.sha256(staged.read_bytes()).hexdigest()
    # the destination is a repository of exactly those files, and nothing else
    expected = [STAGE_MANIFEST_NAME, "repodata", *(p.file for p in result.packages)]
    assert sorted(p.name for p in dest.iterdir()) == sorted(expected)
    assert {p.nevra.name for p in open_repository(dest).packages} == names(result)
    manifest = read_manifest(dest)
    assert manifest["format"] == "mkosi-initrd-stage/1"
    assert manifest["selection"] == {"mode": "packages", "requested": ["initrd-init"]}
    assert manifest["source"]["kind"] == "directory" and manifest["source"]["koji"] is None
    assert manifest["totals"] == {"packages": 3, "bytes": result.total_bytes, "bytes-fetched": result.total_bytes,
                                  "bytes-from-cache": 0}
    # where the time went, each phase once and in order, within the whole
    assert [name for name, _ in result.phases] == ["metadata", "select", "fetch", "repodata"]
    assert all(seconds >= 0 for _, seconds in result.phases)
    assert sum(seconds for _, seconds in result.phases) <= result.seconds
    entry = next(p for p in manifest["packages"] if p["name"] == "busybox")
    assert entry["origin"] == str(fixture_repo.rpms["busybox"])
    assert entry["nevra"] == subprocess.run(
        ["rpm", "-qp", "--nosignature", "--qf", "%{NEVRA}", str(dest / entry["file"])],
        stdout=subprocess.PIPE, text=True, check=True).stdout


def test_stage_over_http_from_koji_repo_goes_through_toplink(koji_tree, tree_server, tmp_path):
    dest = tmp_path / "staged"
    result = stage(koji_url(tree_server, koji_tree), dest, packages=["kernel-core", "initrd-init"])
    assert names(result) == {"kernel-core", "initrd-init", "busybox", "filesystem"}
    assert {p.via for p in result.packages} == {Via.http}
    for p in result.packages:
        assert f"/{koji_tree.repo_relpath}/toplink/packages/{p.nevra.name}/" in p.origin
        assert tree_server.requests_for(package_urlpath(koji_tree, p.nevra.name)) == 1
        # the payload hash in the header is the one koji's rpmlist.jsonl records
        assert p.payloadhash == koji_tree.rpminfo[p.nevra.nvra()]["payloadhash"]
    source = read_manifest(dest)["source"]
    assert source["koji"] == {"tag": koji_tree.tag, "repo_id": koji_tree.repo_id, "arch": koji_tree.arch}
    assert source["rpmlist"] is True and source["kind"] == "http"
    # staged files are read-only for everyone: a build user cannot alter them
    assert all((dest / p.file).stat().st_mode & 0o222 == 0 for p in result.packages)


# initrd-init is the small package of these tests: it and its closure (busybox, filesystem) are
# fixture specs. (kmod was, until the fixture's busybox wrapper gave way to the real trixie kmod,
# whose closure is glibc, openssl-libs and more.)
def test_stage_from_koji_directory_links_through_toplink(koji_tree, tmp_path):
    result = stage(koji_tree.repo_dir, tmp_path / "staged", packages=["initrd-init"])
    assert names(result) == {"initrd-init", "busybox", "filesystem"}
    init = next(p for p in result.packages if p.nevra.name == "initrd-init")
    assert "/toplink/packages/initrd-init/" in init.origin and init.via is Via.link
    assert os.path.samefile(tmp_path / "staged" / init.file, koji_tree.package_path("initrd-init"))


def test_stage_spec_buildrequires_through_the_cli(fixture_repo, tmp_path):
    spec = tmp_path / "probe.spec"
    spec.write_text("Name: probe\nVersion: 1\nRelease: 1\nSummary: s\nLicense: MIT\n"
                    "BuildRequires: %{wanted} >= 1\nBuildRequires: /bin/sh\n%description\nd\n")
    dest = tmp_path / "staged"
    r = run_cli(["stage", "--source", fixture_repo.path, "--dest", dest, "--spec", spec, "--define", "wanted initrd-init"])
    assert r.returncode == 0, r.stderr
    assert "staged 4 packages" in r.stdout
    manifest = read_manifest(dest)
    # /bin/sh: busybox-applets provides it (busybox itself is the binary alone)
    assert {p["name"] for p in manifest["packages"]} == {"initrd-init", "busybox", "busybox-applets", "filesystem"}
    assert manifest["selection"] == {"mode": "spec", "requested": [str(spec)]}


def test_stage_reports_names_nothing_provides(fixture_repo, tmp_path):
    with pytest.raises(ResolveError, match="nothing in the source provides no-such-package, initrd-init > 99"):
        stage(fixture_repo.path, tmp_path / "staged", packages=["initrd-init", "no-such-package", "initrd-init > 99"])
    assert not (tmp_path / "staged").exists()


@pytest.fixture(scope="module")
def installed_root(fixture_repo, tmp_path_factory):
    """initrd-init installed with the real dnf --installroot; Debian's rpm puts the rpmdb at <root>/root/.rpmdb."""
    require_tools("dnf")
    root = tmp_path_factory.mktemp("installed") / "root"
    conf = root.parent / "dnf.conf"
    conf.write_text(f"[main]\nreposdir=/dev/null\ngpgcheck=0\ninstall_weak_deps=0\n"
                    f"[fixture]\nname=fixture\nbaseurl={fixture_repo.path.as_uri()}\n")
    subprocess.run(["dnf", "--installroot", str(root), "--config", str(conf), "--releasever", "test",
                    "--disableplugin=*", "-y", "-q", "install", "initrd-init"], check=True,
                   stdout=subprocess.DEVNULL, env={**os.environ, "HOME": "/root"})
    return root


@pytest.mark.parametrize("dbdir", ["root/.rpmdb", "var/lib/rpm", "usr/lib/sysimage/rpm"])
def test_installed_root_stages_exactly_the_rpmdb(installed_root, koji_tree, tmp_path, dbdir, monkeypatch):
    monkeypatch.setenv("HOME", "/root")  # the host's %_dbpath is ~/.rpmdb on Debian
    root = tmp_path / "root"
    shutil.copytree(installed_root / "root/.rpmdb", root / dbdir)
    result = stage(koji_tree.repo_dir, tmp_path / "staged", installed_root=root)
    assert names(result) == {"initrd-init", "busybox", "filesystem"}
    manifest = read_manifest(tmp_path / "staged")
    assert manifest["selection"] == {"mode": "installed-root", "requested": [str(root)]}


def test_installed_package_missing_from_source_is_named(koji_tree, tmp_path):
    ghost = PinnedPackage(NEVRA("ghost", 0, "1", "1", "noarch"))
    with pytest.raises(ResolveError, match="not in the source .*: ghost-1-1.noarch"):
        stage_repository(StageRequest(source=str(koji_tree.repo_dir), dest=tmp_path / "d",
                                      selection=PackageSelection(pinned=(ghost,))))


def test_installed_root_without_rpmdb_is_refused(koji_tree, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResolveError, match="no rpm database below .*usr/lib/sysimage/rpm"):
        stage(koji_tree.repo_dir, tmp_path / "d", installed_root=tmp_path / "empty")


@pytest.fixture
def small_tree(fixture_repo, tmp_path):
    """A koji tree of its own, whose files a test may damage."""
    rpms = [fixture_repo.rpms[n] for n in ("initrd-init", "busybox", "filesystem")]
    return build_koji_tree(tmp_path / "topdir", rpms)


def test_verification_catches_a_corrupted_rpm_and_names_it(small_tree, tmp_path):
    victim = small_tree.package_path("initrd-init")
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(VerificationError) as e:
        stage(small_tree.repo_dir, tmp_path / "staged", packages=["initrd-init"])
    assert "initrd-init-1-1.fixture.noarch" in str(e.value) and "toplink/packages/initrd-init/" in str(e.value)
    assert "sha256" in str(e.value)
    assert not (tmp_path / "staged").exists() and leftovers(tmp_path) == []


def test_verification_reads_the_header_nevra(small_tree, tmp_path):
    # The repository's checksum matches the file, but the entry claims another version.
    claimed = PinnedPackage(NEVRA("initrd-init", 0, "2", "1.fixture", "noarch"))
    primary = next((small_tree.repo_dir / "repodata").glob("*primary.xml.gz"))
    import gzip
    xml = gzip.decompress(primary.read_bytes()).replace(b'ver="1" rel="1.fixture"', b'ver="2" rel="1.fixture"')
    primary.write_bytes(gzip.compress(xml))
    with pytest.raises(VerificationError, match="initrd-init-2-1.fixture.noarch .*its header says it is initrd-init-1-1.fixture"):
        stage_repository(StageRequest(source=str(small_tree.repo_dir), dest=tmp_path / "d",
                                      selection=PackageSelection(pinned=(claimed,))))


def test_payloadhash_from_rpmlist_is_checked(small_tree, tmp_path):
    rpmlist = small_tree.repo_dir / "rpmlist.jsonl"
    lines = [json.loads(line) for line in rpmlist.read_text().splitlines()]
    for info in lines:
        if info["name"] == "busybox":
            info["payloadhash"] = "0" * 32
    rpmlist.write_text("".join(json.dumps(i) + "\n" for i in lines))
    with pytest.raises(VerificationError, match=r"busybox-.* does not match 0{32} from koji's rpmlist.jsonl"):
        stage(small_tree.repo_dir, tmp_path / "d", packages=["busybox"])


def test_stage_refuses_href_with_dotdot(fixture_repo, tmp_path):
    outside = tmp_path / "outside"
    repo = tmp_path / "repo"
    outside.mkdir()
    repo.mkdir()
    shutil.copy(fixture_repo.rpms["filesystem"], outside)
    (repo / "pkglist").write_text(f"../outside/{fixture_repo.rpms['filesystem'].name}\n")
    subprocess.run(["createrepo_c", "--quiet", "-i", "pkglist", str(repo)], check=True, cwd=repo)
    with pytest.raises(UnsafeHrefError) as e:
        stage(repo, tmp_path / "staged", packages=["filesystem"])
    assert f"'../outside/{fixture_repo.rpms['filesystem'].name}'" in str(e.value) and "'..'" in str(e.value)
    assert not (tmp_path / "staged").exists()


def test_tampered_download_fails_verification(koji_tree, tree_server, tmp_path):
    path = package_urlpath(koji_tree, "busybox")
    tree_server.faults[path] = Fault("tamper")
    with pytest.raises(VerificationError) as e:
        stage(koji_url(tree_server, koji_tree), tmp_path / "d", packages=["busybox"])
    assert "busybox-1.35.0" in str(e.value) and tree_server.url + "/" in str(e.value)
    assert tree_server.requests_for(path) == 1  # wrong bytes are not a transient failure


@pytest.mark.parametrize("fault, tries, message", [
    (Fault("truncate"), 3, "truncated: received"),
    (Fault("status", status=500), 3, "HTTP 500"),
    (Fault("status", status=404), 1, "HTTP 404"),
])
def test_http_failures_fail_with_the_url_after_bounded_retries(koji_tree, tree_server, tmp_path, fault, tries, message):
    path = package_urlpath(koji_tree, "initrd-init")
    tree_server.faults[path] = fault
    started = time.monotonic()
    with pytest.raises(FetchError) as e:
        stage(koji_url(tree_server, koji_tree), tmp_path / "d", packages=["initrd-init"], cache=tmp_path / "cache")
    assert str(e.value).startswith(f"cannot fetch initrd-init-1-1.fixture.noarch from {tree_server.url}{path}: {message}")
    assert (f"after {tries} attempts" in str(e.value)) == (tries > 1)
    assert tree_server.requests_for(path) == tries
    assert time.monotonic() - started < 10
    assert not (tmp_path / "d").exists() and leftovers(tmp_path) == []
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []


def test_transient_http_failure_is_retried(koji_tree, tree_server, tmp_path):
    path = package_urlpath(koji_tree, "initrd-init")
    tree_server.faults[path] = Fault("status", status=503, times=1)
    result = stage(koji_url(tree_server, koji_tree), tmp_path / "d", packages=["initrd-init"])
    assert "initrd-init" in names(result)
    assert tree_server.requests_for(path) == 2


def test_second_staging_is_served_from_cache(koji_tree, tree_server, tmp_path):
    cache = tmp_path / "cache"
    source = koji_url(tree_server, koji_tree)
    cold = stage(source, tmp_path / "one", packages=MINIMAL_PACKAGES, cache=cache)
    assert cold.bytes_fetched == cold.total_bytes > 9_000_000 and cold.bytes_from_cache == 0
    warm = stage(source, tmp_path / "two", packages=MINIMAL_PACKAGES, cache=cache)
    assert warm.bytes_fetched == 0 and warm.bytes_from_cache == cold.total_bytes
    assert {p.via for p in warm.packages} == {Via.cache}
    assert read_manifest(tmp_path / "two")["totals"]["bytes-from-cache"] == cold.total_bytes
    for p in warm.packages:  # each package was downloaded once, by the cold run
        assert tree_server.requests_for(package_urlpath(koji_tree, p.nevra.name)) == 1
        # cache and destinations share a file system: both stagings hard-link the one read-only entry
        staged = tmp_path / "two" / p.file
        assert os.path.samefile(cache_entry(cache, p), staged)
        assert os.path.samefile(tmp_path / "one" / p.file, staged)
        assert staged.stat().st_mode & 0o7777 == 0o444
        assert sha256_of(staged) == p.sha256
    # restaging into the same destination replaces it as a whole
    again = stage(source, tmp_path / "two", packages=["initrd-init"], cache=cache)
    assert sorted(p.name for p in (tmp_path / "two").glob("*.rpm")) == sorted(p.file for p in again.packages)


def test_damaged_cache_entry_is_fetched_again_and_never_staged(koji_tree, tree_server, tmp_path, caplog):
    cache = tmp_path / "cache"
    source = koji_url(tree_server, koji_tree)
    first = stage(source, tmp_path / "one", packages=["initrd-init"], cache=cache)
    init = next(p for p in first.packages if p.nevra.name == "initrd-init")
    entry = cache_entry(cache, init)
    recorded = entry_facts(entry)["stat"]
    assert recorded[1:] == [entry.stat().st_dev, entry.stat().st_ino, entry.stat().st_size, entry.stat().st_mtime_ns]
    flip_byte(entry)
    # a write stamps the current time: the identity the cache trusted is gone
    assert entry.stat().st_mtime_ns != recorded[4]
    # the repository staged before the damage shares the entry's inode: what was checked at staging
    # time is damaged now too (dnf refuses it: test_damage_after_staging_is_refused_by_dnf)
    assert sha256_of(tmp_path / "one" / init.file) != init.sha256
    with caplog.at_level("WARNING", logger="mkosi_initrd_builder.staging.stage"):
        second = stage(source, tmp_path / "two", packages=["initrd-init"], cache=cache)
    again = next(p for p in second.packages if p.nevra.name == "initrd-init")
    assert again.via is Via.http and again.sha256 == init.sha256
    assert tree_server.requests_for(package_urlpath(koji_tree, "initrd-init")) == 2
    assert f"cache entry {entry} of {init.nevra} is damaged" in caplog.text
    staged = tmp_path / "two" / again.file
    recorded = {p["name"]: p for p in read_manifest(tmp_path / "two")["packages"]}
    assert sha256_of(staged) == init.sha256 == recorded["initrd-init"]["sha256"]
    subprocess.run(["rpm", "-K", "--nosignature", str(staged)], check=True, capture_output=True)
    described = {p.nevra.name: p for p in open_repository(tmp_path / "two", with_files=False).packages}
    assert described["initrd-init"].checksum == init.sha256
    assert sha256_of(entry) == init.sha256  # the cache holds the good file again, in a new inode
    assert os.path.samefile(entry, staged) and not os.path.samefile(entry, tmp_path / "one" / init.file)
    assert list((cache / "tmp").iterdir()) == [] and leftovers(tmp_path) == []


def test_entries_in_the_layout_of_earlier_versions_are_used_where_they_are(koji_tree, tree_server, tmp_path):
    """Earlier versions kept each entry in a directory named by its checksum's first two hex digits:
    such an entry is found there and staged, not fetched again."""
    cache = tmp_path / "cache"
    source = koji_url(tree_server, koji_tree)
    cold = stage(source, tmp_path / "one", packages=["initrd-init"], cache=cache)
    legacy = []
    for p in cold.packages:
        flat = cache_entry(cache, p)
        moved = flat.parent / flat.name[:2] / flat.name
        moved.parent.mkdir(exist_ok=True)
        os.rename(flat, moved)  # the inode, its attribute and its recorded identity go along
        legacy.append(moved)
    warm = stage(source, tmp_path / "two", packages=["initrd-init"], cache=cache)
    assert {p.via for p in warm.packages} == {Via.cache}
    assert all(tree_server.requests_for(package_urlpath(koji_tree, p.nevra.name)) == 1 for p in cold.packages)
    assert all(path.exists() for path in legacy) and not any(cache_entry(cache, p).exists() for p in cold.packages)
    for p in warm.packages:
        assert sha256_of(tmp_path / "two" / p.file) == p.sha256


def test_a_cache_entry_is_hashed_again_only_when_its_identity_changed(koji_tree, tree_server, tmp_path, monkeypatch):
    from mkosi_initrd_builder.staging import stage as stage_module

    cache = tmp_path / "cache"
    source = koji_url(tree_server, koji_tree)
    stage(source, tmp_path / "one", packages=["initrd-init"], cache=cache)
    hashed: list[str] = []
    real_hash_file = stage_module.hash_file
    monkeypatch.setattr(stage_module, "hash_file",
                        lambda path, algorithms: hashed.append(Path(path).name) or real_hash_file(path, algorithms))
    warm = stage(source, tmp_path / "two", packages=["initrd-init"], cache=cache)
    assert hashed == [] and {p.via for p in warm.packages} == {Via.cache}
    # what the staged repository says of each file is still the file's real sha256
    described = {p.nevra: p for p in open_repository(tmp_path / "two", with_files=False).packages}
    for p in warm.packages:
        assert sha256_of(tmp_path / "two" / p.file) == p.sha256 == described[p.nevra].checksum
    # an entry recorded without its identity (as earlier versions wrote them, in a .json, which is
    # read first) is hashed in full once and recorded then
    init = next(p for p in warm.packages if p.nevra.name == "initrd-init")
    facts_file = cache_entry(cache, init).with_suffix(".json")
    facts = entry_facts(cache_entry(cache, init))
    del facts["stat"]
    facts_file.write_text(json.dumps(facts))
    stage(source, tmp_path / "three", packages=["initrd-init"], cache=cache)
    assert hashed == [init.file] and "stat" in json.loads(facts_file.read_text())
    stage(source, tmp_path / "four", packages=["initrd-init"], cache=cache)
    assert hashed == [init.file]
    assert all(tree_server.requests_for(package_urlpath(koji_tree, p.nevra.name)) == 1 for p in warm.packages)


def test_a_kept_depsolve_answers_for_the_same_metadata_only(fixture_repo, tmp_path, monkeypatch):
    from mkosi_initrd_builder.staging import resolve

    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("initrd-init", "busybox", "filesystem"):
        shutil.copy(fixture_repo.rpms[name], repo)
    subprocess.run(["createrepo_c", "--quiet", str(repo)], check=True)
    cache = tmp_path / "cache"
    solved: list[tuple[str, ...]] = []
    real_depsolve = resolve.depsolve
    monkeypatch.setattr(resolve, "depsolve", lambda d, specs, work: solved.append(tuple(specs)) or
                        real_depsolve(d, specs, work))
    first = stage(repo, tmp_path / "one", packages=["initrd-init"], cache=cache)
    assert names(first) == {"initrd-init", "busybox", "filesystem"}
    second = stage(repo, tmp_path / "two", packages=["initrd-init"], cache=cache)
    assert solved == [("initrd-init",)] and [p.nevra for p in second.packages] == [p.nevra for p in first.packages]
    stage(repo, tmp_path / "three", packages=["busybox"], cache=cache)  # another request, another answer
    assert solved == [("initrd-init",), ("busybox",)]
    # the source changes (a package added, its metadata written anew): dnf resolves again
    shutil.copy(fixture_repo.rpms["basesystem"], repo)
    subprocess.run(["createrepo_c", "--quiet", str(repo)], check=True)
    stage(repo, tmp_path / "four", packages=["initrd-init"], cache=cache)
    assert solved == [("initrd-init",), ("busybox",), ("initrd-init",)]
    stage(repo, tmp_path / "five", packages=["initrd-init"], cache=cache)
    assert len(solved) == 3
    # a metadata file rewritten behind repomd.xml's back is a change too for a directory source
    primary = next((repo / "repodata").glob("*primary.xml.gz"))
    primary.write_bytes(primary.read_bytes())
    stage(repo, tmp_path / "six", packages=["initrd-init"], cache=cache)
    assert len(solved) == 4
    # without the package the kept answer names, the answer is not used: dnf says what is missing
    (repo / fixture_repo.rpms["filesystem"].name).unlink()
    subprocess.run(["createrepo_c", "--quiet", str(repo)], check=True)
    with pytest.raises(ResolveError, match="filesystem"):
        stage(repo, tmp_path / "seven", packages=["initrd-init"], cache=cache)


def dnf_fetch_from(repo: Path, name: str, work: Path) -> None:
    """What dnf does before installing a package of a local repository: check the file against the
    repodata's checksum (dnf.Base.download_packages; the file stays where it is)."""
    import dnf

    conf = dnf.conf.Conf()
    conf.installroot, conf.cachedir = str(work / "root"), str(work / "cache")
    conf.logdir, conf.persistdir = str(work / "log"), str(work / "persist")
    conf.reposdir, conf.varsdir, conf.pluginconfpath, conf.gpgcheck = [], [], [], False
    conf.substitutions["releasever"] = "staged"
    for d in (conf.installroot, conf.logdir):
        os.makedirs(d, exist_ok=True)
    base = dnf.Base(conf)
    try:
        base.repos.add_new_repo("staged", conf, baseurl=[repo.as_uri()])
        base.fill_sack(load_system_repo=False)
        base.download_packages(list(base.sack.query().available().filter(name=name)))
    finally:
        base.close()


def test_damage_after_staging_is_refused_by_dnf(koji_tree, tree_server, tmp_path):
    """The staged file is the cache entry's inode: a write to the cache after staging reaches the
    repository, and dnf's own checksum check of a local repository's packages refuses it."""
    import dnf.exceptions

    cache = tmp_path / "cache"
    staged = stage(koji_url(tree_server, koji_tree), tmp_path / "one", packages=["initrd-init"], cache=cache)
    init = next(p for p in staged.packages if p.nevra.name == "initrd-init")
    dnf_fetch_from(tmp_path / "one", "initrd-init", tmp_path / "dnf-good")  # the intact repository passes
    flip_byte(cache_entry(cache, init))
    with pytest.raises(dnf.exceptions.Error, match="incorrect checksum"):
        dnf_fetch_from(tmp_path / "one", "initrd-init", tmp_path / "dnf-bad")


def test_cache_on_another_file_system_is_copied_and_checked(koji_tree, tree_server, tmp_path):
    """No hard link across file systems (/dev/shm is a tmpfs, the destination is not): each staged
    file is a private copy of its entry, checked as it is copied."""
    if os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("/dev/shm is on the same file system as the test's directory")
    cache = Path(tempfile.mkdtemp(prefix="mkosi-initrd-test-cache-", dir="/dev/shm"))
    try:
        source = koji_url(tree_server, koji_tree)
        cold = stage(source, tmp_path / "one", packages=["initrd-init"], cache=cache)
        warm = stage(source, tmp_path / "two", packages=["initrd-init"], cache=cache)
        assert {p.via for p in warm.packages} == {Via.cache}
        for p in [*cold.packages, *warm.packages]:
            dest = tmp_path / ("one" if p in cold.packages else "two") / p.file
            assert not os.path.samefile(cache_entry(cache, p), dest)
            assert dest.stat().st_mode & 0o7777 == 0o444 and sha256_of(dest) == p.sha256
        flip_byte(cache_entry(cache, next(p for p in warm.packages if p.nevra.name == "initrd-init")))
        assert {sha256_of(tmp_path / "two" / p.file) for p in warm.packages} == {p.sha256 for p in warm.packages}
    finally:
        shutil.rmtree(cache)


def test_damaged_cache_entry_of_a_damaged_source_fails_verification(small_tree, tmp_path):
    # A directory source's cache entries are hard links to its files: damage to one is damage to the
    # other, fetching again gets the same bytes, and the staging must fail, naming the source's file.
    cache = tmp_path / "cache"
    first = stage(small_tree.repo_dir, tmp_path / "one", packages=["initrd-init"], cache=cache)
    init = next(p for p in first.packages if p.nevra.name == "initrd-init")
    flip_byte(cache_entry(cache, init))
    with pytest.raises(VerificationError) as e:
        stage(small_tree.repo_dir, tmp_path / "two", packages=["initrd-init"], cache=cache)
    assert str(init.nevra) in str(e.value) and "toplink/packages/initrd-init/" in str(e.value) and "sha256" in str(e.value)
    assert not (tmp_path / "two").exists() and leftovers(tmp_path) == []
    # the first staging's file was the source's own (hard links all the way), damaged with it
    assert os.path.samefile(tmp_path / "one" / init.file, small_tree.package_path("initrd-init"))


def test_cache_that_is_not_a_cache_is_refused_before_anything_is_written(fixture_repo, tmp_path):
    home = tmp_path / "home"
    (home / "tmp").mkdir(parents=True)
    stale = home / "tmp" / ".photo.abcdefgh.part"
    stale.write_text("mine")
    then = time.time() - 3 * 24 * 3600
    os.utime(stale, (then, then))
    (home / "notes.txt").write_text("mine")
    before = sorted((str(p), p.stat().st_mtime) for p in home.rglob("*"))
    r = run_cli(["stage", "--source", fixture_repo.path, "--dest", tmp_path / "out" / "d", "--cache", home,
                 "--packages", "initrd-init"])
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.splitlines()[0] == (f"mkosi-initrd-build: error: cache {home}: not empty and holds no "
                                        "mkosi-initrd-cache.json, so it is no cache made by mkosi-initrd-build; "
                                        "refusing to write or remove anything in it (name a new or empty directory)")
    assert sorted((str(p), p.stat().st_mtime) for p in home.rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]  # not even the destination's parent


def test_cache_on_the_root_directory_deletes_and_creates_nothing(fixture_repo):
    """The reported case: `--cache /` cleaned /tmp and created /locks. /tmp is a tmpfs of the test's own
    (unshare -m), so even a regression cannot remove anybody's files."""
    require_root()
    require_tools("unshare", "mount")
    if os.path.lexists("/locks"):
        pytest.skip("/locks exists on this machine already")
    # A checkout below /tmp (a fresh clone in `mktemp -d`) would vanish under the tmpfs: the real
    # /tmp is kept at /mnt inside the namespace and the checkout bound back to its own path.
    top = TOP.resolve()
    under_tmp = top.parts[1:2] == ("tmp",)
    if under_tmp and Path("/mnt").resolve() != Path("/mnt"):
        pytest.skip("/mnt is a symlink here; cannot keep the checkout below /tmp reachable")
    keep = "mount --bind /tmp /mnt && " if under_tmp else ""
    restore = (f"mkdir -p {top} && mount --bind /mnt/{top.relative_to('/tmp')} {top}" if under_tmp else "true")
    script = f"""
set -e
{keep}mount -t tmpfs tmpfs /tmp
{restore}
touch -d '3 days ago' /tmp/.someones.abcdefgh.part /tmp/someones-file
set +e
{sys.executable} -m mkosi_initrd_builder stage --source {fixture_repo.path} --dest /tmp/staged --cache {{cache}} \
    --packages initrd-init 2>/tmp/stderr
echo "rc=$?"
ls -A /tmp
head -n1 /tmp/stderr
"""
    for cache in ("/", "//"):
        out = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script.format(cache=cache)],
                             cwd=TOP, capture_output=True, text=True, timeout=120)
        lines = out.stdout.splitlines()
        assert lines[0] == "rc=1", out.stdout + out.stderr
        checkout = [top.relative_to("/tmp").parts[0]] if under_tmp else []
        assert sorted(lines[1:-1]) == sorted([".someones.abcdefgh.part", "someones-file", "stderr", *checkout])
        assert lines[-1] == ("mkosi-initrd-build: error: cache /: not empty and holds no mkosi-initrd-cache.json, "
                             "so it is no cache made by mkosi-initrd-build; refusing to write or remove anything "
                             "in it (name a new or empty directory)")
        assert not os.path.lexists("/locks") and not os.path.lexists("/" + "mkosi-initrd-cache.json")


def test_concurrent_stagings_share_one_cache(koji_tree, tree_server, tmp_path):
    cache = tmp_path / "cache"
    # slow the big download down so the two runs overlap
    tree_server.faults[package_urlpath(koji_tree, "kernel-core")] = Fault("delay", seconds=1.0)
    source = koji_url(tree_server, koji_tree)
    procs = [subprocess.Popen([sys.executable, "-m", "mkosi_initrd_builder", "stage", "--source", source,
                               "--dest", str(tmp_path / f"d{i}"), "--cache", str(cache), "--packages",
                               *MINIMAL_PACKAGES], cwd=TOP, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
    totals = [read_manifest(tmp_path / f"d{i}")["totals"] for i in range(2)]
    assert totals[0]["bytes"] == totals[1]["bytes"]
    # every file was fetched exactly once between the two; the other run got it from the cache
    assert totals[0]["bytes-fetched"] + totals[1]["bytes-fetched"] == totals[0]["bytes"]
    for name in ("kernel-core", "initrd-init", "busybox"):
        assert tree_server.requests_for(package_urlpath(koji_tree, name)) == 1
    entries = list(cache.glob("sha256/*.rpm"))
    assert len(entries) == totals[0]["packages"]
    for entry in entries:
        assert hashlib.sha256(entry.read_bytes()).hexdigest() == entry.stem
        assert entry_facts(entry)["sha256"] == entry.stem
    assert list((cache / "tmp").iterdir()) == []


def test_interrupted_staging_leaves_the_previous_repository(koji_tree, tree_server, tmp_path):
    dest = tmp_path / "staged"
    source = koji_url(tree_server, koji_tree)
    stage(source, dest, packages=["initrd-init"])
    before = sorted(p.name for p in dest.iterdir())
    kernel = package_urlpath(koji_tree, "kernel-core")
    tree_server.faults[kernel] = Fault("delay", seconds=3.0)
    proc = subprocess.Popen([sys.executable, "-m", "mkosi_initrd_builder", "stage", "--source", source, "--dest",
                             str(dest), "--cache", str(tmp_path / "cache"), "--packages", *MINIMAL_PACKAGES],
                            cwd=TOP, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while tree_server.requests_for(kernel) == 0 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert tree_server.requests_for(kernel) == 1, "the staging never reached the kernel download"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert sorted(p.name for p in dest.iterdir()) == before  # the old repository, whole
    assert leftovers(tmp_path) == []
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []


def test_size_limit_is_checked_before_fetching(koji_tree, tree_server, tmp_path, fixture_repo):
    largest = re.escape(f"(largest: kernel-core-{fixture_repo.kernel_evr}")
    with pytest.raises(StagingError, match=r"more than the limit of 1,048,576 " + largest):
        stage_repository(StageRequest(source=koji_url(tree_server, koji_tree), dest=tmp_path / "d",
                                      selection=PackageSelection(packages=("kernel-core",)), max_bytes=1 << 20))
    assert tree_server.requests_for(package_urlpath(koji_tree, "kernel-core")) == 0


def test_destination_that_is_not_a_staged_repository_is_refused(fixture_repo, tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("mine")
    r = run_cli(["stage", "--source", fixture_repo.path, "--dest", tmp_path / "home", "--packages", "initrd-init"])
    assert r.returncode == 1
    assert "is not empty and is no staged repository" in r.stderr
    assert (tmp_path / "home" / "notes.txt").read_text() == "mine"
    r = run_cli(["stage", "--source", fixture_repo.path, "--dest", tmp_path / "x"])
    assert r.returncode == 1 and "error: --packages, --spec or --installed-root: give exactly one\n" in r.stderr


def test_builder_builds_an_image_from_a_staged_repository(koji_tree, tree_server, fixture_repo, tmp_path):
    require_tools("mkosi", "ukify", "rpm2cpio", "cpio", "zstd")
    require_root()
    staged = tmp_path / "staged"
    stage(koji_url(tree_server, koji_tree), staged, packages=MINIMAL_PACKAGES)
    out = tmp_path / "out"
    r = run_cli(["build", "--repo", staged, "--kernel-version", fixture_repo.kernel_version, "--output", out,
                 "--variants-dir", FIXTURE_VARIANTS, "--variant", "minimal"])
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "minimal" / "manifest.json").read_text())
    assert {p.rsplit("-", 2)[0] for p in manifest["packages"]} >= {"initrd-init", "kmod", "busybox"}
    assert (out / "minimal" / "initrd.cpio.zst").stat().st_size > 0


def test_a_trickling_server_fails_the_file_within_its_time_limit(koji_tree, tree_server, tmp_path):
    """One byte every 2 s never trips a per-read timeout; the bound on the whole file does, and the
    error names the URL. The staging runs in a process of its own so a hang fails the test instead of
    holding it."""
    path = package_urlpath(koji_tree, "initrd-init")
    tree_server.faults[path] = Fault("trickle", seconds=2.0)
    proc = subprocess.Popen([sys.executable, "-m", "mkosi_initrd_builder", "stage", "--source",
                             koji_url(tree_server, koji_tree), "--dest", str(tmp_path / "d"), "--packages",
                             "initrd-init", "--fetch-timeout", "3", "--retries", "2"],
                            cwd=TOP, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert f"{tree_server.url}{path}" in err and "not complete after 3s, the limit for one file" in err, err
    assert tree_server.requests_for(path) == 1  # the limit is for the file: no second try after it
    assert not (tmp_path / "d").exists() and leftovers(tmp_path) == []


def test_sigterm_stops_a_staging_waiting_for_another_stagings_cache_lock(koji_tree, tree_server, tmp_path):
    """Another staging holds every lock stripe of the cache (as while it fetches): the waiting staging
    neither fetches nor hangs, and a SIGTERM ends it at once."""
    import fcntl

    from mkosi_initrd_builder.staging.cache import PackageCache

    cache = PackageCache(tmp_path / "cache")
    held = []
    for i in range(256):
        fd = os.open(cache.root / "locks" / f"{i:02x}", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        held.append(fd)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "mkosi_initrd_builder", "stage", "--source",
                                 koji_url(tree_server, koji_tree), "--dest", str(tmp_path / "d"), "--cache",
                                 str(cache.root), "--packages", "initrd-init"],
                                cwd=TOP, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        # the staging directory appears once the packages are chosen, right before the first lock
        while not list(tmp_path.glob(".d.staging-*")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        assert proc.poll() is None, proc.communicate()[1]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        for fd in held:
            os.close(fd)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert tree_server.requests_for(package_urlpath(koji_tree, "initrd-init")) == 0
    assert not (tmp_path / "d").exists() and leftovers(tmp_path) == []


def test_a_body_larger_than_the_package_is_refused_before_it_is_written(koji_tree, tree_server, tmp_path):
    path = package_urlpath(koji_tree, "initrd-init")
    tree_server.faults[path] = Fault("oversize")
    with pytest.raises(FetchError, match=r"initrd-init.*announces [\d,]+ bytes, more than the [\d,]+ expected") as e:
        stage(koji_url(tree_server, koji_tree), tmp_path / "d", packages=["initrd-init"])
    assert f"{tree_server.url}{path}" in str(e.value)
    assert tree_server.requests_for(path) == 1  # not worth another try
    assert not (tmp_path / "d").exists() and leftovers(tmp_path) == []


def repodata_packages(repo: Path) -> dict[str, str]:
    """Each package's primary, filelists and other entries as createrepo_c reads them back, by href,
    with the file time (the staged file's mtime for the createrepo_c command) left out."""
    import createrepo_c

    md = createrepo_c.Metadata()
    md.locate_and_load_xml(str(repo))
    entries = {}
    for key in md.keys():
        pkg = md.get(key)
        pkg.time_file = 0
        entries[pkg.location_href] = "".join(createrepo_c.xml_dump(pkg))
    return entries


def test_repodata_is_reproducible_and_says_what_createrepo_c_says(koji_tree, tree_server, tmp_path):
    source, cache = koji_url(tree_server, koji_tree), tmp_path / "cache"
    cold = stage(source, tmp_path / "cold", packages=MINIMAL_PACKAGES, cache=cache)
    stage(source, tmp_path / "warm", packages=MINIMAL_PACKAGES, cache=cache)
    stage(source, tmp_path / "uncached", packages=MINIMAL_PACKAGES)
    files = {d: sorted((tmp_path / d / "repodata").iterdir()) for d in ("cold", "warm", "uncached")}
    assert [f.name for f in files["cold"]] == [f.name for f in files["warm"]] == [f.name for f in files["uncached"]]
    assert len([f for f in files["cold"] if f.name.endswith(".xml.gz")]) == 3  # primary, filelists, other
    for a, b, c in zip(*files.values()):
        assert a.read_bytes() == b.read_bytes() == c.read_bytes()
    # the createrepo_c command, run on the same files, describes every package the same way
    (tmp_path / "described").mkdir()
    for p in cold.packages:
        shutil.copy(tmp_path / "cold" / p.file, tmp_path / "described")
    subprocess.run(["createrepo_c", "--quiet", "--no-database", str(tmp_path / "described")], check=True)
    ours, theirs = repodata_packages(tmp_path / "cold"), repodata_packages(tmp_path / "described")
    assert sorted(ours) == sorted(p.file for p in cold.packages)
    assert ours == theirs

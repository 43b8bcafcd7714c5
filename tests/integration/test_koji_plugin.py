"""The kojid plugin, loaded as kojid loads it (koji.plugin.PluginTracker), running buildArch tasks
through the fake kojid (tests/support/fake_kojid.py) against the koji-like tree over HTTP and a
minimal hub reached with the real koji.ClientSession."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import koji
import koji.plugin
import pytest
from koji.daemon import TaskManager

from tests.conftest import TOP, require_root, require_tools
from tests.support import fake_kojid
from tests.support.kojitree import Fault, build_srpm, place_task_srpm
from tests.support.kojirun import (
    CONFIG_ENV, IN_CHROOT_REPO, PLUGIN_DIR, PLUGIN_MODULE, SPECS, STAGER_AGENT, TASK_DIR, TASK_ID,
    BuildRun, loaded_plugin, run_build_arch,
)

pytestmark = pytest.mark.integration

class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def kojid_work(tmp_path_factory):
    """kojid's directories below a parent only root may enter (mode 0700), as in a root user's
    home: the build runs inside the buildroot, and nothing outside it needs to be reachable for
    the unprivileged build user. KEEP_KOJID_WORK=1 keeps the directories for a look at the logs."""
    require_root()
    require_tools("dnf", "rpmbuild", "unshare", "createrepo_c", "useradd", "groupadd")
    parent = tmp_path_factory.mktemp("private")
    os.chmod(parent, 0o700)
    work = parent / "kojid"
    work.mkdir()
    yield work
    if not os.environ.get("KEEP_KOJID_WORK"):
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def srpms(koji_tree, kojid_work) -> dict[str, str]:
    """The test SRPMs, where a build task's parent would have uploaded them (work/tasks/...)."""
    built = {
        "kojitest": build_srpm(SPECS / "mkosi-initrd-kojitest.spec", TOP / "tests/fixtures/variants",
                               kojid_work / "rpmbuild"),
        "hello": build_srpm(SPECS / "kojitest-hello.spec", SPECS, kojid_work / "rpmbuild"),
    }
    return {key: place_task_srpm(koji_tree, path, TASK_ID) for key, path in built.items()}


# --- loading ------------------------------------------------------------------------------------

def test_plugin_loads_through_plugintracker_and_swaps_buildroot(tmp_path):
    original = fake_kojid.BuildRoot
    callbacks = {k: list(v) for k, v in koji.plugin.callbacks.items()}
    with loaded_plugin("[mkosi_initrd]\npackages = mkosi-initrd-initrd\n", tmp_path / "c.conf") as plugin:
        assert plugin.__name__ == PLUGIN_MODULE
        swapped = fake_kojid.BuildRoot
        assert swapped is not original and issubclass(swapped, original)
        assert swapped.mkosi_initrd_config.packages == {"mkosi-initrd-initrd"}
        # kojid scans the plugin for task handlers and callbacks: it must find none, so kojid's own
        # buildArch handler keeps running and merely meets the swapped BuildRoot.
        tm = TaskManager.__new__(TaskManager)
        tm.handlers = {}
        tm.scanPlugin(plugin)
        assert tm.handlers == {}
        assert {k: list(v) for k, v in koji.plugin.callbacks.items()} == callbacks
        # loading again (kojid restart in-process, or a reload) replaces the subclass, never stacks
        koji.plugin.PluginTracker(path=[str(PLUGIN_DIR)]).load("mkosi_initrd", reload=True)
        assert fake_kojid.BuildRoot.__mro__[1] is original
    assert fake_kojid.BuildRoot is original


@pytest.mark.parametrize("config, key", [
    ("[mkosi_initrd]\npackages = p\njobs = 0\n", "[mkosi_initrd] jobs"),
    ("[mkosi_initrd]\npackages = p\ncolour = blue\n", "[mkosi_initrd] colour"),
    ("[mkosi_initrd]\ncache_dir = /srv/cache\n", "[mkosi_initrd] packages"),
    ("[mkosi_initrd]\npackages = p\ncache_dir = //\n", "[mkosi_initrd] cache_dir: '//' is the top-level directory /,"),
    ("[mkosi_initrd]\npackages = p\ncache_dir = /var\n", "[mkosi_initrd] cache_dir: '/var' is the top-level"),
    ("[mkosi_initrd]\npackages = p\npackages = q\n", "'packages'"),
    ("packages = p\n", "MissingSectionHeaderError"),
    ("[mkosi_initrd]\npackages = p\nmax_size = " + "9" * 400 + "G\n", "[mkosi_initrd] max_size: '999"),
    ("[mkosi_initrd]\npackages = p\nmax_size = 9223372036854775808\n",
     "[mkosi_initrd] max_size: '9223372036854775808' is larger than 9,223,372,036,854,775,807 bytes"),
])
def test_bad_config_stops_the_plugin_at_load(tmp_path, config, key):
    original = fake_kojid.BuildRoot
    with pytest.raises(koji.GenericError) as e, loaded_plugin(config, tmp_path / "bad.conf"):
        pass
    assert str(e.value).startswith("bad config: ") and str(tmp_path / "bad.conf") in str(e.value)
    assert key in str(e.value)
    assert fake_kojid.BuildRoot is original


def test_missing_config_stops_the_plugin_at_load(tmp_path, monkeypatch):
    monkeypatch.setattr(fake_kojid, "BuildRoot", fake_kojid.BuildRoot)
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "absent.conf"))
    try:
        with pytest.raises(koji.GenericError, match="bad config: .*absent.conf"):
            koji.plugin.PluginTracker(path=[str(PLUGIN_DIR)]).load("mkosi_initrd")
    finally:
        sys.modules.pop(PLUGIN_MODULE, None)


def test_plugin_outside_kojid_refuses_to_load(tmp_path, monkeypatch):
    monkeypatch.delattr(fake_kojid, "BuildArchTask")
    with pytest.raises(koji.PluginError, match="only works inside kojid"), \
            loaded_plugin("[mkosi_initrd]\npackages = p\n", tmp_path / "c.conf"):
        pass


# --- builds -------------------------------------------------------------------------------------

def _snapshot(run: BuildRun) -> dict[str, Any]:
    root = run.buildroot / "root"
    return {
        "mock": run.mock_calls,
        "hub": [c.method for c in run.hub.calls],
        "uploads": sorted(run.hub.uploads),
        "result": run.result,
        "macros": (root / "etc/rpm/macros.mkosi-initrd").exists(),
        "staged": (root / "chroot_tmpdir/mkosi-initrd").exists(),
    }


def test_package_off_the_allowlist_runs_exactly_as_without_the_plugin(koji_tree, tree_server, srpms, kojid_work):
    work = kojid_work / "untouched"
    plain = run_build_arch(work, koji_tree, tree_server, srpms["hello"])
    assert plain.error is None, plain.error
    without = _snapshot(plain)
    shutil.rmtree(work)
    tree_server.reset()
    with loaded_plugin("[mkosi_initrd]\npackages = mkosi-initrd-kojitest\n", kojid_work / "untouched.conf"):
        patched = run_build_arch(work, koji_tree, tree_server, srpms["hello"])
    assert patched.error is None, patched.error
    with_plugin = _snapshot(patched)
    assert with_plugin == without
    assert [call[3:] for call in with_plugin["mock"]] == [
        ["--init"], ["--chroot", "uname -r"],
        ["--no-clean", "--target", "x86_64", "--rebuild", f"{work}/work/{TASK_DIR}/local/work/{srpms['hello']}"],
    ]
    assert with_plugin["macros"] is False and with_plugin["staged"] is False
    assert tree_server.requests_by(STAGER_AGENT) == []
    assert with_plugin["result"]["rpms"] == [f"{TASK_DIR}/kojitest-hello-1-1.x86_64.rpm"]


@pytest.fixture(scope="module")
def allowlisted_builds(koji_tree, koji_http, srpms, kojid_work):
    """The allow-listed package built twice with one cache: first over topurl, then with the topdir
    mounted on the builder."""
    require_tools("mkosi", "ukify")
    records = _Records()
    plugin_logger = logging.getLogger("koji.plugin.mkosi_initrd")
    plugin_logger.addHandler(records)
    old_level = plugin_logger.level
    plugin_logger.setLevel(logging.INFO)
    config = f"[mkosi_initrd]\npackages = mkosi-initrd-kojitest\ncache_dir = {kojid_work / 'cache'}\njobs = 4\n"
    try:
        with loaded_plugin(config, kojid_work / "e2e.conf"):
            koji_http.reset()
            first = run_build_arch(kojid_work / "first", koji_tree, koji_http, srpms["kojitest"])
            first_agents = koji_http.requests_by(STAGER_AGENT)
            first_messages = list(records.messages)
            koji_http.reset()
            # a tag that asks for mock's simple chroot: the plugin switches this package to nspawn
            second = run_build_arch(kojid_work / "second", koji_tree, koji_http, srpms["kojitest"],
                                    topdir=koji_tree.topdir, extra={"mock.new_chroot": False})
            second_messages = list(records.messages[len(first_messages):])
            second_agents = koji_http.requests_by(STAGER_AGENT)
    finally:
        plugin_logger.removeHandler(records)
        plugin_logger.setLevel(old_level)
        koji_http.reset()
    return types.SimpleNamespace(first=first, second=second, first_requests=first_agents,
                                 second_requests=second_agents, first_messages=first_messages,
                                 second_messages=second_messages, srpm=srpms["kojitest"])


def _rpmdb_nevras(root: Path) -> set[str]:
    out = subprocess.run(["rpm", "--dbpath", str(root / "usr/lib/sysimage/rpm"), "-qa", "--qf", "%{NEVRA}\\n"],
                         stdout=subprocess.PIPE, text=True, check=True).stdout
    return set(out.split())


def test_allowlisted_build_builds_the_initrd_offline_from_the_staged_repo(allowlisted_builds):
    run = allowlisted_builds.first
    assert run.error is None, f"{run.error}\n{(run.buildroot / 'result/build.log').read_text()[-3000:]}"
    log = (run.buildroot / "result/build.log").read_text()
    assert f"MKOSI-KOJITEST: built from {IN_CHROOT_REPO}" in log
    assert run.result["rpms"] == [f"{TASK_DIR}/mkosi-initrd-kojitest-1-1.x86_64.rpm"]
    rpm_file = run.mockdir.parent / "uploaded.rpm"
    rpm_file.write_bytes(run.upload("mkosi-initrd-kojitest-1-1.x86_64.rpm"))
    files = subprocess.run(["rpm", "-qlp", "--nosignature", str(rpm_file)], stdout=subprocess.PIPE, text=True,
                           check=True).stdout.split()
    assert "/usr/lib/mkosi-initrd-kojitest/initrd.cpio.zst" in files


def test_mock_installs_the_buildrequires_before_the_rebuild(allowlisted_builds):
    run = allowlisted_builds.first
    srpm = run.mock_calls[2][-1]
    # the tag leaves the isolation to mock; the plugin asks for nspawn from --installdeps on
    assert [call[3:] for call in run.mock_calls] == [
        ["--init"], ["--chroot", "uname -r"], ["--new-chroot", "--installdeps", srpm],
        ["--new-chroot", "--no-clean", "--target", "x86_64", "--rebuild", srpm],
    ]
    assert run.mock_calls[0][:3] == ["/usr/bin/mock", "-r", f"koji/{run.buildroot.name}"]


def test_staged_repository_holds_exactly_the_buildroot_packages(allowlisted_builds, koji_tree, koji_http):
    run = allowlisted_builds.first
    manifest = json.loads(run.upload("stage-manifest.json"))
    staged = run.buildroot / "root" / IN_CHROOT_REPO.lstrip("/")
    assert json.loads((staged / "stage-manifest.json").read_text()) == manifest
    assert {p["nevra"] for p in manifest["packages"]} == _rpmdb_nevras(run.buildroot / "root")
    assert {"kernel-core", "initrd-init", "kmod", "systemd-boot-unsigned", "busybox", "filesystem",
            "basesystem"} <= {p["name"] for p in manifest["packages"]}
    assert manifest["selection"]["mode"] == "pinned"
    assert manifest["source"]["location"] == f"{koji_http.url}/{koji_tree.repo_relpath}/"
    assert manifest["source"]["koji"] == {"tag": koji_tree.tag, "repo_id": koji_tree.repo_id,
                                          "arch": koji_tree.arch}
    assert manifest["totals"]["bytes-fetched"] == manifest["totals"]["bytes"]
    for p in manifest["packages"]:
        assert p["via"] == "http" and "/toplink/packages/" in p["origin"]
        assert p["payloadhash"] == koji_tree.rpminfo[f"{p['name']}-{p['version']}-{p['release']}.{p['arch']}"][
            "payloadhash"]
        assert (staged / p["file"]).stat().st_mode & 0o222 == 0
    # each RPM was fetched once, by the plugin, through toplink; nothing else
    assert sorted(allowlisted_builds.first_requests) == sorted(
        ["/" + koji_tree.repo_relpath + "/repodata/repomd.xml", f"/{koji_tree.repo_relpath}/rpmlist.jsonl",
         *[f"/{koji_tree.repo_relpath}/repodata/{p.name}" for p in (koji_tree.repo_dir / "repodata").glob("*primary*")],
         *[p["origin"][len(koji_http.url):] for p in manifest["packages"]]])
    # read-only for the build user: root owns the directories and only root may write them
    for d in (staged, staged / "repodata", staged.parent):
        st = d.stat()
        assert st.st_uid == 0 and st.st_mode & 0o022 == 0
    assert f"{TASK_DIR}/stage-manifest.json" in run.result["logs"]


def test_macro_names_the_repository_as_the_chroot_sees_it(allowlisted_builds):
    macros = allowlisted_builds.first.buildroot / "root/etc/rpm/macros.mkosi-initrd"
    value = subprocess.run(["rpm", "--load", str(macros), "--eval", "%{mkosi_initrd_repo}"], stdout=subprocess.PIPE,
                           text=True, check=True).stdout.strip()
    assert value == IN_CHROOT_REPO


def test_one_summary_line_is_logged(allowlisted_builds):
    summaries = [m for m in allowlisted_builds.first_messages if "staged" in m]
    assert len(summaries) == 1
    # As many packages as the buildroot has installed (the manifest holds exactly those, see
    # test_staged_repository_holds_exactly_the_buildroot_packages).
    staged = len(json.loads(allowlisted_builds.first.upload("stage-manifest.json"))["packages"])
    assert summaries[0].startswith(f"mkosi_initrd: mkosi-initrd-kojitest: staged {staged} packages into "
                                   f"{IN_CHROOT_REPO}: ")
    assert " bytes fetched, 0 bytes from cache, " in summaries[0]


def test_second_build_fetches_nothing(allowlisted_builds, koji_tree):
    run = allowlisted_builds.second
    assert run.error is None, run.error
    manifest = json.loads(run.upload("stage-manifest.json"))
    totals = manifest["totals"]
    assert totals["bytes-fetched"] == 0 and totals["bytes-from-cache"] == totals["bytes"] > 9_000_000
    assert {p["via"] for p in manifest["packages"]} == {"cache"}
    # the builder mounts topdir now: the plugin reads the repository there, not over HTTP
    assert manifest["source"]["kind"] == "directory"
    assert manifest["source"]["location"] == str(koji_tree.repo_dir)
    assert allowlisted_builds.second_requests == []


def test_staging_failure_fails_the_build_naming_the_package(koji_tree, tree_server, srpms, kojid_work):
    busybox = f"/{koji_tree.repo_relpath}/toplink/{koji_tree.package_path('busybox').relative_to(koji_tree.topdir)}"
    # only the plugin's downloads fail; mock's own dnf still installs the buildroot
    tree_server.faults[busybox] = Fault("status", status=404, user_agent=STAGER_AGENT)
    config = f"[mkosi_initrd]\npackages = kojitest-hello\ncache_dir = {kojid_work / 'failing-cache'}\n"
    with loaded_plugin(config, kojid_work / "failing.conf"):
        run = run_build_arch(kojid_work / "failing", koji_tree, tree_server, srpms["hello"])
    assert isinstance(run.error, koji.BuildError)
    message = str(run.error)
    assert message.startswith("mkosi_initrd: staging the buildroot packages of kojitest-hello from "
                              f"{tree_server.url}/{koji_tree.repo_relpath} failed: cannot fetch busybox-1.35.0")
    assert f"{tree_server.url}{busybox}: HTTP 404" in message
    assert [call[3:5] for call in run.mock_calls] == [["--init"], ["--chroot", "uname -r"],
                                                      ["--new-chroot", "--installdeps"]]
    assert set(run.hub.buildroot_states.values()) == {"EXPIRED"}
    assert not (run.buildroot / "root/etc/rpm/macros.mkosi-initrd").exists()


def test_cache_dir_that_is_no_cache_fails_the_build_and_stays_untouched(koji_tree, tree_server, srpms, kojid_work):
    foreign = kojid_work / "someones-files"
    (foreign / "tmp").mkdir(parents=True)
    (foreign / "tmp" / ".old.abcdefgh.part").write_text("mine")
    then = time.time() - 3 * 24 * 3600
    os.utime(foreign / "tmp" / ".old.abcdefgh.part", (then, then))
    (foreign / "notes.txt").write_text("mine")
    before = sorted((str(p), p.stat().st_mtime) for p in foreign.rglob("*"))
    config = f"[mkosi_initrd]\npackages = kojitest-hello\ncache_dir = {foreign}\n"
    with loaded_plugin(config, kojid_work / "foreign.conf"):
        run = run_build_arch(kojid_work / "foreign", koji_tree, tree_server, srpms["hello"])
    assert isinstance(run.error, koji.BuildError)
    assert f"failed: cache {foreign}: not empty and holds no mkosi-initrd-cache.json" in str(run.error)
    assert sorted((str(p), p.stat().st_mtime) for p in foreign.rglob("*")) == before
    assert not (run.buildroot / "root/etc/rpm/macros.mkosi-initrd").exists()


def test_full_cache_disk_fails_the_build_naming_the_cache_and_expires_the_buildroot(koji_tree, tree_server, srpms,
                                                                                    kojid_work, tmp_path):
    require_root()
    full = tmp_path / "small"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", full], check=True)
    try:
        config = f"[mkosi_initrd]\npackages = kojitest-hello\ncache_dir = {full / 'cache'}\n"
        with loaded_plugin(config, kojid_work / "fullcache.conf"):
            run = run_build_arch(kojid_work / "fullcache", koji_tree, tree_server, srpms["hello"])
        assert isinstance(run.error, koji.BuildError)
        assert str(run.error) == (f"mkosi_initrd: staging the buildroot packages of kojitest-hello from "
                                  f"{tree_server.url}/{koji_tree.repo_relpath} failed: cannot write the cache "
                                  f"{full / 'cache'}: No space left on device")
        assert set(run.hub.buildroot_states.values()) == {"EXPIRED"}
        assert not (run.buildroot / "root/etc/rpm/macros.mkosi-initrd").exists()
        assert list((full / "cache" / "tmp").iterdir()) == []
    finally:
        subprocess.run(["umount", "-l", full], check=False)


# --- mock's isolation ---------------------------------------------------------------------------

def test_simple_chroot_tag_builds_under_nspawn_and_says_so(allowlisted_builds, kojid_work):
    run = allowlisted_builds.second
    assert run.error is None, run.error
    srpm = run.mock_calls[2][-1]
    assert [call[3:] for call in run.mock_calls] == [
        ["--old-chroot", "--init"], ["--old-chroot", "--chroot", "uname -r"],
        ["--new-chroot", "--installdeps", srpm], ["--new-chroot", "--no-clean", "--target", "x86_64", "--rebuild", srpm],
    ]
    switched = [m for m in allowlisted_builds.second_messages if "--new-chroot" in m]
    assert switched == ["mkosi_initrd: mkosi-initrd-kojitest: mock runs with --new-chroot (nspawn isolation; build "
                        f"tag {run.hub.tag} sets mock.new_chroot=False): mkosi builds in user namespaces, which a "
                        "simple chroot refuses"]
    root_log = (run.buildroot / "result/root.log").read_text()
    assert root_log.count("INFO: isolation: simple") == 2 and root_log.count("INFO: isolation: nspawn") == 2
    # the same image as the first build's
    assert _initrd(allowlisted_builds.first, kojid_work / "first.rpm") == _initrd(run, kojid_work / "second.rpm")


def _initrd(run: BuildRun, scratch: Path) -> bytes:
    import rpmfile

    scratch.write_bytes(run.upload("mkosi-initrd-kojitest-1-1.x86_64.rpm"))
    with rpmfile.open(scratch) as rpm:
        return rpm.extractfile("./usr/lib/mkosi-initrd-kojitest/initrd.cpio.zst").read()


def test_in_mocks_simple_chroot_the_builder_fails_with_one_line_naming_the_fix(allowlisted_builds, kojid_work):
    """What the plugin's switch avoids, shown in the first build's buildroot: the installed builder,
    run by the build user inside mock's simple chroot, cannot give mkosi its user namespace, and
    says so before any work."""
    from tests.support.fake_mock import FakeMock, Isolation, load_mock_config
    from tests.support.kojirun import BUILD_USER, nspawn_path

    run = allowlisted_builds.first
    result = kojid_work / "simple-result"
    result.mkdir()

    def log(name, text):
        with open(result / name, "a") as f:
            f.write(text)

    mock = FakeMock(load_mock_config(run.mockdir / "koji" / f"{run.buildroot.name}.cfg"), run.buildroot / "root",
                    result, run.buildroot, build_uid=BUILD_USER[0], build_gid=BUILD_USER[1], nspawn=nspawn_path(),
                    log=log)
    mock.isolation = Isolation.SIMPLE
    # any kernel version: the check comes before the repository is read
    rc = mock.in_root(["mkosi-initrd-build", "build", "--repo", IN_CHROOT_REPO, "--kernel-version", "any",
                       "--output", "/builddir/out"], "build.log", user=True)
    assert rc == 1
    build_log = (result / "build.log").read_text()
    errors = [line for line in build_log.splitlines() if line.startswith("mkosi-initrd-build: ")]
    assert errors == [
        "mkosi-initrd-build: error: mkosi cannot create its sandbox here: unshare(CLONE_NEWUSER) failed: Operation "
        "not permitted (a chroot, such as mock's simple isolation, refuses it)",
        "mkosi-initrd-build: hint: in koji, build under mock's nspawn isolation: `koji edit-tag TAG -x "
        "mock.new_chroot=True`, or the mkosi_initrd kojid plugin's `isolation = nspawn`; with mock, "
        "--isolation=nspawn"], build_log[-3000:]
    assert "Traceback" not in build_log and "Reading repository" not in build_log
    assert not (run.buildroot / "root/builddir/out").exists()


@pytest.mark.parametrize("isolation", ["simple", "nspawn"])
def test_buildroot_resolves_names_as_mocks_offline_buildroot_does(allowlisted_builds, kojid_work, isolation):
    """koji's buildArch has neither use_host_resolv nor rpmbuild_networking: mock leaves an empty
    resolv.conf and an /etc/hosts naming localhost in the root, and keeps nspawn from putting the
    host's resolver there. The stand-in once let nspawn copy the host's name server in: every dnf
    inside mkosi then waited on a lookup of the container's host name the private network could not
    answer (a fixture build's mkosi took 35 s instead of 5)."""
    from tests.support.fake_mock import FakeMock, Isolation, load_mock_config
    from tests.support.kojirun import BUILD_USER, nspawn_path

    run = allowlisted_builds.first
    config = load_mock_config(run.mockdir / "koji" / f"{run.buildroot.name}.cfg")
    assert not config["use_host_resolv"] and not config["rpmbuild_networking"]
    result = kojid_work / f"resolver-{isolation}"
    result.mkdir()

    def log(name, text):
        with open(result / name, "a") as f:
            f.write(text)

    mock = FakeMock(config, run.buildroot / "root", result, run.buildroot, build_uid=BUILD_USER[0],
                    build_gid=BUILD_USER[1], nspawn=nspawn_path(), log=log)
    mock.isolation = Isolation(isolation)
    rc = mock.in_root(["/bin/sh", "-c", "echo resolv.conf: $(wc -c < /etc/resolv.conf); cat /etc/hosts"],
                      "build.log", user=True)
    assert rc == 0
    lines = (result / "build.log").read_text().splitlines()
    assert "resolv.conf: 0" in lines, lines
    hosts = [line.split() for line in lines if line[:1].isdigit() or line.startswith("::1")]
    assert [h[0] for h in hosts] == ["127.0.0.1", "::1"] and all("localhost" in h for h in hosts), lines


def test_isolation_tag_setting_refuses_a_simple_chroot_tag_before_any_work(koji_tree, tree_server, srpms, kojid_work):
    config = (f"[mkosi_initrd]\npackages = mkosi-initrd-kojitest\ncache_dir = {kojid_work / 'tag-cache'}\n"
              "isolation = tag\n")
    with loaded_plugin(config, kojid_work / "tag.conf"):
        run = run_build_arch(kojid_work / "tag-simple", koji_tree, tree_server, srpms["kojitest"],
                             extra={"mock.new_chroot": False})
    assert isinstance(run.error, koji.BuildError)
    assert str(run.error) == (
        "mkosi_initrd: mkosi-initrd-kojitest needs mock's nspawn isolation (mkosi builds in user namespaces, which "
        f"a simple chroot refuses), but build tag {koji_tree.tag} sets mock.new_chroot=False: run "
        f"`koji edit-tag {koji_tree.tag} -x mock.new_chroot=True`, or set isolation = nspawn in "
        "/etc/kojid/plugins/mkosi_initrd.conf")
    assert [call[3:5] for call in run.mock_calls] == [["--old-chroot", "--init"], ["--old-chroot", "--chroot"]]
    assert tree_server.requests_by(STAGER_AGENT) == []

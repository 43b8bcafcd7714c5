"""A stand-in for the parts of kojid's __main__ (koji's builder/kojid) that the mkosi_initrd plugin
touches. kojid and mock cannot be installed here, so this mirrors, narrowly and with the same
signatures, BuildRoot (constructor via _new, init, build, mock, getPackageList with the payloadhash
check of mapInternalRPMs, rootdir, resultdir, tmpdir(within=), get_repo_dir, getUploadPath,
single_log, expire, _mockResult) and BuildArchTask, a real koji.tasks.BaseTaskHandler whose handler
looks BuildRoot up as a module global at call time, as kojid's does. Hub calls go through the real
koji.ClientSession; the mock config is the real koji.genMockConfig output.

mock() records each argv it would run and does real work in a scratch root instead of a chroot:
  --init           rm -rf the root, then real `dnf --installroot` of the config's chroot_setup_cmd
                   (install @build) from the config's [build] repo (the koji-like repo over topurl)
  --chroot 'uname -r'   runs uname on the host
  --installdeps S  real `dnf --installroot` of the SRPM's requires (its BuildRequires)
  --rebuild S      real `rpmbuild --rebuild` as an unprivileged user (setpriv) in a network
                   namespace with no usable interface (unshare --net), with the config's macros and
                   every %name /path macro of the root's /etc/rpm/macros.* files

Deviations from kojid + mock, on purpose:
  - no chroot: rpmbuild and the tools it calls are the host's; the BuildRequires land in the
    scratch root (where getPackageList and the plugin read them) but the build does not run on them,
    so rpmbuild gets --nodeps (dnf already resolved them into the root).
    Because there is no chroot, an in-chroot path in /etc/rpm/macros.* is mapped onto the scratch
    root (root + path) before rpmbuild sees it, and the macro file is also passed with --load.
  - dnf writes the root's rpmdb to /usr/lib/sysimage/rpm (as on Fedora) through a HOME/.rpmmacros
    setting %_dbpath; Debian's dnf would otherwise put it at <root>/root/.rpmdb.
  - no mock config under /etc/mock/koji (it goes to <mockdir>/koji/), no bootstrap chroot, no
    /dev setup, no mockuser switch for mock itself, no rpm signing, no external repositories
    (markExternalRPMs asks the hub and expects none), no log streaming (logs are files in
    resultdir, uploaded by nobody), no SRPM sanity checks, no rpmdiff of noarch RPMs, no task weight.
"""

from __future__ import annotations

import collections
import glob
import json
import logging
import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Optional

import koji
import koji.tasks
import rpm
from koji.tasks import BaseTaskHandler
from koji.util import parseStatus

logger = logging.getLogger("tests.fake_kojid")

REBUILD_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"


def _status(code: int) -> int:
    """An exit code as the wait status os.waitpid() gives kojid's mock()."""
    return (code & 0xFF) << 8


class BuildRoot(object):

    def __init__(self, session, options, *args, **kwargs):
        self.logger = logging.getLogger("koji.build.buildroot")
        self.session = session
        self.options = options
        self.logs = set()
        if len(args) + len(kwargs) == 1:
            raise NotImplementedError("fake kojid: managing an existing buildroot (_load) is not mirrored")
        self._new(*args, **kwargs)

    def _new(self, tag, arch, task_id, repo_id=None, install_group='build', setup_dns=False, bind_opts=None,
             maven_opts=None, maven_envs=None, deps=None, internal_dev_setup=None):
        if not repo_id:
            raise koji.BuildrootError("A repo id must be provided")
        self.repo_info = self.session.repoInfo(repo_id, strict=True)
        self.repoid = self.repo_info['id']
        self.event_id = self.repo_info['create_event']
        self.task_id = task_id
        self.config = self.session.getBuildConfig(tag, event=self.event_id)
        self.tag_id = self.config['id']
        self.tag_name = self.config['name']
        if self.config['id'] != self.repo_info['tag_id']:
            raise koji.BuildrootError("tag/repo mismatch")
        self.br_arch = koji.canonArch(arch)
        self.target_arch = arch
        self.id = self.session.host.newBuildRoot(self.repoid, self.br_arch, task_id=task_id)
        self.name = "%(tag_name)s-%(id)s-%(repoid)s" % vars(self)
        self.install_group = install_group
        self.setup_dns = setup_dns
        self._writeMockConfig()

    def _writeMockConfig(self):
        configdir = Path(self.options.mockdir) / "koji"
        configdir.mkdir(parents=True, exist_ok=True)
        self.mockcfg = "koji/%s" % self.name
        opts = {k: getattr(self.options, k) for k in ('mockdir', 'topdir', 'topurl') if hasattr(self.options, k)}
        opts.update(repoid=self.repoid, tag_name=self.tag_name, buildroot_id=self.id,
                    use_host_resolv=self.setup_dns, install_group=self.install_group, target_arch=self.target_arch)
        self._configfile = configdir / f"{self.name}.cfg"
        self._configfile.write_text(koji.genMockConfig(self.name, self.br_arch, managed=True, **opts))
        self.single_log(str(self._configfile), name='mock_config.log')

    def _mock_config(self) -> dict:
        # mock reads its config as Python, and so does this fake.
        config_opts: dict = collections.defaultdict(dict)
        exec(compile(self._configfile.read_text(), str(self._configfile), "exec"), {"config_opts": config_opts})
        return config_opts

    def get_repo_dir(self):
        pathinfo = koji.PathInfo(topdir='')
        return pathinfo.repo(self.repoid, self.tag_name)

    # --- mock ------------------------------------------------------------------------------

    def mock(self, args):
        """Run "mock": record the argv kojid would exec, do the work in the scratch root, return a wait status."""
        cmd = [getattr(self.options, "mockpath", "/usr/bin/mock"), "-r", self.mockcfg]
        if 'mock.new_chroot' in self.config['extra']:
            cmd.append('--new-chroot' if self.config['extra']['mock.new_chroot'] else '--old-chroot')
        if self.config['extra'].get('mock.bootstrap_image_ready', False):
            cmd.append('--bootstrap-image-ready')
        cmd.extend(args)
        self.logger.info(shlex.join(cmd))
        recorder = getattr(self.options, "fake_mock_log", None)
        if recorder is not None:
            recorder.append(list(cmd))
        os.makedirs(self.resultdir(), exist_ok=True)
        return _status(self._fake_mock(list(args)))

    def _fake_mock(self, args: list) -> int:
        target = None
        if "--no-clean" in args:
            args.remove("--no-clean")
        if "--target" in args:
            i = args.index("--target")
            target = args[i + 1]
            del args[i:i + 2]
        if args == ["--init"]:
            return self._init_root()
        if args[:1] == ["--chroot"] and args[1:] == ["uname -r"]:
            return self._run(["uname", "-r"], "root.log")
        if len(args) == 2 and args[0] == "--installdeps":
            return self._installdeps(args[1])
        if len(args) == 2 and args[0] == "--rebuild":
            return self._rebuild(args[1], target)
        self._log("root.log", f"fake mock: {args} is not mirrored\n")
        return 1

    def _log(self, name: str, text: str) -> None:
        with open(os.path.join(self.resultdir(), name), "a") as f:
            f.write(text)

    def _run(self, argv: list, logname: str, env: Optional[dict] = None) -> int:
        self._log(logname, f"+ {shlex.join(map(str, argv))}\n")
        with open(os.path.join(self.resultdir(), logname), "ab") as log:
            return subprocess.run([str(a) for a in argv], stdout=log, stderr=subprocess.STDOUT, env=env,
                                  stdin=subprocess.DEVNULL).returncode

    def _dnf(self, *args: str) -> int:
        root = Path(self.rootdir())
        home = Path(self.options.mockdir) / self.name / "dnf-home"
        home.mkdir(parents=True, exist_ok=True)
        (home / ".rpmmacros").write_text("%_dbpath /usr/lib/sysimage/rpm\n")
        argv = ["dnf", "--installroot", root, "--config", root / "etc/dnf/dnf.conf", "--releasever", "koji",
                "--disableplugin=*", "-y", *args]
        return self._run(argv, "root.log", env={"HOME": str(home), "PATH": REBUILD_PATH, "LC_ALL": "C"})

    def _init_root(self) -> int:
        root = Path(self.rootdir())
        shutil.rmtree(root, ignore_errors=True)
        (root / "etc/dnf").mkdir(parents=True)
        config = self._mock_config()
        (root / "etc/dnf/dnf.conf").write_text(config['yum.conf'])
        os.makedirs(self.tmpdir(), exist_ok=True)
        return self._dnf(*shlex.split(config['chroot_setup_cmd']))

    def _installdeps(self, srpm: str) -> int:
        out = subprocess.run(["rpm", "-qp", "--nosignature", "--requires", srpm], stdout=subprocess.PIPE,
                             text=True, check=True).stdout
        requires = [r.strip() for r in out.splitlines() if r.strip() and not r.startswith("rpmlib(")]
        return self._dnf("install", *requires) if requires else 0

    def _rebuild(self, srpm: str, target: Optional[str]) -> int:
        uid, gid = self.options.fake_build_user
        scratch = Path(self.options.mockdir) / self.name / "fake-build"
        shutil.rmtree(scratch, ignore_errors=True)
        for sub in ("home", "tmp", "topdir"):
            (scratch / sub).mkdir(parents=True)
        shutil.copy(srpm, scratch / os.path.basename(srpm))
        for path in [scratch, *scratch.rglob("*")]:
            os.chown(path, uid, gid)
        defines = []
        for name, value in sorted(self._mock_config()['macros'].items()):
            if name != '%_topdir':
                defines += ["--define", f"{name.lstrip('%')} {value}"]
        for macros in sorted(glob.glob(os.path.join(self.rootdir(), "etc/rpm/macros.*"))):
            defines += ["--load", macros]
            for line in Path(macros).read_text().splitlines():
                parts = line.split(None, 1)
                if len(parts) == 2 and parts[0].startswith("%") and parts[1].startswith("/"):
                    # The in-chroot path, as the build would see it in a chroot.
                    defines += ["--define", f"{parts[0][1:]} {self.rootdir()}{parts[1].strip()}"]
        argv = ["unshare", "--net", "--", "setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--",
                "env", "-i", f"HOME={scratch / 'home'}", f"TMPDIR={scratch / 'tmp'}",
                f"PATH={getattr(self.options, 'fake_path', REBUILD_PATH)}", "LC_ALL=C.UTF-8",
                "rpmbuild", "--rebuild", "--nodeps", "--define", f"_topdir {scratch / 'topdir'}", *defines]
        if target:
            argv += ["--target", target]
        argv.append(scratch / os.path.basename(srpm))
        rc = self._run(argv, "build.log")
        for built in [*scratch.glob("topdir/RPMS/**/*.rpm"), *scratch.glob("topdir/SRPMS/*.rpm")]:
            shutil.copy(built, self.resultdir())
        return rc

    # --- kojid's BuildRoot methods the plugin and BuildArchTask use ------------------------

    def getUploadPath(self):
        return koji.pathinfo.taskrelpath(self.task_id)

    def single_log(self, localfile, name=None):
        if name is None:
            name = os.path.basename(localfile)
        self.session.uploadWrapper(localfile, self.getUploadPath(), name=name)
        self.logs.add(name)

    def init(self):
        rv = self.mock(['--init'])
        if rv:
            self.expire()
            raise koji.BuildrootError("could not init mock buildroot, %s" % self._mockResult(rv))
        self.mock(['--chroot', 'uname -r'])
        self.session.host.setBuildRootList(self.id, self.getPackageList())

    def _mockResult(self, rv, logfile=None):
        if logfile:
            pass
        elif os.WIFEXITED(rv) and os.WEXITSTATUS(rv) == 10:
            logfile = 'build.log'
        elif os.WIFEXITED(rv) and os.WEXITSTATUS(rv) == 1:
            logfile = 'build.log or root.log'
        else:
            logfile = 'root.log'
        return parseStatus(rv, 'mock') + '; see %s for more information' % logfile

    def build(self, srpm, arch=None):
        self.session.host.setBuildRootState(self.id, 'BUILDING')
        args = ['--no-clean']
        if arch:
            args.extend(['--target', arch])
        args.extend(['--rebuild', srpm])
        rv = self.mock(args)
        self.session.host.updateBuildRootList(self.id, self.getPackageList())
        if rv:
            self.expire()
            raise koji.BuildError("error building package (arch %s), %s" % (arch, self._mockResult(rv)))

    def getPackageList(self):
        fields = ('name', 'version', 'release', 'epoch', 'arch', 'sigmd5', 'size', 'buildtime')
        dbpath = "%s/usr/lib/sysimage/rpm" % self.rootdir()
        if not os.path.exists(dbpath):
            dbpath = "%s/var/lib/rpm" % self.rootdir()
        if not os.path.exists(dbpath):
            raise koji.GenericError("Can't get list of installed rpms")
        rpm.addMacro("_dbpath", dbpath)
        ret = []
        try:
            ts = rpm.TransactionSet()
            for h in ts.dbMatch():
                pkg = koji.get_header_fields(h, fields)
                if pkg['name'] in ['buildsys-build', 'gpg-pubkey']:
                    continue
                pkg['payloadhash'] = koji.hex_string(pkg['sigmd5'])
                del pkg['sigmd5']
                ret.append(pkg)
        finally:
            rpm.delMacro("_dbpath")
        self.markExternalRPMs(ret)
        self.mapInternalRPMs(ret)
        return ret

    def markExternalRPMs(self, rpmlist):
        if self.session.getExternalRepoList(self.repo_info['tag_id'], event=self.repo_info['create_event']):
            raise NotImplementedError("fake kojid: external repositories are not mirrored")

    def mapInternalRPMs(self, rpmlist):
        opts = {k: getattr(self.options, k) for k in ('topurl', 'topdir')}
        rpmlist_path = os.path.join(self.get_repo_dir(), self.br_arch, 'rpmlist.jsonl')
        with koji.openRemoteFile(rpmlist_path, **opts) as fo:
            repo_rpms = [json.loads(line) for line in fo]
        fmt = "%(name)s-%(version)s-%(release)s.%(arch)s"
        repo_rpms = {fmt % r: r for r in repo_rpms}
        for rpm_info in rpmlist:
            data = repo_rpms.get(fmt % rpm_info)
            if not data:
                continue
            if data['payloadhash'] != rpm_info['payloadhash']:
                raise koji.BuildrootError("RPM: %s: payloadhash: %s mismatch expected %s in rpmlist.jsonl"
                                          % (fmt % rpm_info, rpm_info['payloadhash'], data['payloadhash']))
            rpm_info['id'] = data['id']

    def resultdir(self):
        return "%s/%s/result" % (self.options.mockdir, self.name)

    def rootdir(self):
        return "%s/%s/root" % (self.options.mockdir, self.name)

    def tmpdir(self, within=False):
        base = self.options.chroot_tmpdir
        if within:
            return base
        return "%s%s" % (self.rootdir(), base)

    def expire(self):
        self.session.host.setBuildRootState(self.id, 'EXPIRED')


class BuildArchTask(BaseTaskHandler):

    Methods = ['buildArch']
    _taskWeight = 1.5

    def handler(self, pkg, root, arch, keep_srpm, opts=None):
        ret = {}
        if opts is None:
            opts = {}
        repo_id = opts.get('repo_id')
        if not repo_id:
            raise koji.BuildError("A repo id must be provided")
        repo_info = self.session.repoInfo(repo_id, strict=True)
        event_id = repo_info['create_event']
        fn = self.localPath("work/%s" % pkg)
        if not os.path.exists(fn):
            raise koji.BuildError("SRPM file missing: %s" % fn)
        h = koji.get_rpm_header(fn)
        if not koji.get_header_field(h, 'sourcepackage'):
            raise koji.BuildError("not a source package")
        preferred_arch = self.session.getTaskInfo(self.id)['arch'] if arch == "noarch" else None
        br_arch = self.find_arch(arch, self.session.host.getHost(),
                                 self.session.getBuildConfig(root, event=event_id), preferred_arch=preferred_arch)
        # Looked up at call time in this module's globals, as kojid does: the plugin's swap takes effect here.
        broot = BuildRoot(self.session, self.options, root, br_arch, self.id, repo_id=repo_id)
        broot.workdir = self.workdir
        broot.init()
        broot.build(fn, arch)
        resultdir = broot.resultdir()
        rpm_files = sorted(f for f in os.listdir(resultdir) if f.endswith(".rpm") and not f.endswith(".src.rpm"))
        srpm_files = sorted(f for f in os.listdir(resultdir) if f.endswith(".src.rpm"))
        uploadpath = broot.getUploadPath()
        for f in rpm_files:
            self.uploadFile("%s/%s" % (resultdir, f))
        if keep_srpm:
            for f in srpm_files:
                self.uploadFile("%s/%s" % (resultdir, f))
        ret['rpms'] = ["%s/%s" % (uploadpath, f) for f in rpm_files]
        ret['srpms'] = ["%s/%s" % (uploadpath, f) for f in srpm_files] if keep_srpm else []
        ret['logs'] = ["%s/%s" % (uploadpath, f) for f in sorted(broot.logs)]
        ret['brootid'] = broot.id
        broot.expire()
        return ret

"""A stand-in for the parts of kojid's __main__ (koji's builder/kojid) that the mkosi_initrd plugin
touches. kojid and mock cannot be installed here, so this mirrors, narrowly and with the same
signatures, BuildRoot (constructor via _new, init, build, mock, getPackageList with the payloadhash
check of mapInternalRPMs, rootdir, resultdir, tmpdir(within=), get_repo_dir, getUploadPath,
single_log, expire, _mockResult) and BuildArchTask, a real koji.tasks.BaseTaskHandler whose handler
looks BuildRoot up as a module global at call time, as kojid's does. Hub calls go through the real
koji.ClientSession; the mock config is the real koji.genMockConfig output.

mock() records each argv kojid would exec (including the isolation option kojid derives from the
build tag's `mock.new_chroot` extra) and hands it to tests/support/fake_mock.py, which does mock's
work in a real buildroot installed from the koji repository, under mock's simple or nspawn
isolation; its docstring lists how it follows mock and where it deviates.

Deviations from kojid, on purpose: the mock config goes to <mockdir>/koji/ instead of
/etc/mock/koji, mock runs as root rather than as kojid's mock user (the build user's uid is
options.fake_build_user), no rpm signing, no external repositories (markExternalRPMs asks the hub
and expects none), no log streaming (logs are files in resultdir, uploaded by nobody), no SRPM
sanity checks, no rpmdiff of noarch RPMs, no task weight.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
from pathlib import Path

import koji
import koji.tasks
import rpm
from koji.tasks import BaseTaskHandler
from koji.util import parseStatus

from tests.support.fake_mock import FakeMock, load_mock_config

logger = logging.getLogger("tests.fake_kojid")


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
        return load_mock_config(self._configfile)

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
        # everything after "-r <config>": the isolation options and kojid's arguments
        return _status(self._fake_mock(cmd[3:]))

    def _fake_mock(self, args: list) -> int:
        uid, gid = self.options.fake_build_user
        mock = FakeMock(self._mock_config(), Path(self.rootdir()), Path(self.resultdir()),
                        Path(self.options.mockdir) / self.name, build_uid=uid, build_gid=gid,
                        nspawn=getattr(self.options, "fake_nspawn", "systemd-nspawn"), log=self._log)
        return mock.run(args)

    def _log(self, name: str, text: str) -> None:
        with open(os.path.join(self.resultdir(), name), "a") as f:
            f.write(text)

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

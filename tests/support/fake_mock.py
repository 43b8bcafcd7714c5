"""A stand-in for mock (rpm-software-management/mock), for the fake kojid: mock cannot be installed on
the Debian machines this project is tested on. It does the work mock does for kojid's four calls,
in a real buildroot installed from the koji repository, with mock's two isolations. Read from mock's
source (mock.py, mockbuild/{config,util,mounts,buildroot,backend,shadow_utils}.py):

isolation       `--old-chroot` / `--isolation=simple`: the command runs under chroot(2) of the
                buildroot (util.ChildPreExec: setsid, umask 002, chroot, setregid/setreuid, chdir,
                a new IPC namespace). `--new-chroot` / `--isolation=nspawn`: it runs inside
                `systemd-nspawn -q -M <uuid> -D <root> -a -u <user> --capability=cap_ipc_lock
                --console=pipe --chdir=... --setenv=...` (util._prepare_nspawn_command). Neither:
                mock's `auto`, which is nspawn only when PID 1 is systemd owned by root
                (config.nspawn_supported), else simple.
mounts          simple isolation: mock's essential mounts (mounts.Mounts): a private tmpfs, then a
                recursive read-only nodev/noexec/nosuid bind of the host's /proc and /sys over it;
                a tmpfs on /dev/shm; a new devpts instance on /dev/pts. /dev itself holds the
                device nodes mock makes with mknod at --init (buildroot._setup_devices). nspawn
                isolation: nspawn sets up /proc, /sys and /dev itself. Nothing of the host is bound
                into the buildroot beyond these.
network         rpmbuild_networking is False in koji's mock configs. With nspawn, mock runs the
                build in a new network namespace with only `lo`, up, and a default route through
                it (util.condUnshareNet). With simple isolation, mock does NOT unshare the network
                (condUnshareNet acts only when nspawn is used), and neither does this stand-in.
name service     without use_host_resolv and rpmbuild_networking (koji's buildArch), --init writes an
                empty /etc/resolv.conf and an /etc/hosts naming localhost only, and nspawn gets
                --resolv-conf=off (buildroot._setup_resolver_config, util.temporary_nspawn_resolver_hack):
                a lookup of the container's host name then fails at once instead of waiting for a
                name server that the private network cannot reach (dnf looks its host name up).
build user      `mockbuild` in group `mock`, created with the HOST's `groupadd`/`useradd --prefix
                <root>` (config use_host_shadow_utils=True, shadow_utils.ShadowUtils), home
                /builddir with ~/.rpmmacros from the config's macros (buildroot._prepare_rpm_macros)
                and /builddir/build/{RPMS,SPECS,SRPMS,SOURCES,BUILD,BUILDROOT,originals}.
--init          removes the root, installs `chroot_setup_cmd` (koji: `install @build`) with the
                host's dnf into it (`dnf --installroot`, as mock does without a bootstrap chroot),
                makes the device nodes and the build user.
--installdeps   the host's dnf installs the SRPM's requires into the root.
--rebuild       the SRPM is copied into the root, installed by the build user with
                `rpm -Uvh --nodeps`, then `rpmbuild -bs --target A --nodeps` and
                `bash --login -c 'rpmbuild -bb --target A --nodeps SPEC'` run as the build user
                with mock's environment (config_opts['environment']); the RPMs and SRPM in
                /builddir/build/{RPMS,SRPMS} are copied to the result dir (backend.rebuild_package).
--chroot CMD    `/bin/sh -c CMD` as root inside the buildroot, with the same isolation.

Deviations, on purpose:
  - systemd-nspawn gets `--register=no --keep-unit`: systemd is not PID 1 on the test machines, so
    there is no machined to register with (mock itself would refuse nspawn there, see `auto`).
  - no bootstrap chroot: the host's dnf installs the buildroot, as mock does with
    use_bootstrap=False; dnf writes the rpmdb to /usr/lib/sysimage/rpm, as on Fedora, through a
    HOME/.rpmmacros setting %_dbpath (Debian's dnf would otherwise use <root>/root/.rpmdb).
  - the essential mounts live in a mount namespace of each command rather than of the whole mock
    run; they are gone when the command ends, as they are when mock ends.
  - no root cache, dnf cache or ccache bind mounts (koji's configs disable all three), no
    SELinux labelling, no rpmdb rebuild, no dynamic BuildRequires, no log streaming (build.log and
    root.log are plain files in the result dir), no personality/--target setarch.
  - the build user's supplementary groups are cleared; mock keeps the caller's, which kojid
    drops when it switches to its mock user.
"""

from __future__ import annotations

import ctypes
import dataclasses
import enum
import glob
import os
import shlex
import shutil
import stat
import subprocess
import uuid
from pathlib import Path
from typing import Callable, Optional

CHROOT_USER = "mockbuild"
CHROOT_GROUP = "mock"
HOME = "/builddir"
BUILD_DIRS = ("RPMS", "SPECS", "SRPMS", "SOURCES", "BUILD", "BUILDROOT", "originals")
HOST_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"
# mock's config_opts['environment'] (without the interactive prompt settings).
ENVIRONMENT = {
    "TERM": "vt100",
    "SHELL": "/bin/bash",
    "HOME": HOME,
    "HOSTNAME": "mock",
    "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
    "LANG": "C.UTF-8",
}
# buildroot._setup_devices: (mode, major, minor, path); a node is made only if the host has it.
DEVICES = (
    (stat.S_IFCHR | 0o666, 1, 3, "dev/null"),
    (stat.S_IFCHR | 0o666, 1, 7, "dev/full"),
    (stat.S_IFCHR | 0o666, 1, 5, "dev/zero"),
    (stat.S_IFCHR | 0o666, 1, 8, "dev/random"),
    (stat.S_IFCHR | 0o444, 1, 9, "dev/urandom"),
    (stat.S_IFCHR | 0o666, 5, 0, "dev/tty"),
    (stat.S_IFCHR | 0o600, 5, 1, "dev/console"),
    (stat.S_IFCHR | 0o666, 10, 229, "dev/fuse"),
)
DEV_SYMLINKS = (("dev/stdin", "/proc/self/fd/0"), ("dev/stdout", "/proc/self/fd/1"),
                ("dev/stderr", "/proc/self/fd/2"), ("dev/fd", "/proc/self/fd"), ("dev/ptmx", "pts/ptmx"))

# <linux/sched.h>, <sys/mount.h>
CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18


# buildroot._setup_resolver_config's /etc/hosts for a buildroot without the host's resolver.
DEFAULT_HOSTS = ("127.0.0.1 localhost localhost.localdomain\n"
                 "::1       localhost localhost.localdomain localhost6 localhost6.localdomain6\n")


class Isolation(enum.Enum):
    SIMPLE = "simple"
    NSPAWN = "nspawn"


def auto_isolation() -> Isolation:
    """mock's `auto` (config.nspawn_supported): nspawn only when PID 1 is systemd, owned by root."""
    try:
        with open("/proc/1/cmdline", "rb") as f:
            if os.fstat(f.fileno()).st_uid != 0:
                return Isolation.SIMPLE
            argv0 = f.read().split(b"\0")[0]
    except OSError:
        return Isolation.SIMPLE
    return Isolation.NSPAWN if os.path.basename(argv0) == b"systemd" else Isolation.SIMPLE


def parse_isolation(args: list[str]) -> tuple[Isolation, list[str]]:
    """Take the isolation options off mock's argv, as mock's option parser and config do."""
    rest, isolation = [], None
    for arg in args:
        if arg == "--old-chroot":
            isolation = Isolation.SIMPLE
        elif arg == "--new-chroot":
            isolation = Isolation.NSPAWN
        elif arg.startswith("--isolation="):
            value = arg.split("=", 1)[1]
            isolation = None if value == "auto" else Isolation(value)
        else:
            rest.append(arg)
    return isolation or auto_isolation(), rest


_libc = ctypes.CDLL(None, use_errno=True)  # python links libc


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: Optional[str], target: str, fstype: Optional[str], flags: int, data: Optional[str] = None) -> None:
    _check(_libc.mount(source and source.encode(), target.encode(), fstype and fstype.encode(), flags,
                       data and data.encode()), f"mount {source or ''} {target}")


def _essential_mounts(root: str) -> None:
    """mounts.Mounts' essential mounts, in the calling process's own (new) mount namespace."""
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    for name in ("proc", "sys"):
        target = os.path.join(root, name)
        _mount(f"mock_hide_{name}fs_from_host", target, "tmpfs", 0, "mode=0755")
        _mount(f"/{name}", target, None, MS_BIND | MS_REC)
        _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _mount("mock_chroot_shmfs", os.path.join(root, "dev/shm"), "tmpfs", 0)
    _mount("mock_chroot_devpts", os.path.join(root, "dev/pts"), "devpts", 0,
           "gid=5,mode=0620,ptmxmode=0666,newinstance")


@dataclasses.dataclass(frozen=True)
class ChrootCommand:
    """util.ChildPreExec for simple isolation: runs in the forked child before exec."""

    root: str
    uid: int
    gid: int
    cwd: str

    def __call__(self) -> None:
        try:
            self._enter()
        except BaseException as e:
            # subprocess reports only "Exception occurred in preexec_fn"; the log gets the cause.
            os.write(2, f"ERROR: entering the buildroot {self.root} failed: {e}\n".encode())
            raise

    def _enter(self) -> None:
        os.setsid()
        os.umask(0o002)
        _essential_mounts(self.root)
        os.chdir(self.root)
        os.chroot(self.root)
        if self.uid != 0:
            os.setgroups([self.gid])
            os.setregid(self.gid, self.gid)
            os.setreuid(self.uid, self.uid)
        os.chdir(self.cwd)
        # condUnshareIPC ignores a failure, which is what happens after the privileges are gone.
        _libc.unshare(CLONE_NEWIPC)


class MockError(RuntimeError):
    """A mock step failed; the message names the step, like mock's own error lines."""


class FakeMock:
    """One buildroot (`root`) with its result dir, driven by kojid's mock argv."""

    def __init__(self, config: dict, root: Path, resultdir: Path, mockdir: Path, *, build_uid: int,
                 build_gid: int, nspawn: str, log: Callable[[str, str], None]):
        self.config = config
        self.root = root
        self.resultdir = resultdir
        self.mockdir = mockdir
        self.uid = build_uid
        self.gid = build_gid
        self.nspawn = nspawn
        self.log = log  # (logfile name, text)
        self.isolation = Isolation.SIMPLE

    # --- entry point ---------------------------------------------------------------------

    def run(self, args: list[str]) -> int:
        self.isolation, args = parse_isolation(list(args))
        args = [a for a in args if a != "--bootstrap-image-ready"]  # no bootstrap chroot here
        self.log("root.log", f"INFO: isolation: {self.isolation.value}\n")
        target = None
        args = [a for a in args if a != "--no-clean"]
        if "--target" in args:
            i = args.index("--target")
            target = args[i + 1]
            del args[i:i + 2]
        try:
            if args == ["--init"]:
                return self.init()
            if len(args) == 2 and args[0] == "--chroot":
                return self.chroot_shell(args[1])
            if len(args) == 2 and args[0] == "--installdeps":
                return self.installdeps(args[1])
            if len(args) == 2 and args[0] == "--rebuild":
                return self.rebuild(args[1], target or self.config.get("target_arch", "x86_64"))
        except MockError as e:
            self.log("root.log", f"ERROR: {e}\n")
            return 20  # exception.RootError
        self.log("root.log", f"ERROR: fake mock: {args} is not mirrored\n")
        return 5

    # --- running commands ----------------------------------------------------------------

    def _host(self, argv: list, logname: str, env: Optional[dict] = None) -> int:
        self.log(logname, f"DEBUG: Executing command: {shlex.join(map(str, argv))}\n")
        with open(self.resultdir / logname, "ab") as out:
            return subprocess.run([str(a) for a in argv], stdout=out, stderr=subprocess.STDOUT, env=env,
                                  stdin=subprocess.DEVNULL).returncode

    def in_root(self, command: list[str], logname: str, *, user: bool, cwd: str = HOME,
                private_network: bool = True) -> int:
        """Run `command` inside the buildroot as mock does (doChroot)."""
        uid, gid = (self.uid, self.gid) if user else (0, 0)
        env = dict(ENVIRONMENT)
        self.log(logname, f"DEBUG: Executing command: {shlex.join(command)} ({self.isolation.value}, "
                          f"uid={uid})\n")
        with open(self.resultdir / logname, "ab") as out:
            if self.isolation is Isolation.SIMPLE:
                return subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, executable=None,
                                      preexec_fn=ChrootCommand(str(self.root), uid, gid, cwd),
                                      cwd="/").returncode
            argv = [self.nspawn, "-q", "-M", uuid.uuid4().hex, "-D", str(self.root), "-a",
                    "--register=no", "--keep-unit"]
            if user:
                argv += ["-u", CHROOT_USER]
            argv += ["--capability=cap_ipc_lock", "--console=pipe", f"--chdir={cwd}", "--resolv-conf=off"]
            argv += [f"--setenv={k}={v}" for k, v in env.items()]
            argv += command
            host_env = {"PATH": HOST_PATH, "SYSTEMD_NSPAWN_TMPFS_TMP": "0"}
            if private_network:
                # condUnshareNet: a new network namespace, lo up, a default route through it.
                argv = ["unshare", "--net", "--", "/bin/sh", "-c",
                        "ip link set lo up && ip route add default via 127.0.0.1 dev lo && exec \"$@\"",
                        "sh", *argv]
            return subprocess.run(argv, env=host_env, stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True).returncode

    def _dnf(self, *args: str) -> int:
        home = self.mockdir / "dnf-home"
        home.mkdir(parents=True, exist_ok=True)
        (home / ".rpmmacros").write_text("%_dbpath /usr/lib/sysimage/rpm\n")
        argv = ["dnf", "--installroot", self.root, "--config", self.root / "etc/dnf/dnf.conf",
                "--releasever", "koji", "--disableplugin=*", "-y", *args]
        return self._host(argv, "root.log", env={"HOME": str(home), "PATH": HOST_PATH, "LC_ALL": "C"})

    # --- the four calls kojid makes --------------------------------------------------------

    def init(self) -> int:
        shutil.rmtree(self.root, ignore_errors=True)
        (self.root / "etc/dnf").mkdir(parents=True)
        (self.root / "etc/dnf/dnf.conf").write_text(self.config["yum.conf"])
        if self._dnf(*shlex.split(self.config["chroot_setup_cmd"])):
            return 30  # exception.YumError
        self._setup_resolver_config()
        self._setup_devices()
        self._make_build_user()
        return 0

    def _setup_resolver_config(self) -> None:
        etc = self.root / "etc"
        if self.config.get("use_host_resolv") and self.config.get("rpmbuild_networking"):
            for name in ("resolv.conf", "hosts"):
                shutil.copyfile(Path("/etc") / name, etc / name)
            return
        # mock puts its default in config['files'] unless the config names an etc/hosts of its own,
        # and writes config['files'] into the root: either way the root gets exactly one of them.
        (etc / "hosts").write_text((self.config.get("files") or {}).get("etc/hosts", DEFAULT_HOSTS))
        (etc / "resolv.conf").unlink(missing_ok=True)
        (etc / "resolv.conf").touch()

    def _setup_devices(self) -> None:
        dev = self.root / "dev"
        shutil.rmtree(dev, ignore_errors=True)
        for sub in ("pts", "shm", "mapper"):
            (dev / sub).mkdir(parents=True, exist_ok=True)
        old = os.umask(0)
        try:
            for mode, major, minor, path in DEVICES:
                if os.path.exists("/" + path):
                    os.mknod(self.root / path, mode, os.makedev(major, minor))
        finally:
            os.umask(old)
        for link, target in DEV_SYMLINKS:
            os.symlink(target, self.root / link)

    def _make_build_user(self) -> None:
        """ShadowUtils with use_host_shadow_utils: the host's tools edit the buildroot's files."""
        prefix = ["--prefix", str(self.root)]
        for argv in (["groupdel", CHROOT_GROUP, *prefix], ["userdel", "-f", CHROOT_USER, *prefix]):
            self._host(argv, "root.log")  # may fail: nothing to delete
        for argv in (["groupadd", CHROOT_GROUP, "-g", str(self.gid), *prefix],
                     ["useradd", CHROOT_USER, "-o", "-u", str(self.uid), "-g", str(self.gid), "-N",
                      "-d", HOME, *prefix]):
            if self._host(argv, "root.log"):
                raise MockError(f"{argv[0]} {CHROOT_USER}/{CHROOT_GROUP} in {self.root} failed (see root.log)")
        home = self.root / HOME.lstrip("/")
        for path in [home, *(home / "build" / d for d in BUILD_DIRS)]:
            path.mkdir(parents=True, exist_ok=True)
        (home / ".rpmmacros").write_text("".join(f"{k} {v}\n" for k, v in self.config["macros"].items()))
        for path in [home, home / "build", *home.joinpath("build").iterdir(), home / ".rpmmacros"]:
            os.chown(path, self.uid, self.gid)

    def chroot_shell(self, command: str) -> int:
        return self.in_root(["/bin/sh", "-c", command], "root.log", user=False, cwd="/")

    def installdeps(self, srpm: str) -> int:
        out = subprocess.run(["rpm", "-qp", "--nosignature", "--requires", srpm], stdout=subprocess.PIPE,
                             text=True, check=True).stdout
        requires = [r.strip() for r in out.splitlines() if r.strip() and not r.startswith("rpmlib(")]
        if requires and self._dnf("install", *requires):
            return 30  # exception.YumError
        return 0

    def rebuild(self, srpm: str, target: str) -> int:
        build = self.root / HOME.lstrip("/") / "build"
        for d in BUILD_DIRS:
            for f in (build / d).glob("*"):
                if f.is_file():
                    f.unlink()
        inside = f"{HOME}/build/originals/{os.path.basename(srpm)}"
        shutil.copy(srpm, self.root / inside.lstrip("/"))
        os.chown(self.root / inside.lstrip("/"), self.uid, self.gid)
        rc = self.in_root(["rpm", "-Uvh", "--nodeps", inside], "build.log", user=True)
        if rc:
            return rc
        specs = sorted(glob.glob(str(build / "SPECS" / "*.spec")))
        if len(specs) != 1:
            self.log("build.log", f"ERROR: expected one spec in {HOME}/build/SPECS, found {len(specs)}\n")
            return 1
        spec = f"{HOME}/build/SPECS/{os.path.basename(specs[0])}"
        rc = self.in_root(["bash", "--login", "-c", f"rpmbuild -bs --target {target} --nodeps {spec}"],
                          "build.log", user=True)
        if rc:
            return rc
        rc = self.in_root(["bash", "--login", "-c", f"rpmbuild -bb --target {target} --nodeps {spec}"],
                          "build.log", user=True)
        for built in [*build.glob("RPMS/*.rpm"), *build.glob("RPMS/*/*.rpm"), *build.glob("SRPMS/*.rpm")]:
            shutil.copy(built, self.resultdir)
        # doChroot raises exception.Error carrying rpmbuild's exit status, and mock exits with it.
        return rc


def load_mock_config(path: Path) -> dict:
    """mock reads its configuration as Python; so does this stand-in."""
    import collections

    config_opts: dict = collections.defaultdict(dict)
    exec(compile(path.read_text(), str(path), "exec"), {"config_opts": config_opts})  # noqa: S102
    return config_opts



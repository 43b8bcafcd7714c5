"""An NFS server on this machine for the NFS-root cases: a root tree exported by nfs-ganesha, a
userspace server from Debian's packages (the container has no kernel nfsd).

It listens on 127.0.0.1 only. The guest reaches it through QEMU's user networking, whose gateway
address (disks.NFS_SERVER) is this machine's loopback, so no traffic leaves the machine. The ports
are unprivileged and fixed (disks.NFS_PORT, NFS_MOUNT_PORT), and the guest names them in its mount
options (disks.NFS_OPTIONS), so it needs no portmapper. ganesha itself refuses to start NFSv3 unless
it can register with rpcbind; for v3 an rpcbind is started too, unless one is already listening.
Both versions mount the same path (the export's pseudo path: Mount_Path_Pseudo).
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from .disks import NFS_EXPORT, NFS_MOUNT_PORT, NFS_PORT, make_root_tree

START_TIMEOUT = 60.0
# Host tools and the Debian packages that carry them.
SERVER_PACKAGES = {"ganesha.nfsd": "nfs-ganesha nfs-ganesha-vfs", "rpcbind": "rpcbind"}

GANESHA_CONF = """\
NFS_CORE_PARAM {{
    Bind_addr = 127.0.0.1;
    NFS_Port = {nfs_port};
    MNT_Port = {mount_port};
    NLM_Port = {nlm_port};
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Protocols = {protocols};
    Mount_Path_Pseudo = true;
}}
NFSV4 {{
    Graceless = true;
    RecoveryBackend = fs;
    RecoveryRoot = {state}/v4recov;
    RecoveryOldDir = {state}/v4old;
}}
NFS_KRB5 {{ Active_krb5 = false; }}
EXPORT {{
    Export_Id = 1;
    Path = {path};
    Pseudo = {pseudo};
    Access_Type = RW;
    Squash = No_Root_Squash;
    SecType = sys;
    Protocols = {protocols};
    Transports = TCP;
    FSAL {{ Name = VFS; }}
}}
"""


@dataclasses.dataclass(frozen=True)
class NfsExport:
    """What a guest needs to mount the exported root."""

    path: Path           # the exported directory on this machine
    nfs_port: int
    mount_port: int
    versions: tuple[str, ...]


def server_tools() -> dict[str, str]:
    """The host tools the server needs that are missing, each with the Debian packages to install."""
    return {tool: pkgs for tool, pkgs in SERVER_PACKAGES.items()
            if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists()}


def _tool(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait_listening(port: int, proc: subprocess.Popen, what: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not _listening(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"{what} is not listening on 127.0.0.1:{port}; log tail:\n{tail}")
        time.sleep(0.2)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def make_nfs_root(dest: Path, case: str, busybox: Path) -> Path:
    """A root tree like the disks' roots, marked with `case`."""
    make_root_tree(dest, busybox)
    (dest / "etc/realcontent-case").write_text(case + "\n")
    return dest


@contextlib.contextmanager
def nfs_server(root: Path, *, nfs_port: int = NFS_PORT, mount_port: int = NFS_MOUNT_PORT, nlm_port: int = 20049,
               versions: tuple[str, ...] = ("3", "4")) -> Iterator[NfsExport]:
    """Export `root` read-write (no root squash) while the block runs."""
    if missing := server_tools():
        raise RuntimeError("NFS server tools missing: " + ", ".join(missing)
                           + " (apt-get install " + " ".join(sorted(set(missing.values()))) + ")")
    with tempfile.TemporaryDirectory(prefix="realcontent-nfs-") as tmp, contextlib.ExitStack() as stack:
        state = Path(tmp)
        protocols = ", ".join("3" if v == "3" else "4" for v in versions)
        (state / "ganesha.conf").write_text(GANESHA_CONF.format(
            nfs_port=nfs_port, mount_port=mount_port, nlm_port=nlm_port, protocols=protocols,
            state=state, path=root.resolve(), pseudo=NFS_EXPORT))
        if "3" in versions and not _listening(111):
            rpcbind = subprocess.Popen([_tool("rpcbind"), "-f", "-w"], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, start_new_session=True)
            stack.callback(_stop, rpcbind)
            _wait_listening(111, rpcbind, "rpcbind", state / "none")
        log = state / "ganesha.log"
        ganesha = subprocess.Popen([_tool("ganesha.nfsd"), "-F", "-f", str(state / "ganesha.conf"),
                                    "-L", str(log), "-p", str(state / "ganesha.pid"), "-N", "NIV_EVENT"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        stack.callback(_stop, ganesha)
        _wait_listening(nfs_port, ganesha, "ganesha.nfsd", log)
        if "3" in versions:
            _wait_listening(mount_port, ganesha, "ganesha.nfsd (MOUNT)", log)
        yield NfsExport(root, nfs_port, mount_port, versions)


"""Can mkosi's sandbox start here? mkosi builds every image inside namespaces it creates itself: an
unprivileged caller needs a user namespace, root needs a mount namespace in which `/` can be made a
slave mount. A chroot refuses both (the kernel denies CLONE_NEWUSER to a process whose root is not
its mount namespace's root, and `/` of a chroot is usually not a mount point), which is what mock's
simple isolation is. The check runs before any work so the failure is one line that names the fix,
instead of a Python traceback from deep inside mkosi after the repository was read.
"""

from __future__ import annotations

import ctypes
import errno
import os

from mkosi_initrd_builder.util.errors import SandboxUnavailableError

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_REC = 16384
MS_SLAVE = 1 << 19

KOJI_HINT = ("in koji, build under mock's nspawn isolation: `koji edit-tag TAG -x mock.new_chroot=True`, "
             "or the mkosi_initrd kojid plugin's `isolation = nspawn`; with mock, --isolation=nspawn")


def _probe(as_root: bool) -> int:
    """In a forked child (namespaces are per process and must not touch ours): 0 or the errno."""
    libc = ctypes.CDLL(None, use_errno=True)  # the process already links libc
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 0
        try:
            if as_root:
                if libc.unshare(CLONE_NEWNS) != 0 or libc.mount(None, b"/", None, MS_REC | MS_SLAVE, None) != 0:
                    code = ctypes.get_errno() or errno.EPERM
            elif libc.unshare(CLONE_NEWUSER) != 0:
                code = ctypes.get_errno() or errno.EPERM
        finally:
            os._exit(min(code, 255))
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def check_sandbox() -> None:
    """Raise SandboxUnavailableError when mkosi's sandbox cannot start in this process's context."""
    as_root = os.geteuid() == 0
    code = _probe(as_root)
    if code == 0:
        return
    if as_root:
        what = "unshare(CLONE_NEWNS) and making / a slave mount"
    else:
        what = "unshare(CLONE_NEWUSER)"
    reason = os.strerror(code) if 0 < code < 255 else f"status {code}"
    raise SandboxUnavailableError(
        f"mkosi cannot create its sandbox here: {what} failed: {reason} "
        "(a chroot, such as mock's simple isolation, refuses it)",
        hint=KOJI_HINT,
    )

"""The one wrapper through which every external command runs: it logs the argv and raises a typed error."""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import shlex
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Optional, Union

from mkosi_initrd_builder.util.errors import CommandError, ToolMissingError

logger = logging.getLogger("mkosi_initrd_builder.util.run")

# Children running right now, so an interrupted build can stop them (variants build in threads,
# and only the main thread sees SIGINT).
_children: set[subprocess.Popen] = set()
_children_lock = threading.Lock()


def terminate_children(grace: float = 5.0) -> None:
    """Stop every command still running: SIGTERM, then SIGKILL after `grace` seconds."""
    with _children_lock:
        procs = list(_children)
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()

PathLike = Union[str, os.PathLike]
TAIL_LINES = 25


def run(
    argv: Sequence[PathLike],
    *,
    env: Optional[Mapping[str, str]] = None,
    cwd: Optional[PathLike] = None,
    input: Optional[bytes] = None,
    capture: bool = False,
    timeout: Optional[float] = None,
    log_output: Optional[Path] = None,
) -> subprocess.CompletedProcess:
    """Run argv, logging it first.

    With capture=True stdout is returned (bytes) and stderr kept for the error message; otherwise
    stdout and stderr are merged, logged at debug level (and appended to `log_output` when given),
    and the last lines are kept for the error message. A missing program raises ToolMissingError;
    a non-zero exit raises CommandError.
    """
    args = [os.fspath(a) for a in argv]
    logger.info("+ %s", shlex.join(args))
    full_env = None
    if env is not None:
        full_env = dict(os.environ)
        full_env.update(env)
    start = time.monotonic()
    try:
        if capture:
            proc = subprocess.run(
                args, env=full_env, cwd=cwd, input=input, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, timeout=timeout,
            )
            if proc.returncode != 0:
                tail = "\n".join(proc.stderr.decode(errors="replace").splitlines()[-TAIL_LINES:])
                raise CommandError(args, proc.returncode, tail)
            return proc
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        proc = subprocess.Popen(
            args, env=full_env, cwd=cwd, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        with _children_lock:
            _children.add(proc)
        try:
            with proc, (open(log_output, "ab") if log_output else contextlib.nullcontext()) as logfile:
                if input is not None:
                    assert proc.stdin
                    proc.stdin.write(input)
                    proc.stdin.close()
                assert proc.stdout
                deadline = None if timeout is None else start + timeout
                for raw in proc.stdout:
                    if logfile:
                        logfile.write(raw)
                    line = raw.decode(errors="replace").rstrip("\n")
                    tail.append(line)
                    logger.debug("  %s", line)
                    if deadline is not None and time.monotonic() > deadline:
                        proc.kill()
                        raise subprocess.TimeoutExpired(args, timeout or 0)
                returncode = proc.wait()
        except BaseException:
            if proc.poll() is None:
                proc.kill()
            raise
        finally:
            with _children_lock:
                _children.discard(proc)
        if returncode != 0:
            raise CommandError(args, returncode, "\n".join(tail))
        return subprocess.CompletedProcess(args, returncode)
    except FileNotFoundError as e:
        if e.filename in (args[0], None):
            raise ToolMissingError(args[0]) from e
        raise
    except subprocess.TimeoutExpired as e:
        raise CommandError(args, -1, f"timed out after {timeout}s") from e
    finally:
        logger.debug("  (%s took %.2fs)", Path(args[0]).name, time.monotonic() - start)

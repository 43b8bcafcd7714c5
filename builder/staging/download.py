"""HTTP downloads for staging: keep-alive connections per thread, bounded retries with backoff, a
bound on the whole time a file may take, and errors that name the URL. Only GET of whole files;
redirects are not followed (a repository that redirects elsewhere is refused, not trusted).

Hand-written on http.client rather than requests + urllib3's Retry: measured side by side in cold
staging (ARCHITECTURE.md, "Libraries and hand-written code"), and neither library bounds the total
time of a body or stops a blocked read from another thread, which is most of what is here."""

from __future__ import annotations

import dataclasses
import http.client
import io
import logging
import socket
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO, Optional
from urllib.parse import urlsplit

from mkosi_initrd_builder import __version__
from mkosi_initrd_builder.util.errors import FetchError
from mkosi_initrd_builder.util.fsutil import Digests
from mkosi_initrd_builder.util.urls import redact

logger = logging.getLogger("mkosi_initrd_builder.staging.download")

USER_AGENT = f"mkosi-initrd-build/{__version__}"
# The most one read takes. read1() returns what has arrived, so this bounds a read, not a wait: on a
# fast link 1 MiB takes what queued up in one trip through the interpreter (cold staging of 500
# over loopback, 8 alternating rounds: 0.96 s with 64 KiB, 0.90 s with 1 MiB).
CHUNK = 1 << 20
# Statuses worth another try: the server or a proxy is busy or failing for now.
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4       # tries per file, the first one included
    backoff: float = 0.5    # seconds before the second try; doubles for each further one
    timeout: float = 60.0   # seconds for connecting and for each read
    # seconds one file may take in all, its tries and their pauses included: a server that trickles
    # a byte now and then never trips the per-read timeout
    file_timeout: float = 900.0

    @property
    def lock_timeout(self) -> float:
        """How long to wait for another staging that is fetching the same file into the cache: its
        own bound on that file, and one more read."""
        return self.file_timeout + self.timeout

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed try number `attempt` (1-based)."""
        return self.backoff * (2 ** (attempt - 1))


@dataclasses.dataclass(frozen=True)
class Download:
    size: int
    digests: dict[str, str]  # algorithm -> hex digest of the bytes received
    attempts: int


class Interrupted(Exception):
    """The download was stopped because the staging it belongs to is being abandoned."""


class _Retryable(Exception):
    def __init__(self, reason: str, status: Optional[int] = None) -> None:
        super().__init__(reason)
        self.status = status


class _Permanent(Exception):
    def __init__(self, reason: str, status: Optional[int] = None) -> None:
        super().__init__(reason)
        self.status = status


class _LocalWrite(Exception):
    """Writing what was received failed: a local problem (a full disk), never retried as a network one."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class HttpClient:
    """GET files with bounded retries. Thread-safe: each thread keeps its own connections."""

    def __init__(self, policy: RetryPolicy = RetryPolicy(), *, stop: Optional[threading.Event] = None) -> None:
        self.policy = policy
        self.stop = stop or threading.Event()
        self._local = threading.local()
        self._opened: list[http.client.HTTPConnection] = []
        self._opened_lock = threading.Lock()
        # Sockets a body is being read from. Not conn.sock: http.client hands the socket to the
        # response and forgets it when the server says Connection: close.
        self._reading: set[socket.socket] = set()

    def _connection(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        conns = self._local.__dict__.setdefault("conns", {})
        key = (scheme, netloc)
        if key not in conns:
            cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
            conns[key] = cls(netloc, timeout=self.policy.timeout)
            with self._opened_lock:
                self._opened.append(conns[key])
        return conns[key]

    def _drop(self, scheme: str, netloc: str) -> None:
        conn = self._local.__dict__.get("conns", {}).pop((scheme, netloc), None)
        if conn is not None:
            conn.close()

    def abort(self) -> None:
        """Stop every download now, from any thread: a read blocked in another thread returns at once
        (its socket is shut down) instead of when the server next sends or the timeout passes."""
        self.stop.set()
        with self._opened_lock:
            sockets = {conn.sock for conn in self._opened if conn.sock is not None} | self._reading
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # not connected (any more)

    def close(self) -> None:
        """Close every connection any thread opened (call when no download is running)."""
        with self._opened_lock:
            opened, self._opened = self._opened, []
        for conn in opened:
            conn.close()

    def _attempt(self, url: str, out: BinaryIO, digests: Digests, deadline: float, max_bytes: Optional[int]) -> int:
        u = urlsplit(url)
        target = (u.path or "/") + (f"?{u.query}" if u.query else "")
        conn = self._connection(u.scheme, u.netloc)
        conn.timeout = self._read_timeout(deadline)
        if conn.sock is not None:
            conn.sock.settimeout(conn.timeout)
        sock: Optional[socket.socket] = None
        try:
            conn.request("GET", target, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
            sock = conn.sock
            assert sock is not None  # request() connected it
            with self._opened_lock:
                self._reading.add(sock)
            return self._response(url, conn, sock, u.scheme, u.netloc, out, digests, deadline, max_bytes)
        except (OSError, http.client.HTTPException) as e:
            self._drop(u.scheme, u.netloc)
            self._check_stop_and_deadline(url, deadline)
            raise _Retryable(f"connection failed: {e or type(e).__name__}") from None
        finally:
            if sock is not None:
                with self._opened_lock:
                    self._reading.discard(sock)

    def _response(self, url: str, conn: http.client.HTTPConnection, sock: socket.socket, scheme: str, netloc: str,
                  out: BinaryIO, digests: Digests, deadline: float, max_bytes: Optional[int]) -> int:
        try:
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            self._drop(scheme, netloc)
            self._check_stop_and_deadline(url, deadline)
            raise _Retryable(f"connection failed: {e or type(e).__name__}") from None
        if resp.status != 200:
            self._drop(scheme, netloc)
            reason = f"HTTP {resp.status} {resp.reason}".rstrip()
            if resp.status in RETRYABLE_STATUS:
                raise _Retryable(reason, resp.status)
            if 300 <= resp.status < 400:
                reason += f" (redirect to {resp.getheader('Location')!r} not followed)"
            raise _Permanent(reason, resp.status)
        try:
            length = _content_length(resp.getheader("Content-Length"))
            if length is not None and max_bytes is not None and length > max_bytes:
                raise _Permanent(f"the server announces {length:,} bytes, more than the {max_bytes:,} expected")
        except _Permanent:
            self._drop(scheme, netloc)
            raise
        received = 0
        try:
            while True:
                self._check_stop_and_deadline(url, deadline)
                sock.settimeout(self._read_timeout(deadline))
                # read1: whatever has arrived (at least a byte), so a trickling server meets the
                # deadline check above between its bytes instead of filling a whole chunk first.
                chunk = resp.read1(CHUNK)
                if not chunk:
                    break
                received += len(chunk)
                if max_bytes is not None and received > max_bytes:
                    raise _Permanent(f"the body is longer than the {max_bytes:,} bytes expected")
                try:
                    out.write(chunk)
                except OSError as e:
                    raise _LocalWrite(e) from None
                digests.update(chunk)
        except (OSError, http.client.HTTPException) as e:
            self._drop(scheme, netloc)
            self._check_stop_and_deadline(url, deadline)
            raise _Retryable(f"transfer broken after {received} bytes: {type(e).__name__}") from None
        except BaseException:
            self._drop(scheme, netloc)
            raise
        if self.stop.is_set():
            raise Interrupted(url)  # the socket was shut down under the read: what came is not the file
        if length is not None and received != length:
            self._drop(scheme, netloc)
            raise _Retryable(f"truncated: received {received} of {length} bytes")
        # read1() leaves a response whose body has been read in full open; the connection takes its
        # next request only once the response is closed.
        resp.close()
        if resp.will_close:
            self._drop(scheme, netloc)
        return received

    def _read_timeout(self, deadline: float) -> float:
        return max(min(self.policy.timeout, deadline - time.monotonic()), 0.001)

    def _check_stop_and_deadline(self, url: str, deadline: float) -> None:
        if self.stop.is_set():
            raise Interrupted(url)
        if time.monotonic() >= deadline:
            raise _Permanent(f"not complete after {self.policy.file_timeout:g}s, the limit for one file")

    def download(self, url: str, out: BinaryIO, *, algorithms: Iterable[str] = (),
                 package: Optional[str] = None, max_bytes: Optional[int] = None) -> Download:
        """Write the body of `url` to `out` (rewound for each try); FetchError after the bounded retries,
        or once the file has taken the policy's file_timeout; Interrupted once `stop` is set.

        404 and other client errors are final at once: retrying cannot make a missing file appear.
        A body longer than `max_bytes` is refused without being read to its end.
        """
        deadline = time.monotonic() + self.policy.file_timeout
        algorithms = list(algorithms)
        last = ""
        status: Optional[int] = None
        for attempt in range(1, self.policy.attempts + 1):
            if out.tell():
                # Only after a failed try: truncating a new file makes ext4 flush it when it is closed.
                out.seek(0)
                out.truncate()
            digests = Digests(algorithms)
            try:
                size = self._attempt(url, out, digests, deadline, max_bytes)
                return Download(size, digests.hexdigests(), attempt)
            except _Permanent as e:
                raise FetchError(url, str(e), package=package, attempts=attempt, status=e.status) from None
            except _LocalWrite as e:
                # The disk, not the server: the caller names the directory; another try would fail alike.
                if e.error.filename is None:
                    e.error.filename = getattr(out, "name", None)
                raise e.error from None
            except _Retryable as e:
                last, status = str(e), e.status
                if attempt < self.policy.attempts:
                    delay = min(self.policy.delay(attempt), max(deadline - time.monotonic(), 0))
                    logger.warning("%s: %s; retrying in %.1fs (try %d of %d)", redact(url), last, delay, attempt + 1,
                                   self.policy.attempts)
                    if self.stop.wait(delay):
                        raise Interrupted(url) from None
        raise FetchError(url, last, package=package, attempts=self.policy.attempts, status=status)

    def download_file(self, url: str, path: Path, *, algorithms: Iterable[str] = (),
                      package: Optional[str] = None, max_bytes: Optional[int] = None) -> Download:
        with open(path, "wb") as out:
            return self.download(url, out, algorithms=algorithms, package=package, max_bytes=max_bytes)

    def get_bytes(self, url: str, *, max_bytes: int, missing_ok: bool = False) -> Optional[bytes]:
        """The body of a small file (metadata), refused past `max_bytes`; None for a 404 when `missing_ok`."""
        buf = io.BytesIO()
        try:
            self.download(url, buf, max_bytes=max_bytes)
        except FetchError as e:
            if missing_ok and e.status == 404:
                return None
            raise
        return buf.getvalue()


def _content_length(value: Optional[str]) -> Optional[int]:
    if value is None:
        return None
    if not value.strip().isdigit():
        raise _Permanent(f"the server sent a malformed Content-Length ({value!r})")
    return int(value)

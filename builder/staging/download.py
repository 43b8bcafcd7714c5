"""HTTP downloads for staging: keep-alive connections per thread, bounded retries with backoff, and
errors that name the URL. Only GET of whole files; redirects are not followed (a repository that
redirects elsewhere is refused, not trusted)."""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import io
import logging
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO, Optional
from urllib.parse import urlsplit

from mkosi_initrd_builder import __version__
from mkosi_initrd_builder.util.errors import FetchError

logger = logging.getLogger("mkosi_initrd_builder.staging.download")

USER_AGENT = f"mkosi-initrd-build/{__version__}"
CHUNK = 1 << 16
# Statuses worth another try: the server or a proxy is busy or failing for now.
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4       # tries per file, the first one included
    backoff: float = 0.5    # seconds before the second try; doubles for each further one
    timeout: float = 60.0   # seconds for connecting and for each read

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
    def __init__(self, reason: str, status: int) -> None:
        super().__init__(reason)
        self.status = status


class HttpClient:
    """GET files with bounded retries. Thread-safe: each thread keeps its own connections."""

    def __init__(self, policy: RetryPolicy = RetryPolicy(), *, stop: Optional[threading.Event] = None) -> None:
        self.policy = policy
        self.stop = stop or threading.Event()
        self._local = threading.local()
        self._opened: list[http.client.HTTPConnection] = []
        self._opened_lock = threading.Lock()

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

    def close(self) -> None:
        """Close every connection any thread opened (call when no download is running)."""
        with self._opened_lock:
            opened, self._opened = self._opened, []
        for conn in opened:
            conn.close()

    def _attempt(self, url: str, out: BinaryIO, hashers: dict[str, "hashlib._Hash"]) -> int:
        u = urlsplit(url)
        target = (u.path or "/") + (f"?{u.query}" if u.query else "")
        conn = self._connection(u.scheme, u.netloc)
        try:
            conn.request("GET", target, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            self._drop(u.scheme, u.netloc)
            raise _Retryable(f"connection failed: {e or type(e).__name__}") from None
        if resp.status != 200:
            self._drop(u.scheme, u.netloc)
            reason = f"HTTP {resp.status} {resp.reason}".rstrip()
            if resp.status in RETRYABLE_STATUS:
                raise _Retryable(reason, resp.status)
            if 300 <= resp.status < 400:
                reason += f" (redirect to {resp.getheader('Location')!r} not followed)"
            raise _Permanent(reason, resp.status)
        length = resp.getheader("Content-Length")
        received = 0
        try:
            while True:
                if self.stop.is_set():
                    self._drop(u.scheme, u.netloc)
                    raise Interrupted(url)
                chunk = resp.read(CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                for h in hashers.values():
                    h.update(chunk)
                received += len(chunk)
        except (OSError, http.client.HTTPException) as e:
            self._drop(u.scheme, u.netloc)
            raise _Retryable(f"transfer broken after {received} bytes: {type(e).__name__}") from None
        if length is not None and received != int(length):
            self._drop(u.scheme, u.netloc)
            raise _Retryable(f"truncated: received {received} of {length} bytes")
        if resp.will_close:
            self._drop(u.scheme, u.netloc)
        return received

    def download(self, url: str, out: BinaryIO, *, algorithms: Iterable[str] = (),
                 package: Optional[str] = None) -> Download:
        """Write the body of `url` to `out` (rewound for each try); FetchError after the bounded retries.

        404 and other client errors are final at once: retrying cannot make a missing file appear.
        """
        last = ""
        status: Optional[int] = None
        for attempt in range(1, self.policy.attempts + 1):
            out.seek(0)
            out.truncate()
            hashers = {a: hashlib.new(a) for a in algorithms}
            try:
                size = self._attempt(url, out, hashers)
                return Download(size, {a: h.hexdigest() for a, h in hashers.items()}, attempt)
            except _Permanent as e:
                raise FetchError(url, str(e), package=package, attempts=attempt, status=e.status) from None
            except _Retryable as e:
                last, status = str(e), e.status
                if attempt < self.policy.attempts:
                    delay = self.policy.delay(attempt)
                    logger.warning("%s: %s; retrying in %.1fs (try %d of %d)", url, last, delay, attempt + 1,
                                   self.policy.attempts)
                    if self.stop.wait(delay):
                        raise Interrupted(url) from None
        raise FetchError(url, last, package=package, attempts=self.policy.attempts, status=status)

    def download_file(self, url: str, path: Path, *, algorithms: Iterable[str] = (),
                      package: Optional[str] = None) -> Download:
        with open(path, "wb") as out:
            return self.download(url, out, algorithms=algorithms, package=package)

    def get_bytes(self, url: str, *, missing_ok: bool = False) -> Optional[bytes]:
        """The body of a small file (metadata); None for a 404 when `missing_ok`."""
        buf = io.BytesIO()
        try:
            self.download(url, buf)
        except FetchError as e:
            if missing_ok and e.status == 404:
                return None
            raise
        return buf.getvalue()

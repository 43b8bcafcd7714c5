"""The library alternative to staging/download.py's HttpClient, for the side-by-side measurement in
staging_bench: requests with urllib3's Retry, one Session per thread, the same interface (what
stage_repository() calls). Retry covers connections and statuses; a body broken halfway is retried
by the loop here, as urllib3 does not retry what it has started to stream."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable
from typing import BinaryIO, Optional

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from mkosi_initrd_builder.staging.download import CHUNK, RETRYABLE_STATUS, Download, HttpClient, Interrupted, RetryPolicy
from mkosi_initrd_builder.util.errors import FetchError


class RequestsHttpClient:
    def __init__(self, policy: RetryPolicy = RetryPolicy(), *, stop: Optional[threading.Event] = None) -> None:
        self.policy = policy
        self.stop = stop or threading.Event()
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            retry = Retry(total=self.policy.attempts - 1, backoff_factor=self.policy.backoff,
                          status_forcelist=sorted(RETRYABLE_STATUS), allowed_methods=["GET"], redirect=0,
                          raise_on_status=False)
            session.mount("http://", HTTPAdapter(max_retries=retry))
            session.mount("https://", HTTPAdapter(max_retries=retry))
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def abort(self) -> None:
        self.stop.set()

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for s in sessions:
            s.close()

    def download(self, url: str, out: BinaryIO, *, algorithms: Iterable[str] = (), package: Optional[str] = None,
                 max_bytes: Optional[int] = None) -> Download:
        algorithms = list(algorithms)
        last = ""
        for attempt in range(1, self.policy.attempts + 1):
            out.seek(0)
            out.truncate()
            hashers = {a: hashlib.new(a) for a in algorithms}
            try:
                with self._session().get(url, stream=True, allow_redirects=False, timeout=self.policy.timeout,
                                         headers={"Accept-Encoding": "identity"}) as resp:
                    if resp.status_code != 200:
                        raise FetchError(url, f"HTTP {resp.status_code}", package=package, status=resp.status_code)
                    size = 0
                    for chunk in resp.iter_content(CHUNK):
                        if self.stop.is_set():
                            raise Interrupted(url)
                        size += len(chunk)
                        if max_bytes is not None and size > max_bytes:
                            raise FetchError(url, "too long", package=package)
                        out.write(chunk)
                        for h in hashers.values():
                            h.update(chunk)
                return Download(size, {a: h.hexdigest() for a, h in hashers.items()}, attempt)
            except requests.RequestException as e:
                last = str(e)
        raise FetchError(url, last, package=package, attempts=self.policy.attempts)

    # The same two conveniences over download() as the client it is measured against.
    download_file = HttpClient.download_file
    get_bytes = HttpClient.get_bytes

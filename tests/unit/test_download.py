"""The HTTP client against a small server in a thread on 127.0.0.1: a server that trickles, one that
stalls, one that closes after each response. Bounds are a second or two, so the tests stay quick."""

from __future__ import annotations

import http.server
import io
import threading
import time

import pytest

from mkosi_initrd_builder.staging.download import HttpClient, Interrupted, RetryPolicy
from mkosi_initrd_builder.util.errors import FetchError

BODY = bytes(range(256)) * 64


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        if self.path == "/close":
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.path in ("/whole", "/close"):
            self.wfile.write(BODY)
            return
        if self.path == "/stall":
            self.server.stalled.wait(30)  # type: ignore[attr-defined]
            return
        for i in range(len(BODY)):  # /trickle: a byte every 0.2 s, well inside any per-read timeout
            try:
                self.wfile.write(BODY[i:i + 1])
                self.wfile.flush()
            except OSError:
                return
            time.sleep(0.2)


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.stalled = threading.Event()  # type: ignore[attr-defined]
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.stalled.set()  # type: ignore[attr-defined]
    srv.shutdown()
    srv.server_close()


def test_a_server_that_closes_after_each_response_serves_file_after_file(server):
    client = HttpClient(RetryPolicy(attempts=1))
    for _ in range(3):
        out = io.BytesIO()
        got = client.download(f"{server}/close", out, algorithms=["sha256"])
        assert out.getvalue() == BODY and got.size == len(BODY) and got.attempts == 1
    assert client.get_bytes(f"{server}/whole", max_bytes=len(BODY)) == BODY
    client.close()


def test_a_trickling_server_is_stopped_at_the_files_time_limit(server):
    """Every read gets a byte within 0.2 s; only the bound on the whole file ends it."""
    client = HttpClient(RetryPolicy(attempts=3, timeout=5, file_timeout=1.0, backoff=0.01))
    with pytest.raises(FetchError, match=rf"^cannot fetch {server}/trickle: not complete after 1s, the limit for "
                                         "one file$") as e:
        client.download(f"{server}/trickle", io.BytesIO())
    assert e.value.url == f"{server}/trickle"
    client.close()


def test_abort_ends_a_read_blocked_in_another_thread_at_once(server):
    client = HttpClient(RetryPolicy(attempts=1, timeout=30, file_timeout=60))
    outcome: list[BaseException] = []

    def fetch():
        try:
            client.download(f"{server}/stall", io.BytesIO())
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            outcome.append(e)

    worker = threading.Thread(target=fetch)
    worker.start()
    time.sleep(0.5)  # the worker is in recv(), waiting for a body that does not come
    client.abort()
    worker.join(timeout=10)
    assert not worker.is_alive(), "the blocked read outlived abort()"
    assert len(outcome) == 1 and isinstance(outcome[0], Interrupted)
    client.close()


def test_a_body_longer_than_expected_is_refused_from_its_announced_length(server):
    client = HttpClient(RetryPolicy(attempts=3))
    with pytest.raises(FetchError, match=f"announces {len(BODY):,} bytes, more than the 100 expected") as e:
        client.download(f"{server}/whole", io.BytesIO(), max_bytes=100)
    assert e.value.attempts == 1
    client.close()

"""Staging speed, for `make bench`: K synthetic RPMs (mostly small, some large, incompressible
payloads) in a koji-like tree served over HTTP on 127.0.0.1.

cold: stage_repository() with an empty cache, against sequential curl of the same URLs (one curl
      process fetching them one after the other over one connection, and one curl per file), on
      plain loopback and with a fixed delay per request standing in for a server some way off;
      beside it, what bounds it: the parts of the cold staging (StageResult.phases) and a bare
      fetch of the same URLs with the staging's own client (hashing and writing, nothing else). Cold
      stagings and curl runs alternate, three each, after one untimed curl run; the medians count.
warm: stage_repository() again with the cache filled, against a plain hard-link copy of the K files
      (cp -al), and against that copy plus createrepo_c (the least that makes it a repository); once
      choosing by names (dnf resolves them) and once from an exact list, as the kojid plugin stages
      (kojid's buildroot listing: no depsolving)
Goals (issue 13): warm <= 1.2x cp -al + createrepo_c; cold <= 1.5x one curl process on loopback and
<= 0.4x it with 20 ms per request.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import importlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mkosi_initrd_builder.rpmmeta.nevra import NEVRA
from mkosi_initrd_builder.staging.download import HttpClient
from mkosi_initrd_builder.staging.resolve import PinnedPackage
from mkosi_initrd_builder.staging.stage import PackageSelection, StageRequest, stage_repository
from mkosi_initrd_builder.util.fsutil import sha256_file
from tests.bench.machine import median_of
from tests.bench.requests_client import RequestsHttpClient

SOURCE_DATE_EPOCH = 1700000000
LARGE_EVERY = 10            # one package in ten is large
SMALL_BYTES = (8_000, 120_000)
JOBS = 4                    # parallel fetches, the staging's default
COLD_ROUNDS = 3             # cold stagings and curl runs, alternating; the median of each counts
LARGE_BYTES = (2_000_000, 6_000_000)


def _size(i: int) -> int:
    low, high = LARGE_BYTES if i % LARGE_EVERY == 0 else SMALL_BYTES
    # deterministic spread between low and high
    return low + int.from_bytes(hashlib.sha256(str(i).encode()).digest()[:4], "big") % (high - low)


def synthetic_rpms(count: int, cache: Path) -> list[Path]:
    """`count` noarch RPMs from one spec (subpackages), built once and kept under `cache`."""
    out = cache.absolute() / f"bench-rpms-{count}"
    done = out / ".complete"
    if done.exists():
        return sorted(out.glob("RPMS/**/*.rpm"))
    shutil.rmtree(out, ignore_errors=True)
    (out / "SPECS").mkdir(parents=True)
    lines = ["%global debug_package %{nil}", "%global __os_install_post %{nil}",
             "Name: benchpkg", "Version: 1", "Release: 1", "Summary: bench", "License: MIT", "BuildArch: noarch",
             "%description", "bench"]
    install = ["%install"]
    for i in range(count):
        lines += [f"%package -n benchpkg{i:04d}", f"Summary: bench {i}", f"%description -n benchpkg{i:04d}", "bench"]
        install.append(f"mkdir -p %{{buildroot}}/usr/share/bench{i:04d} && "
                       f"head -c {_size(i)} /dev/urandom > %{{buildroot}}/usr/share/bench{i:04d}/data")
    files = [f"%files -n benchpkg{i:04d}\n/usr/share/bench{i:04d}" for i in range(count)]
    spec = out / "SPECS" / "bench.spec"
    spec.write_text("\n".join(lines + ["%prep", "%build"] + install + files) + "\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(out), "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH)}
    subprocess.run(["rpmbuild", "-bb", "--define", f"_topdir {out}", "--define", "_binary_payload w1.zstdio",
                    str(spec)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    done.touch()
    return sorted(out.glob("RPMS/**/*.rpm"))


def timed(fn):
    start = time.monotonic()
    result = fn()
    return result, time.monotonic() - start


class HttpServerProcess:
    """A file server (HTTP/1.1 keep-alive, TCP_NODELAY as production servers set it) in its own process:
    an in-process server would compete with the stager for the GIL."""

    def __init__(self, root: Path, latency: float = 0.0) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.bench.staging_bench", "serve", str(root), str(port),
                                      str(latency)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def dnf_import_row() -> tuple[str, str, str]:
    """What a staging by names pays once per process on top of the figures below: importing dnf
    (in a fresh process with the staging already imported; median of three). Imported here before
    anything is timed, so that every cold staging below counts the same work whether or not the
    builder part ran first in this process (it imports dnf too): before, the first of the three
    cold stagings paid it when run alone, and the median was that one or not by chance."""
    def import_seconds(modules: str) -> float:
        code = f"import time; t = time.perf_counter(); import {modules}; print(time.perf_counter() - t)"
        return float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                    text=True).stdout)

    base = "mkosi_initrd_builder.staging.stage"
    seconds = median_of([import_seconds(f"{base}, dnf") - import_seconds(base) for _ in range(3)])
    importlib.import_module("dnf")
    return ("staging by names: importing dnf, once per process (not in the cold stagings below)", f"{seconds:.2f}s",
            "a CLI run pays it once; the kojid plugin stages exact lists and never imports dnf")


def bench_staging(count: int, cache: Path, rows: list[tuple[str, str, str]], latency: float = 0.0) -> None:
    from tests.support.kojitree import build_koji_tree

    rpms = synthetic_rpms(count, cache)
    work = Path(tempfile.mkdtemp(prefix="mkosi-initrd-stage-bench-"))
    server = None
    try:
        tree = build_koji_tree(work / "topdir", rpms, build_group=())
        server = HttpServerProcess(tree.topdir, latency)
        source = f"{server.url}/{tree.repo_relpath}"
        names = tuple(sorted(i["name"] for i in tree.rpminfo.values()))
        total = sum(i["size"] for i in tree.rpminfo.values())
        label = f"{count} RPMs, {total / 1e6:.0f} MB" + (f", {latency * 1000:.0f} ms/request" if latency else "")

        pinned = PackageSelection(pinned=tuple(PinnedPackage(NEVRA.from_koji(i), i["payloadhash"])
                                               for i in tree.rpminfo.values()))

        def stage(dest: str, selection: PackageSelection = PackageSelection(packages=names), cache: str = "cache"):
            return stage_repository(StageRequest(source=source, dest=work / dest, cache_dir=work / cache, jobs=JOBS,
                                                 selection=selection))

        urls = [f"{server.url}/{tree.repo_relpath}/{href}" for href in
                (tree.repo_dir / "pkglist").read_text().split()]

        def curl_all(directory: str) -> None:
            (work / directory).mkdir()
            config = work / f"{directory}.cfg"
            config.write_text("".join(f'url = "{u}"\noutput = "{work}/{directory}/{i}.rpm"\n'
                                      for i, u in enumerate(urls)))
            subprocess.run(["curl", "-sSf", "--config", str(config)], check=True)

        # Once before anything is timed, so that neither side pays for the server's first read of
        # the files from disk; then cold stagings (each with an empty cache) and curl runs alternate,
        # and each side's median counts: a single run of either moved the ratio by 1.7x between runs.
        curl_all("curl-first")
        colds, curls = [], []
        for i in range(COLD_ROUNDS):
            colds.append((i, *timed(lambda i=i: stage(f"cold{i}", cache=f"cache{i}"))))
            curls.append(timed(lambda i=i: curl_all(f"curl-round{i}"))[1])
        median, cold_result, cold = median_of(colds, key=lambda c: c[2])
        curl_one = median_of(curls)
        shutil.move(work / f"cache{median}", work / "cache")
        # The same cold staging with requests + urllib3's Retry in place of the hand-written client
        # (ARCHITECTURE.md, "Libraries and hand-written code"): a fresh cache, the same server.
        with client(RequestsHttpClient):
            _, cold_requests = timed(lambda: stage_repository(StageRequest(
                source=source, dest=work / "cold-requests", cache_dir=work / "cache-requests", jobs=JOBS,
                selection=PackageSelection(packages=names))))
        _, bare = timed(lambda: bare_fetch(urls, work / "bare"))
        # The one piece of work curl does not do and a verified staging must: a digest of every byte.
        _, digest = timed(lambda: [sha256_file(f) for f in sorted((work / "bare").iterdir())])
        (work / "curl2").mkdir()
        _, curl_each = timed(lambda: [subprocess.run(["curl", "-sSf", "-o", f"{work}/curl2/{i}.rpm", u], check=True)
                                      for i, u in enumerate(urls)])
        warm_result, warm = timed(lambda: stage("warm"))
        assert warm_result.bytes_fetched == 0, warm_result.summary()
        warm_pinned_result, warm_pinned = timed(lambda: stage("warm-pinned", pinned))
        assert warm_pinned_result.bytes_fetched == 0, warm_pinned_result.summary()
        files = [work / f"cold{median}" / p.file for p in cold_result.packages]
        (work / "copy").mkdir()
        _, link = timed(lambda: subprocess.run(["cp", "-al", *map(str, files), str(work / "copy")], check=True))
        _, createrepo = timed(lambda: subprocess.run(["createrepo_c", "--quiet", "--no-database", str(work / "copy")],
                                                     check=True))
        rows += [
            (f"{label}: cold staging over HTTP (4 jobs)", f"{cold:.2f}s",
             f"{cold_result.bytes_fetched / 1e6:.0f} MB fetched; median of "
             + ", ".join(f"{t:.2f}" for _, _, t in colds) + " s"),
            ("  the same with requests + urllib3 Retry", f"{cold_requests:.2f}s",
             f"ratio hand-written / requests {cold / cold_requests:.2f}"),
            ("  sequential curl, one process", f"{curl_one:.2f}s",
             "median of " + ", ".join(f"{t:.2f}" for t in curls) + " s, alternating with the cold stagings"),
            ("  sequential curl, one process per file", f"{curl_each:.2f}s", ""),
            ("  ratio cold / curl (one process)", f"{cold / curl_one:.2f}",
             "goal <= 0.40" if latency else "goal <= 1.50"),
            ("  ratio cold / curl (per file)", f"{cold / curl_each:.2f}", "goal <= 0.50"),
            *_floor_rows(cold_result, curl_one, count, latency),
            (f"  bare fetch, same URLs, the staging's client in {JOBS} threads (sha256 + write only) / curl",
             f"{bare / curl_one:.2f}", f"{bare:.2f}s; no checks, no cache, no repodata"),
            ("  sha256 of the same bytes alone, one thread, from the page cache / curl", f"{digest / curl_one:.2f}",
             f"{digest:.2f}s; (curl + this) / curl = {(curl_one + digest) / curl_one:.2f} when nothing overlaps"),
            (f"{label}: warm staging from the cache", f"{warm:.2f}s",
             f"{warm_result.bytes_from_cache / 1e6:.0f} MB from cache, 0 fetched"),
            ("  cp -al of the same files", f"{link:.2f}s", ""),
            ("  cp -al + createrepo_c", f"{link + createrepo:.2f}s", ""),
            ("  ratio warm / (cp -al + createrepo_c)", f"{warm / (link + createrepo):.2f}", "goal <= 1.20"),
            (f"{label}: warm staging, exact list (the kojid plugin's way)", f"{warm_pinned:.2f}s",
             "no depsolving"),
            ("  ratio warm exact list / (cp -al + createrepo_c)", f"{warm_pinned / (link + createrepo):.2f}",
             "goal <= 1.20"),
            ("  ratio warm / cp -al", f"{warm / link:.1f}", "staging also resolves, checks and writes repodata"),
        ]
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


def bare_fetch(urls: list[str], directory: Path) -> None:
    """What a cold staging's fetch phase cannot do without: the same client and threads getting each
    file, sha256 on the way, into a file of its own; none of the staging's checks, cache or repodata."""
    directory.mkdir()
    http = HttpClient()
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=JOBS) as pool:
            list(pool.map(lambda pair: http.download_file(pair[1], directory / f"{pair[0]}.rpm",
                                                          algorithms=("sha256",)), enumerate(urls)))
    finally:
        http.close()


def _floor_rows(result, curl_one: float, count: int, latency: float) -> list[tuple[str, str, str]]:
    """What bounds the cold ratio, from the same cold staging: the time before its first package
    request (metadata, then dnf's depsolve: curl is handed the URLs), its fetch phase against curl's
    whole run, and, with a delay per request, the round trips its shape cannot avoid."""
    phases = dict(result.phases)
    before = phases["metadata"] + phases["select"]
    rows = [
        ("  before the first package request: metadata + dnf", f"{before:.2f}s",
         f"{phases['metadata']:.2f} + {phases['select']:.2f} s, {before / curl_one:.2f}x curl's whole run"),
        ("  fetch phase alone (fetch, verify, place) / curl (one process)", f"{phases['fetch'] / curl_one:.2f}",
         f"{phases['fetch']:.2f}s; repodata {phases['repodata']:.2f}s"),
    ]
    if latency:
        trips = 2 + -(-count // JOBS)
        rows.append((f"  round trips alone (2 for metadata, then the packages over {JOBS} connections)",
                     f"{trips * latency:.2f}s",
                     f"{trips} x {latency * 1000:.0f} ms, {trips * latency / curl_one:.2f}x curl"))
    return rows


@contextlib.contextmanager
def client(cls):
    """stage_repository() with another HTTP client class for the duration (restored after)."""
    from mkosi_initrd_builder.staging import stage as stage_module

    saved = stage_module.HttpClient
    stage_module.HttpClient = cls
    try:
        yield
    finally:
        stage_module.HttpClient = saved


def serve(root: str, port: int, latency: float) -> None:
    import functools
    import http.server

    class Handler(http.server.SimpleHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Without it, keep-alive responses stall ~40 ms each on Nagle + delayed ACK, a quirk of this
        # server that nginx or httpd do not have.
        disable_nagle_algorithm = True

        def log_message(self, format, *args):  # noqa: A002
            pass

        def do_GET(self):
            time.sleep(latency)  # a server some way off: the round trips parallel fetching hides
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(Handler, directory=root))
    server.serve_forever()


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))

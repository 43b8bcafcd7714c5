"""A koji-like topdir made from the fixture RPMs, and an HTTP server on 127.0.0.1 serving it.

The layout follows kojihub's repo_init and kojid's createrepo task: packages/<n>/<v>/<r>/<arch>/ for
the files; repos/<tag>/<id>/ with repo.json, groups/comps.xml and per arch a `toplink` symlink to the
topdir, `pkglist` (paths through toplink), `rpmlist.jsonl` (one rpminfo per line, payloadhash = the
header's SIGMD5 in hex) and repodata made by `createrepo_c -i pkglist -g comps.xml`, so hrefs go
through toplink/ exactly as in koji. The server can inject faults (404, 500, truncated or tampered
bodies, delays) per path, optionally only for one user agent, and counts requests.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Optional

import koji

BUILD_GROUP = ("filesystem", "basesystem")
QUERY = "%{NAME}\\t%{EPOCHNUM}\\t%{VERSION}\\t%{RELEASE}\\t%{ARCH}\\t%{SIGMD5}\\t%{BUILDTIME}\\t%{SOURCERPM}\\n"


@dataclasses.dataclass(frozen=True)
class KojiTree:
    topdir: Path
    tag: str
    repo_id: int
    arch: str
    rpminfo: Mapping[str, dict]  # NVRA -> the rpminfo written to rpmlist.jsonl

    @property
    def repo_relpath(self) -> str:
        return f"repos/{self.tag}/{self.repo_id}/{self.arch}"

    @property
    def repo_dir(self) -> Path:
        return self.topdir / self.repo_relpath

    def package_path(self, name: str) -> Path:
        info = next(i for i in self.rpminfo.values() if i["name"] == name)
        return self.topdir / "packages" / info["name"] / info["version"] / info["release"] / info["arch"] / \
            f"{info['name']}-{info['version']}-{info['release']}.{info['arch']}.rpm"


def _header(rpm: Path) -> dict:
    out = subprocess.run(["rpm", "-qp", "--nosignature", "--qf", QUERY, str(rpm)], check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    name, epoch, version, release, arch, sigmd5, buildtime, sourcerpm = out.rstrip("\n").split("\t")
    return {"name": name, "epoch": int(epoch) or None, "version": version, "release": release, "arch": arch,
            "payloadhash": sigmd5, "buildtime": int(buildtime), "sourcerpm": sourcerpm}


def comps_xml(packages: Sequence[str]) -> str:
    """comps with the `build` group koji's mock configs install (chroot_setup_cmd 'install @build'),
    written by koji's own generate_comps as the hub does."""
    group = {
        "name": "build", "display_name": "build", "description": "buildroot packages", "langonly": None,
        "is_default": True, "uservisible": True, "biarchonly": False, "grouplist": [],
        "packagelist": [{"package": p, "type": "mandatory", "basearchonly": None, "requires": None,
                         "blocked": False} for p in packages],
        "blocked": False,
    }
    return koji.generate_comps([group], expand_groups=True)


def build_koji_tree(topdir: Path, rpms: Iterable[Path], *, tag: str = "fixture-build", repo_id: int = 7,
                    arch: str = "x86_64", build_group: Sequence[str] = BUILD_GROUP) -> KojiTree:
    """Lay out `rpms` (copied, never linked: tests tamper with these files) as koji would serve them."""
    topdir = topdir.absolute()
    repodir = topdir / "repos" / tag / str(repo_id)
    archdir = repodir / arch
    archdir.mkdir(parents=True)
    rpminfo: dict[str, dict] = {}
    pkglist = []
    for number, rpm in enumerate(sorted(rpms), 1):
        info = _header(rpm)
        nvra = f"{info['name']}-{info['version']}-{info['release']}.{info['arch']}"
        relpath = f"packages/{info['name']}/{info['version']}/{info['release']}/{info['arch']}/{nvra}.rpm"
        (topdir / relpath).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(rpm, topdir / relpath)
        os.utime(topdir / relpath, (info["buildtime"], info["buildtime"]))
        pkglist.append(f"toplink/{relpath}")
        rpminfo[nvra] = {
            "id": 1000 + number, "build_id": 100 + number, "buildroot_id": None, "name": info["name"],
            "version": info["version"], "release": info["release"], "epoch": info["epoch"], "arch": info["arch"],
            "payloadhash": info["payloadhash"], "size": (topdir / relpath).stat().st_size,
            "buildtime": info["buildtime"], "external_repo_id": 0, "external_repo_name": "INTERNAL",
            "metadata_only": False, "extra": None, "draft": False,
        }
    os.symlink(os.path.relpath(topdir, archdir), archdir / "toplink")
    (archdir / "pkglist").write_text("".join(f"{p}\n" for p in pkglist))
    (archdir / "rpmlist.jsonl").write_text("".join(json.dumps(i) + "\n" for i in rpminfo.values()))
    (archdir / "blocklist").write_text("")
    (repodir / "groups").mkdir()
    (repodir / "groups" / "comps.xml").write_text(comps_xml(build_group))
    (repodir / "repo.json").write_text(json.dumps({"id": repo_id, "tag": tag, "tag_id": 1, "task_id": None,
                                                   "event_id": 1000, "opts": {}, "custom_opts": {}}, indent=2))
    subprocess.run(["createrepo_c", "--quiet", "--error-exit-val", "--no-database", "-i", "pkglist",
                    "-g", str(repodir / "groups" / "comps.xml"), str(archdir)], check=True, cwd=archdir)
    return KojiTree(topdir, tag, repo_id, arch, rpminfo)


# --- HTTP -------------------------------------------------------------------------------------

@dataclasses.dataclass
class Fault:
    kind: str                      # "status", "truncate", "tamper", "delay", "trickle", "oversize", "badlength" or "hold"
    status: int = 500
    times: Optional[int] = None    # None: every request
    user_agent: str = ""           # only requests whose User-Agent contains this
    seconds: float = 0.0           # for "delay"; for "trickle", between two bytes; for "hold", the longest wait
    # for "hold": half the body is sent, the rest once the test sets it, so a client stays mid-download
    # exactly as long as the test needs
    gate: threading.Event = dataclasses.field(default_factory=threading.Event)


class _Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
    disable_nagle_algorithm = True  # as real servers do; else each keep-alive response stalls ~40 ms
    server: "_Server"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass

    def _fault(self) -> Optional[Fault]:
        path = self.path.split("?", 1)[0]
        with self.server.lock:
            self.server.requests.append((path, self.headers.get("User-Agent", "")))
            fault = self.server.faults.get(path)
            if fault is None or fault.user_agent not in self.headers.get("User-Agent", ""):
                return None
            if fault.times is not None:
                if fault.times <= 0:
                    return None
                fault.times -= 1
            return fault

    def do_GET(self) -> None:
        fault = self._fault()
        if fault is None:
            return super().do_GET()
        if fault.kind == "delay":
            time.sleep(fault.seconds)
            return super().do_GET()
        if fault.kind == "status":
            self.send_error(fault.status)
            return None
        body = Path(self.translate_path(self.path)).read_bytes()
        if fault.kind == "oversize":
            body += bytes(64 << 20)  # the file, then far more than the repository says it has
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        # "badlength": a Content-Length that is no number, then the whole body
        self.send_header("Content-Length", "abc" if fault.kind == "badlength" else str(len(body)))
        self.end_headers()
        if fault.kind == "badlength":
            self.wfile.write(body)
            self.close_connection = True
        elif fault.kind == "truncate":
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
        elif fault.kind == "tamper":
            middle = len(body) // 2
            self.wfile.write(body[:middle] + bytes([body[middle] ^ 0xFF]) + body[middle + 1:])
        elif fault.kind == "oversize":
            try:
                self.wfile.write(body)
            except OSError:
                pass  # the client stopped reading, as it should
        elif fault.kind == "hold":
            try:
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                fault.gate.wait(fault.seconds or 120)
                self.wfile.write(body[len(body) // 2:])
            except OSError:
                pass  # the client is gone (killed)
        elif fault.kind == "trickle":
            # one byte now and then, never slow enough for a per-read timeout, until the client leaves
            self.close_connection = True
            for i in range(len(body)):
                try:
                    self.wfile.write(body[i:i + 1])
                    self.wfile.flush()
                except OSError:
                    return None
                time.sleep(fault.seconds)
        return None


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path) -> None:
        self.faults: dict[str, Fault] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), lambda *a, **kw: _Handler(*a, directory=str(root), **kw))


class TreeServer:
    """Serves `root` on 127.0.0.1 (ephemeral port) from a thread until stop()."""

    def __init__(self, root: Path) -> None:
        self._server = _Server(root)
        self._thread = threading.Thread(target=self._server.serve_forever, name="kojitree-http", daemon=True)
        self._thread.start()
        host, port = self._server.server_address[:2]
        self.url = f"http://{host}:{port}"

    @property
    def faults(self) -> dict[str, Fault]:
        return self._server.faults

    def requests_for(self, path: str) -> int:
        with self._server.lock:
            return sum(1 for p, _ in self._server.requests if p == path)

    def requests_by(self, user_agent: str) -> list[str]:
        """Paths requested by clients whose User-Agent contains `user_agent`."""
        with self._server.lock:
            return [p for p, agent in self._server.requests if user_agent in agent]

    def reset(self) -> None:
        with self._server.lock:
            self._server.faults.clear()
            self._server.requests.clear()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def build_srpm(spec: Path, sourcedir: Path, topdir: Path) -> Path:
    """rpmbuild -bs: the SRPM carries the spec's BuildRequires as its requires, as koji's do."""
    for sub in ("SRPMS", "tmp", "home"):
        (topdir / sub).mkdir(parents=True, exist_ok=True)
    out = subprocess.run(
        ["rpmbuild", "-bs", "--define", f"_topdir {topdir}", "--define", f"_sourcedir {sourcedir}",
         "--define", f"_tmppath {topdir / 'tmp'}", str(spec)],
        check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "HOME": str(topdir / "home"), "LC_ALL": "C"},
    ).stdout
    return Path(next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Wrote:")))


def place_task_srpm(tree: KojiTree, srpm: Path, task_id: int) -> str:
    """Put an SRPM where a buildArch task's parent uploads it; returns the path relative to work/."""
    relpath = f"tasks/{task_id % 10000}/{task_id}/{srpm.name}"
    target = tree.topdir / "work" / relpath
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(srpm, target)
    return relpath

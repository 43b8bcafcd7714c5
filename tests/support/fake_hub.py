"""A minimal koji hub: XML-RPC on 127.0.0.1 (stdlib server, its own thread) answering only the calls
that the fake kojid and the mkosi_initrd plugin make through the real koji.ClientSession. Every call
is recorded, and uploaded files are kept, so tests can assert what reached the hub.

Uploads: a logged-in kojid uses the fast path (rawUpload over plain HTTP). This hub answers
checkUpload with a GenericError fault, which makes the real client fall back to its other real path,
XML-RPC uploadFile in base64 chunks with a final sha256 check, so no login is needed.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import threading
import xmlrpc.server
from typing import Any, Callable, Optional
from xmlrpc.client import Fault

import koji


@dataclasses.dataclass
class Call:
    method: str
    args: tuple
    kwargs: dict


class _Handler(xmlrpc.server.SimpleXMLRPCRequestHandler):
    rpc_paths = ("/kojihub",)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


class FakeHub:
    def __init__(self, *, tag: str, tag_id: int = 1, repo_id: int, arches: str = "x86_64",
                 extra: Optional[dict] = None, first_buildroot_id: int = 100) -> None:
        self.tag, self.tag_id, self.repo_id, self.arches = tag, tag_id, repo_id, arches
        self.extra = dict(extra or {})
        self.calls: list[Call] = []
        self.uploads: dict[tuple[str, str], bytes] = {}
        self.buildroot_states: dict[int, str] = {}
        self._chunks: dict[tuple[str, str], dict[int, bytes]] = {}
        self._next_buildroot = first_buildroot_id
        self._lock = threading.Lock()
        self._methods: dict[str, Callable[..., Any]] = {
            "repoInfo": self.repoInfo,
            "getBuildConfig": self.getBuildConfig,
            "getTaskInfo": self.getTaskInfo,
            "getExternalRepoList": self.getExternalRepoList,
            "host.getHost": self.getHost,
            "host.newBuildRoot": self.newBuildRoot,
            "host.setBuildRootState": self.setBuildRootState,
            "host.setBuildRootList": self.setBuildRootList,
            "host.updateBuildRootList": self.setBuildRootList,
            "checkUpload": self.checkUpload,
            "uploadFile": self.uploadFile,
        }
        self._server = xmlrpc.server.SimpleXMLRPCServer(("127.0.0.1", 0), requestHandler=_Handler,
                                                        allow_none=True, logRequests=False)
        self._server.register_instance(self)
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True)
        self._thread.start()
        host, port = self._server.server_address[:2]
        self.url = f"http://{host}:{port}/kojihub"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def session(self) -> koji.ClientSession:
        return koji.ClientSession(self.url, {"max_retries": 0, "anon_retry": False})

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def _dispatch(self, method: str, params: tuple) -> Any:
        args, kwargs = koji.decode_args(*params)
        with self._lock:
            self.calls.append(Call(method, tuple(args), dict(kwargs)))
        func = self._methods.get(method)
        if func is None:
            raise Fault(koji.GenericError.faultCode, f"fake hub: {method} is not implemented")
        return func(*args, **kwargs)

    # --- the calls ---------------------------------------------------------------------------

    def repoInfo(self, repo_id: int, strict: bool = False) -> Optional[dict]:
        if repo_id != self.repo_id:
            if strict:
                raise Fault(koji.GenericError.faultCode, f"No such repo: {repo_id}")
            return None
        return {"id": self.repo_id, "state": koji.REPO_STATES["READY"], "create_event": 1000,
                "tag_id": self.tag_id, "tag_name": self.tag, "dist": False, "task_id": None, "opts": {},
                "custom_opts": {}}

    def getBuildConfig(self, tag: Any, event: Optional[int] = None) -> dict:
        if tag not in (self.tag, self.tag_id):
            raise Fault(koji.GenericError.faultCode, f"No such tagInfo: {tag!r}")
        return {"id": self.tag_id, "name": self.tag, "arches": self.arches, "extra": dict(self.extra),
                "locked": False, "maven_support": False, "maven_include_all": False, "perm_id": None}

    def getTaskInfo(self, task_id: int, request: bool = False, strict: bool = False) -> dict:
        return {"id": task_id, "arch": "noarch", "method": "buildArch", "state": koji.TASK_STATES["OPEN"]}

    def getExternalRepoList(self, tag_info: Any, event: Optional[int] = None) -> list:
        return []

    def getHost(self) -> dict:
        return {"id": 1, "name": "fake-builder", "arches": self.arches}

    def newBuildRoot(self, repo_id: int, arch: str, task_id: Optional[int] = None) -> int:
        with self._lock:
            brid = self._next_buildroot
            self._next_buildroot += 1
            self.buildroot_states[brid] = "INIT"
        return brid

    def setBuildRootState(self, brid: int, state: Any) -> None:
        self.buildroot_states[brid] = state if isinstance(state, str) else koji.BR_STATES[state]

    def setBuildRootList(self, brid: int, rpmlist: list) -> None:
        return None

    def checkUpload(self, path: str, name: str, verify: Optional[str] = None, tail: Optional[int] = None,
                    volume: Optional[str] = None) -> None:
        raise Fault(koji.GenericError.faultCode, "fake hub: no fast upload, use uploadFile")

    def uploadFile(self, path: str, name: str, size: int, verify: Any, offset: int, data: str,
                   volume: Optional[str] = None) -> bool:
        key = (path, name)
        with self._lock:
            chunks = self._chunks.setdefault(key, {})
            if offset != -1:
                chunk = base64.b64decode(data)
                if len(chunk) != size or hashlib.new(verify[0], chunk).hexdigest() != verify[1]:
                    raise Fault(koji.GenericError.faultCode, f"fake hub: bad chunk of {path}/{name}")
                chunks[offset] = chunk
                return True
            whole = b"".join(chunks[o] for o in sorted(chunks))
            if len(whole) != size or hashlib.new(verify[0], whole).hexdigest() != verify[1]:
                raise Fault(koji.GenericError.faultCode, f"fake hub: {path}/{name} arrived corrupted")
            self.uploads[key] = whole
            del self._chunks[key]
        return True

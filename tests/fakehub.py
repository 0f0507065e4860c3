"""A loopback HTTP server that answers like the Hugging Face Hub for the calls a pull makes:

    GET  /api/models/ORG/REPO/tree/REV     file listing with LFS sha256 and sizes
    HEAD /ORG/REPO/resolve/REV/FILE         metadata headers (commit, linked etag and size)
    GET  /ORG/REPO/resolve/REV/FILE         the bytes, honouring 'Range: bytes=N-'

and for the calls a push makes (``create_repo``, then ``create_commit`` over plain LFS: the
tests turn Xet off, which this hub does not speak):

    POST /api/repos/create                          201, or 409 when it exists
    POST /api/models/ORG/REPO/preupload/REV         every file is LFS
    POST /ORG/REPO.git/info/lfs/objects/batch       an upload action only for objects not held
    PUT  /lfs/OID                                   the object's bytes
    POST /api/models/ORG/REPO/commit/REV            NDJSON: lfsFile and file operations

Faults for tests: ``cut_after`` ends the first body early (the client must resume with a
Range request); ``lie_sha256`` announces a digest the bytes do not have.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "a" * 40


@dataclass
class FakeHub:
    repos: dict[str, dict[str, bytes]] = field(default_factory=dict)  # repo id -> {path: bytes}
    cut_after: int | None = None
    lie_sha256: bool = False
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range)
    url: str = ""
    objects: dict[str, bytes] = field(default_factory=dict)  # LFS objects by sha256, uploaded or committed

    def sha(self, data: bytes) -> str:
        return "0" * 64 if self.lie_sha256 else hashlib.sha256(data).hexdigest()


TREE = re.compile(r"/api/models/([^/]+/[^/]+)/tree/([^/?]+)")
RESOLVE = re.compile(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: FakeHub  # set per server (_handler)

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass

    def _reply(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _not_found(self) -> None:
        self._reply(404, b'{"error":"Repository not found"}', {"X-Error-Code": "RepoNotFound"})

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?")[0]
        self.hub.requests.append((self.command, path, self.headers.get("Range")))
        if m := TREE.fullmatch(path):
            return self._tree(m.group(1))
        if m := RESOLVE.fullmatch(path):
            return self._file(m.group(1), m.group(3))
        return self._not_found()

    def do_PUT(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.hub.requests.append(("PUT", self.path, None))
        oid = self.path.rsplit("/", 1)[-1]
        if hashlib.sha256(body).hexdigest() != oid:
            return self._reply(400, b'{"error":"bytes do not match the oid"}')
        self.hub.objects[oid] = body
        self._reply(200)

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        path = self.path.split("?")[0]
        self.hub.requests.append(("POST", path, None))
        if path == "/api/repos/create":
            name = json.loads(body)
            repo = f"{name.get('organization') or 'user'}/{name['name']}" if "/" not in name["name"] else name["name"]
            if repo in self.hub.repos:
                said = {"error": "You already created this model repo", "url": f"{self.hub.url}/{repo}"}
                return self._reply(409, json.dumps(said).encode())
            self.hub.repos[repo] = {}
            return self._json({"url": f"{self.hub.url}/{repo}", "name": repo})
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/preupload/[^/]+", path):
            files = json.loads(body)["files"]
            return self._json({"files": [{"path": f["path"], "uploadMode": "lfs", "shouldIgnore": False}
                                         for f in files]})
        if m := re.fullmatch(r"/([^/]+/[^/]+)\.git/info/lfs/objects/batch", path):
            objects = json.loads(body)["objects"]
            out = [{"oid": o["oid"], "size": o["size"]} | ({} if o["oid"] in self.hub.objects else
                    {"actions": {"upload": {"href": f"{self.hub.url}/lfs/{o['oid']}"}}}) for o in objects]
            return self._json({"transfer": "basic", "objects": out})
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/[^/]+", path):
            return self._commit(m.group(1), body)
        self._not_found()

    def _commit(self, repo: str, body: bytes) -> None:
        if repo not in self.hub.repos:
            return self._not_found()
        for line in body.splitlines():
            op = json.loads(line)
            if op["key"] == "lfsFile":
                self.hub.repos[repo][op["value"]["path"]] = self.hub.objects[op["value"]["oid"]]
            elif op["key"] == "file":
                data = base64.b64decode(op["value"]["content"])
                self.hub.repos[repo][op["value"]["path"]] = data
                self.hub.objects[hashlib.sha256(data).hexdigest()] = data
        self._json({"commitUrl": f"{self.hub.url}/{repo}/commit/{COMMIT}", "commitOid": COMMIT, "pullRequestUrl": None})

    def _json(self, data: object) -> None:
        self._reply(200, json.dumps(data).encode(), {"Content-Type": "application/json"})

    def _tree(self, repo: str) -> None:
        if repo not in self.hub.repos:
            return self._not_found()
        listing = [
            {
                "type": "file",
                "path": p,
                "size": len(d),
                "oid": "b" * 40,
                "lfs": {"oid": self.hub.sha(d), "size": len(d), "pointerSize": 134},
            }
            for p, d in self.hub.repos[repo].items()
        ]
        self._reply(200, json.dumps(listing).encode(), {"Content-Type": "application/json"})

    def _file(self, repo: str, name: str) -> None:
        data = self.hub.repos.get(repo, {}).get(name)
        if data is None:
            return self._not_found()
        start = 0
        if rng := self.headers.get("Range"):
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))  # type: ignore[union-attr]
        headers = {
            "X-Repo-Commit": COMMIT,
            "ETag": f'"{self.hub.sha(data)}"',
            "X-Linked-Etag": f'"{self.hub.sha(data)}"',
            "X-Linked-Size": str(len(data)),
            "Accept-Ranges": "bytes",
            "Content-Length": str(len(data) - start),
        }
        code = 206 if start else 200
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        if self.command == "GET" and self.hub.cut_after is not None:
            body, self.hub.cut_after = body[: self.hub.cut_after], None
            headers["Connection"] = "close"
            self.close_connection = True
        self._reply(code, body, headers)


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    return type("BoundHandler", (Handler,), {"hub": hub})


@contextmanager
def serve(hub: FakeHub) -> Iterator[FakeHub]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()

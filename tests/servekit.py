"""A server on a real loopback socket, in a thread of the test process (fake runners) or as
``edgeslm serve`` in a child process (real runners); and the fixtures of a keyed server on a
tiny model with fake runners (import them by name where a test module uses them)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from edgeslm.access.keys import add_key
from edgeslm.config import resolve_settings
from edgeslm.serve.app import create_app
from edgeslm.serve.options import ServeOptions

from .fake_runner import FakeRunner
from .ggufbuild import write_runnable_model

# A client's deadline for a server on a real model: one that a loaded machine (the suite beside a
# CPU hog) meets; httpx's default of 5 s is not.
CLIENT_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(home: Path, factory: Any = None, **options: Any) -> Iterator[str]:
    """Run the app with ``options`` in a thread; yield its base URL."""
    port = free_port()
    opts = ServeOptions(port=port, preload=None, **options)
    app = create_app(opts, resolve_settings(home=home), factory)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


@dataclass(frozen=True)
class Served:
    url: str
    pid: int

    def runner_pids(self) -> list[int]:
        """The server's runner processes (its children running ``edgeslm.runner.worker``)."""
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
                cmdline = (stat.parent / "cmdline").read_bytes()
            except (OSError, IndexError, ValueError):
                continue
            if ppid == self.pid and b"edgeslm.runner.worker" in cmdline:
                pids.append(int(stat.parent.name))
        return pids


@contextmanager
def serve_process(home: Path, *args: str) -> Iterator[Served]:
    """``edgeslm serve`` as a child process, once it answers."""
    port = free_port()
    cmd = [sys.executable, "-m", "edgeslm", "--home", str(home), "serve", "--port", str(port), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            assert proc.poll() is None, f"edgeslm serve exited: {proc.stderr.read().decode() if proc.stderr else ''}"
            assert time.monotonic() < deadline, "edgeslm serve did not answer"
            try:
                if httpx.get(url + "/api/version", timeout=1).status_code in (200, 401):  # 401: it wants keys
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield Served(url, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


def generate(runner: Any, prompt: Any, sampling: Any, *, max_tokens: int = -1, stop: Any = (),
             **job: Any) -> Iterator[Any]:
    """``runner.agenerate`` driven from synchronous test code (an event loop in a thread); closing
    the iterator early closes the async one, which cancels the request, as a client leaving does."""
    import asyncio

    from edgeslm.runner import Job

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> Any:
        return runner.agenerate(Job(prompt, sampling, max_tokens, tuple(stop), **job))

    events = asyncio.run_coroutine_threadsafe(start(), loop).result()
    try:
        while True:
            try:
                yield asyncio.run_coroutine_threadsafe(events.__anext__(), loop).result()
            except StopAsyncIteration:
                return
    finally:
        asyncio.run_coroutine_threadsafe(events.aclose(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


@pytest.fixture
def models(cli: Any, tmp_path: Path, home: Path) -> Path:
    """A home holding one runnable tiny model, ``tiny``."""
    assert cli("import", str(write_runnable_model(tmp_path / "tiny.gguf")), "--name", "tiny").code == 0
    FakeRunner.reset()
    return home


@pytest.fixture
def keyed(models: Path, tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A server on ``models`` with an admin, a user and a reader key, and an audit log."""
    keyfile = tmp_path / "keys.toml"
    keys = {role: add_key(keyfile, f"{role}-1", role) for role in ("admin", "user", "reader")}
    with serving(models, FakeRunner, api_keys=keyfile, audit_log=tmp_path / "audit.jsonl") as base:
        yield base, keys


def audit_text(path: Path, lines: int, deadline: float = 30.0) -> str:
    """The audit log once it holds ``lines`` lines: the server writes a request's line after its
    response has gone out, so a client that reads at once can be ahead of it on a busy machine."""
    end = time.monotonic() + deadline
    while True:
        text = path.read_text() if path.exists() else ""
        if len(text.splitlines()) >= lines or time.monotonic() > end:
            return text
        time.sleep(0.02)

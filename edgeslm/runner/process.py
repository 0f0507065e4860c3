"""The server's side of a model runner: starts ``edgeslm.runner.worker`` and talks JSON lines.

Nothing here imports llama.cpp: the native code lives in the worker process, so a crash there
fails only that runner's in-flight requests (each gets an ``EngineError`` saying so) and the
server stays up; the next request starts a new runner. Every wait has a deadline: a worker
that does not say ``ready`` within ``load_timeout`` is killed (``RunnerTimeoutError``), and one
that does not exit within ``close_timeout`` of its stdin closing is killed too.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncGenerator, Sequence
from typing import Any, Protocol

from ..errors import EngineError, RunnerTimeoutError
from ..framing import Message, decode, encode, error_from
from .messages import Chunk, Done, Embeddings, Job, embeddings_from, event_from

log = logging.getLogger(__name__)

LOAD_TIMEOUT = 120.0  # seconds from start to the worker's ready line
CLOSE_TIMEOUT = 10.0  # seconds from closing its stdin to its exit, then it is killed
WORKER = (sys.executable, "-m", "edgeslm.runner.worker")


class RunnerLike(Protocol):
    """What the server needs of a runner (the tests' fake runner provides the same)."""

    name: str
    info: dict[str, Any]

    @property
    def alive(self) -> bool: ...

    @property
    def pid(self) -> int: ...

    def agenerate(self, job: Job) -> AsyncGenerator[Chunk | Done, None]: ...

    async def aembed(self, texts: Sequence[str]) -> Embeddings: ...

    def close(self) -> None: ...


class _AsyncInbox:
    """A queue the reader thread fills and an event loop drains."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def put(self, msg: dict[str, Any]) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, msg)


class Runner:
    """One model in one worker process, serving any number of concurrent ``agenerate`` calls."""

    def __init__(
        self,
        name: str,
        *,
        slots: int = 4,
        ctx_per_slot: int = 2048,
        threads: int | None = None,
        home: str | None = None,  # the store's home (default: as the environment says)
        prompt_cache: bool = True,  # a freed slot's cells serve the next prompt sharing their prefix
        load_timeout: float = LOAD_TIMEOUT,
        close_timeout: float = CLOSE_TIMEOUT,
        draft: dict[str, Any] | None = None,  # prompt-lookup speculative decoding (LookupConfig.as_args())
        worker: Sequence[str] = WORKER,  # the command that starts the worker (tests start fakes)
    ) -> None:
        self.name, self.close_timeout = name, close_timeout
        args = json.dumps({
            "name": name, "slots": slots, "ctx_per_slot": ctx_per_slot, "threads": threads, "home": home,
            "prompt_cache": prompt_cache, "draft": draft,
        })  # fmt: skip
        self._proc = subprocess.Popen(
            [*worker, args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C at the terminal stops the server, which stops its runners
        )  # fmt: skip
        self._lock = threading.Lock()
        self._queues: dict[str, _AsyncInbox] = {}  # request id -> where its replies go
        self._ids = itertools.count()
        self._hello: list[Message] = []  # the worker's ready or failed line
        self._said_hello = threading.Event()
        self._reader = threading.Thread(target=self._read, name=f"runner-{name}", daemon=True)
        self._reader.start()
        self.info = self._wait_ready(load_timeout)

    def _wait_ready(self, timeout: float) -> dict[str, Any]:
        if not self._said_hello.wait(timeout):
            self._kill()
            self.close()
            raise RunnerTimeoutError(
                f"the runner for {self.name} did not finish loading within {timeout:g} s and was stopped; the next "
                "request tries again (a slow disk may need a longer --load-timeout)"
            )
        msg = self._hello[0] if self._hello else {}
        if msg.get("op") == "ready":
            return msg
        self.close()
        if not msg:
            raise EngineError(f"the runner for {self.name} exited while loading (code {self._proc.returncode})")
        raise error_from(msg)

    @property
    def alive(self) -> bool:
        return self._proc.poll() is None

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            msg = decode(line)  # None: the half line of a runner killed mid-write; its end follows
            if msg is None:
                continue
            if not self._said_hello.is_set():
                self._hello.append(msg)
                self._said_hello.set()
                continue
            with self._lock:
                q = self._queues.get(str(msg.get("id")))
            if q is not None:
                q.put(msg)
        self._said_hello.set()  # it exited before saying anything
        code = self._reap()  # stdout closed: it is exiting, or hung with its stdout closed
        why = f"the runner for {self.name} stopped (exit code {code}) during this request; the next request restarts it"
        with self._lock:
            for q in self._queues.values():
                q.put({"op": "error", "kind": "EngineError", "message": why})

    def _write(self, msg: dict[str, Any]) -> None:
        assert self._proc.stdin is not None
        try:
            with self._lock:
                self._proc.stdin.write(encode(msg))
                self._proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            raise EngineError(f"the runner for {self.name} has stopped; the next request restarts it") from None

    async def agenerate(self, job: Job) -> AsyncGenerator[Chunk | Done, None]:
        """Stream a reply; closing the iterator early, or cancelling the task reading it (a client
        gone), cancels the request and frees its slot."""
        rid, inbox = self._register(_AsyncInbox())
        finished = False
        try:
            await asyncio.to_thread(self._write, job.message(rid))  # a long prompt may fill the pipe
            while True:
                event = event_from(await inbox.queue.get())
                finished = isinstance(event, Done)
                yield event
                if finished:
                    return
        finally:
            self._end(rid, finished)

    async def aembed(self, texts: Sequence[str]) -> Embeddings:
        rid, inbox = self._register(_AsyncInbox())
        try:
            await asyncio.to_thread(self._write, {"op": "embed", "id": rid, "texts": list(texts)})
            return embeddings_from(await inbox.queue.get())
        finally:
            self._end(rid, True)

    def _register(self, inbox: _AsyncInbox) -> tuple[str, _AsyncInbox]:
        rid = str(next(self._ids))
        with self._lock:
            self._queues[rid] = inbox
        return rid, inbox

    def _end(self, rid: str, finished: bool) -> None:
        with self._lock:
            self._queues.pop(rid, None)
        if not finished and self.alive:
            try:
                self._write({"op": "cancel", "id": rid})
            except EngineError:
                pass  # it stopped meanwhile: nothing left to cancel

    def close(self) -> None:
        """End the worker: its stdin closes, so it finishes and exits; past ``close_timeout`` it is
        killed. Returns within about ``close_timeout`` seconds whatever the worker does."""
        if self._proc.stdin is not None and not self._proc.stdin.closed:
            try:
                self._proc.stdin.close()
            except BrokenPipeError:
                pass
        self._reap()
        self._reader.join(timeout=self.close_timeout)
        if self._proc.stdout is not None and not self._reader.is_alive():
            self._proc.stdout.close()

    def _reap(self) -> int | None:
        """The worker's exit code, waiting at most ``close_timeout``; then it is killed and waited
        for as long again. None: not gone even then (stuck in the kernel); nobody waits longer."""
        try:
            return self._proc.wait(timeout=self.close_timeout)
        except subprocess.TimeoutExpired:
            log.warning("the runner for %s did not exit within %g s; killing it", self.name, self.close_timeout)
        self._kill()
        try:
            return self._proc.wait(timeout=self.close_timeout)
        except subprocess.TimeoutExpired:
            log.error("the runner for %s (pid %d) survived SIGKILL for %g s", self.name, self.pid, self.close_timeout)
            return None

    def _kill(self) -> None:
        """SIGKILL the worker's whole session (it may have children of its own)."""
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

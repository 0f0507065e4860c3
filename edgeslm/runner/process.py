"""The server's side of a model runner: starts ``edgeslm.runner.worker`` and talks JSON lines.

Nothing here imports llama.cpp: the native code lives in the worker process, so a crash there
fails only that runner's in-flight requests (each gets an ``EngineError`` saying so) and the
server stays up; the next request starts a new runner. Every wait has a deadline: a worker
that does not say ``ready`` within ``load_timeout`` is killed (``RunnerTimeoutError``), one
that does not exit within ``close_timeout`` of its stdin closing is killed too, one that stops
reading its requests for ``write_timeout`` is killed (its requests fail, the next one restarts it),
and an embedding gets its answer within ``embed_timeout``.

Nothing here blocks the event loop: requests go to the worker's stdin through a writer thread
(``_Writer``), so a full pipe stalls that thread, never the server; the lock guards only the
table of requests and is never held across I/O.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Protocol

from ..engines.base import Tuning
from ..errors import EngineError, RunnerTimeoutError
from ..framing import Message, decode, encode, error_from
from .messages import (
    Chunk,
    Done,
    Embeddings,
    Infill,
    Job,
    Tokens,
    embeddings_from,
    event_from,
    text_from,
    tokens_from,
)

if TYPE_CHECKING:
    from ..store.resolve import ResolvedModel  # the server's import of this module stays light

log = logging.getLogger(__name__)

LOAD_TIMEOUT = 120.0  # seconds from start to the worker's ready line
CLOSE_TIMEOUT = 10.0  # seconds from closing its stdin to its exit, then it is killed
WRITE_TIMEOUT = 30.0  # seconds a request may wait for the worker to read it, then the worker is killed
EMBED_TIMEOUT = 300.0  # seconds from an embedding request to its answer
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

    async def aembed(self, texts: Sequence[str | Sequence[int]], *, truncate: bool = False) -> Embeddings: ...

    async def atokenize(self, content: str, *, add_special: bool = False, parse_special: bool = True,
                        with_pieces: bool = False) -> Tokens: ...

    async def adetokenize(self, ids: Sequence[int]) -> str: ...

    async def ainfill(self, fim: Infill) -> list[int]: ...

    async def acount(self, job: Job) -> int: ...

    def close(self) -> None: ...


class _AsyncInbox:
    """A queue the reader thread fills and an event loop drains."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def put(self, msg: dict[str, Any]) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, msg)


class _Writer:
    """Writes messages to the worker's stdin on a thread of its own, each within ``timeout``; past
    it the worker, which has stopped reading, is killed (``on_stall``) and nothing more is sent."""

    def __init__(self, fd: int, name: str, timeout: float, on_stall: Callable[[], None]) -> None:
        self.fd, self.timeout, self.on_stall = fd, timeout, on_stall
        self.failed: str | None = None  # why nothing more can be written
        self.stalled = False  # the worker stopped reading and was killed for it
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        os.set_blocking(fd, False)
        self._thread = threading.Thread(target=self._run, name=f"runner-{name}-writer", daemon=True)
        self._thread.start()

    def send(self, data: bytes) -> None:
        """Queue ``data``; never blocks. Raises ``EngineError`` once the worker cannot be written to."""
        if self.failed:
            raise EngineError(self.failed)
        self._outbox.put(data)

    def stop(self, timeout: float) -> None:
        """Write what is queued (each message within its deadline), then stop; waits at most ``timeout``."""
        self._outbox.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (data := self._outbox.get()) is not None:
            if self.failed:
                continue
            try:
                self._write_all(data)
            except TimeoutError:
                self.failed = f"the runner stopped reading its requests for {self.timeout:g} s and was stopped"
                self.stalled = True
                log.warning("%s", self.failed)
                self.on_stall()
            except OSError:  # a broken pipe: the worker is gone, and the reader says so to every request
                self.failed = "the runner has stopped; the next request restarts it"

    def _write_all(self, data: bytes) -> None:
        view, deadline = memoryview(data), time.monotonic() + self.timeout
        while view:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            if not select.select([], [self.fd], [], left)[1]:
                continue
            try:
                view = view[os.write(self.fd, view) :]
            except BlockingIOError:
                continue


class Runner:
    """One model in one worker process, serving any number of concurrent ``agenerate`` calls."""

    def __init__(
        self,
        model: str | ResolvedModel,  # resolved by the caller (the manager): the worker looks nothing up
        *,
        slots: int = 4,
        ctx_per_slot: int = 2048,
        threads: int | None = None,
        home: str | None = None,  # the store's home (default: as the environment says)
        prompt_cache: bool = True,  # a freed slot's cells serve the next prompt sharing their prefix
        load_timeout: float = LOAD_TIMEOUT,
        close_timeout: float = CLOSE_TIMEOUT,
        write_timeout: float = WRITE_TIMEOUT,
        embed_timeout: float = EMBED_TIMEOUT,
        draft: dict[str, Any] | None = None,  # prompt-lookup speculative decoding (LookupConfig.as_args())
        kv: str | None = None,  # the KV cache type (KVCache's spelling); None: the model's own or F16
        tuning: Tuning | None = None,  # llama.cpp's micro-batch, flash attention, mmap (None: its own)
        worker: Sequence[str] = WORKER,  # the command that starts the worker (tests start fakes)
    ) -> None:
        name = model if isinstance(model, str) else model.name
        self.name, self.close_timeout, self.embed_timeout = name, close_timeout, embed_timeout
        args = json.dumps({
            "name": name, "model": None if isinstance(model, str) else model.to_dict(), "slots": slots,
            "ctx_per_slot": ctx_per_slot, "threads": threads, "home": home, "prompt_cache": prompt_cache,
            "draft": draft, "kv": kv, "tuning": asdict(tuning) if tuning else None,
        })
        self._proc = subprocess.Popen(
            [*worker, args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C at the terminal stops the server, which stops its runners
        )
        assert self._proc.stdin is not None
        self._writer = _Writer(self._proc.stdin.fileno(), name, write_timeout, self._kill)
        self._lock = threading.Lock()  # guards _queues only; never held across I/O
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
        if self._writer.stalled:
            why = f"{self._writer.failed} (model {self.name}); the next request restarts it"
        with self._lock:
            for q in self._queues.values():
                q.put({"op": "error", "kind": "EngineError", "message": why})

    def _send(self, msg: dict[str, Any]) -> None:
        """Queue ``msg`` for the worker; never blocks."""
        if not self.alive:
            raise EngineError(f"the runner for {self.name} has stopped; the next request restarts it")
        try:
            self._writer.send(encode(msg))
        except EngineError as exc:
            raise EngineError(f"{exc} (model {self.name})") from None

    async def agenerate(self, job: Job) -> AsyncGenerator[Chunk | Done, None]:
        """Stream a reply; closing the iterator early, or cancelling the task reading it (a client
        gone), cancels the request and frees its slot."""
        rid, inbox = self._register(_AsyncInbox())
        finished = False
        try:
            self._send(job.message(rid))
            while True:
                event = event_from(await inbox.queue.get())
                finished = isinstance(event, Done)
                yield event
                if finished:
                    return
        finally:
            self._end(rid, finished)

    async def aembed(self, texts: Sequence[str | Sequence[int]], *, truncate: bool = False) -> Embeddings:
        """The texts' (or token-id lists') embeddings, within ``embed_timeout`` (``RunnerTimeoutError`` past it);
        a text longer than the model embeds is cut to fit only with ``truncate``."""
        message = {"op": "embed", "texts": [t if isinstance(t, str) else list(t) for t in texts], "truncate": truncate}
        return embeddings_from(await self._ask(message, f"embed {len(texts)} text(s)"))

    async def atokenize(self, content: str, *, add_special: bool = False, parse_special: bool = True,
                        with_pieces: bool = False) -> Tokens:
        """``content`` as the model's token ids (llama-server's ``/tokenize`` defaults: no BOS added,
        special tokens' texts parsed as those tokens)."""
        message = {"op": "tokenize", "content": content, "add_special": add_special, "parse_special": parse_special,
                   "with_pieces": with_pieces}
        return tokens_from(await self._ask(message, f"tokenize {len(content):,} characters"))

    async def adetokenize(self, ids: Sequence[int]) -> str:
        return text_from(await self._ask({"op": "detokenize", "tokens": list(ids)}, f"detokenize {len(ids):,} ids"))

    async def ainfill(self, fim: Infill) -> list[int]:
        """A fill-in-the-middle prompt's token ids, built in the runner from the model's FIM tokens."""
        message = {"op": "infill", **asdict(fim)}
        return tokens_from(await self._ask(message, "build a fill-in-the-middle prompt")).ids

    async def acount(self, job: Job) -> int:
        """The tokens ``job``'s prompt takes (its chat template, system and tools rendered), not decoded."""
        message = {**job.message(""), "op": "count"}
        return len(tokens_from(await self._ask(message, "count a prompt's tokens")).ids)

    async def _ask(self, message: dict[str, Any], what: str) -> dict[str, Any]:
        """One reply to ``message``, within ``embed_timeout`` (``RunnerTimeoutError`` past it)."""
        rid, inbox = self._register(_AsyncInbox())
        finished = False
        try:
            self._send({**message, "id": rid})
            try:
                reply = await asyncio.wait_for(inbox.queue.get(), self.embed_timeout)
            except TimeoutError:
                raise RunnerTimeoutError(
                    f"the runner for {self.name} did not {what} within {self.embed_timeout:g} s; send fewer or "
                    "shorter inputs, or try again when the server is less busy"
                ) from None
            finished = True
            return reply
        finally:
            self._end(rid, finished)

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
                self._send({"op": "cancel", "id": rid})
            except EngineError:
                pass  # it stopped meanwhile: nothing left to cancel

    def close(self) -> None:
        """End the worker: its stdin closes, so it finishes and exits; past ``close_timeout`` it is
        killed. Returns within about ``close_timeout`` seconds whatever the worker does."""
        self._writer.stop(self.close_timeout)  # what is queued (a cancel) first, each within its deadline
        if self._proc.stdin is not None and not self._proc.stdin.closed:
            try:
                self._proc.stdin.close()
            except OSError:
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

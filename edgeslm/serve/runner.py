"""The server's side of a model runner: starts ``edgeslm.serve.worker`` and talks JSON lines.

Nothing here imports llama.cpp: the native code lives in the worker process, so a crash there
fails only that runner's in-flight requests (each gets an ``EngineError`` saying so) and the
server stays up; the next request starts a new runner.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from ..engines.base import SamplingParams
from ..errors import EdgeslmError, EngineError, error_named

READY_TIMEOUT = 120.0


Prompt = str | Sequence[dict[str, Any]] | Sequence[int]


@dataclass(frozen=True)
class Job:
    """One generation request as the runner receives it."""

    prompt: Prompt  # plain text, chat messages, or token ids
    sampling: SamplingParams = SamplingParams()
    max_tokens: int = -1
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # None: off; k: the sampled token's and the k most likely
    template: bool = False  # a plain prompt goes through the chat template as a user turn
    system: str | None = None
    context: tuple[int, ...] = ()  # token ids before the prompt (Ollama's ``context``)
    format: str | dict[str, Any] | None = None  # "json" or a JSON schema: constrained output
    return_prompt_ids: bool = False

    def message(self, rid: str) -> dict[str, Any]:
        fields = asdict(self)
        fields["sampling"] = {k: v for k, v in fields["sampling"].items() if k != "grammar"}
        return {"op": "generate", "id": rid, **fields}


@dataclass(frozen=True)
class Chunk:
    text: str
    token: int | None
    logprob: float | None = None  # with logprobs: the token's own text, log-probability and the likeliest
    top: tuple[tuple[str, float], ...] = ()
    piece: str = ""


@dataclass(frozen=True)
class Done:
    finish: str  # 'stop' or 'length'
    prompt_tokens: int
    completion_tokens: int
    prompt_seconds: float
    generation_seconds: float
    prompt_ids: tuple[int, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class Embeddings:
    vectors: list[list[float]]
    tokens: int


class RunnerLike(Protocol):
    """What the server needs of a runner (the tests' fake runner provides the same)."""

    name: str
    info: dict[str, Any]

    @property
    def alive(self) -> bool: ...

    @property
    def pid(self) -> int: ...

    def agenerate(self, job: Job) -> AsyncIterator[Chunk | Done]: ...

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
    ) -> None:
        self.name = name
        args = json.dumps({
            "name": name, "slots": slots, "ctx_per_slot": ctx_per_slot, "threads": threads, "home": home,
            "prompt_cache": prompt_cache,
        })  # fmt: skip
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "edgeslm.serve.worker", args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C at the terminal stops the server, which stops its runners
        )  # fmt: skip
        self._lock = threading.Lock()
        self._queues: dict[str, _AsyncInbox] = {}  # request id -> where its replies go
        self._ids = itertools.count()
        self.info = self._wait_ready()
        self._reader = threading.Thread(target=self._read, name=f"runner-{name}", daemon=True)
        self._reader.start()

    def _wait_ready(self) -> dict[str, Any]:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        msg: dict[str, Any] = json.loads(line) if line else {}
        if msg.get("op") == "ready":
            return msg
        self._release()
        if not msg:
            raise EngineError(f"the runner for {self.name} exited while loading (code {self._proc.returncode})")
        raise _error(msg)

    @property
    def alive(self) -> bool:
        return self._proc.poll() is None

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:  # the half line of a runner killed mid-write: its end follows
                continue
            with self._lock:
                q = self._queues.get(str(msg.get("id")))
            if q is not None:
                q.put(msg)
        code = self._proc.wait()
        why = f"the runner for {self.name} stopped (exit code {code}) during this request; the next request restarts it"
        with self._lock:
            for q in self._queues.values():
                q.put({"op": "error", "kind": "EngineError", "message": why})

    def _write(self, msg: dict[str, Any]) -> None:
        assert self._proc.stdin is not None
        try:
            with self._lock:
                self._proc.stdin.write((json.dumps(msg) + "\n").encode())
                self._proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            raise EngineError(f"the runner for {self.name} has stopped; the next request restarts it") from None

    async def agenerate(self, job: Job) -> AsyncIterator[Chunk | Done]:
        """Stream a reply; closing the iterator early, or cancelling the task reading it (a client
        gone), cancels the request and frees its slot."""
        rid, inbox = self._register(_AsyncInbox())
        finished = False
        try:
            await asyncio.to_thread(self._write, job.message(rid))  # a long prompt may fill the pipe
            while True:
                event = _event(await inbox.queue.get())
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
            msg = await inbox.queue.get()
            if msg["op"] != "embedding":
                raise _error(msg)
            return Embeddings(msg["vectors"], int(msg["tokens"]))
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
        """End the worker (its stdin closes: it finishes and exits) and release the pipes."""
        self._release()
        self._reader.join(timeout=10)
        if self._proc.stdout is not None:
            self._proc.stdout.close()

    def _release(self) -> None:
        if self._proc.stdin is not None and not self._proc.stdin.closed:
            try:
                self._proc.stdin.close()
            except BrokenPipeError:
                pass
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if not hasattr(self, "_reader") and self._proc.stdout is not None:
            self._proc.stdout.close()


def _event(msg: dict[str, Any]) -> Chunk | Done:
    if msg["op"] == "chunk":
        top = tuple((str(t), float(lp)) for t, lp in msg.get("top", ()))
        return Chunk(msg["text"], msg["token"], msg.get("logprob"), top, msg.get("piece", ""))
    if msg["op"] == "done":
        fields = ("prompt_tokens", "completion_tokens", "prompt_seconds", "generation_seconds")
        return Done(msg["finish"], **{k: msg[k] for k in fields}, prompt_ids=tuple(msg.get("prompt_ids", ())))
    raise _error(msg)


def _error(msg: dict[str, Any]) -> EdgeslmError:
    """The worker's error as the same class here (an unknown kind becomes EngineError)."""
    return error_named(str(msg.get("kind")), str(msg.get("message")))

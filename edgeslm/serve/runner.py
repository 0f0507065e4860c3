"""The server's side of a model runner: starts ``edgeslm.serve.worker`` and talks JSON lines.

Nothing here imports llama.cpp: the native code lives in the worker process, so a crash there
fails only that runner's in-flight requests (each gets an ``EngineError`` saying so) and the
server stays up; the next request starts a new runner.
"""

from __future__ import annotations

import itertools
import json
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .. import errors
from ..engines.base import SamplingParams
from ..errors import EdgeslmError, EngineError

READY_TIMEOUT = 120.0


@dataclass(frozen=True)
class Chunk:
    text: str
    token: int | None


@dataclass(frozen=True)
class Done:
    finish: str  # 'stop', 'length' or 'cancelled'
    prompt_tokens: int
    completion_tokens: int
    prompt_seconds: float
    generation_seconds: float


class Runner:
    """One model in one worker process; ``generate`` may be called from many threads at once."""

    def __init__(self, name: str, *, slots: int = 4, ctx_per_slot: int = 2048, threads: int | None = None) -> None:
        self.name = name
        args = json.dumps({"name": name, "slots": slots, "ctx_per_slot": ctx_per_slot, "threads": threads})
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "edgeslm.serve.worker", args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self._lock = threading.Lock()
        self._queues: dict[str, queue.Queue[dict[str, Any]]] = {}
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
            msg = json.loads(line)
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

    def generate(
        self,
        prompt: str | Sequence[dict[str, str]] | Sequence[int],
        sampling: SamplingParams,
        *,
        max_tokens: int = -1,
        stop: Sequence[str] = (),
    ) -> Iterator[Chunk | Done]:
        """Stream a reply; closing the iterator early cancels the request and frees its slot."""
        rid = str(next(self._ids))
        q: queue.Queue[dict[str, Any]] = queue.Queue()
        with self._lock:
            self._queues[rid] = q
        finished = False
        try:
            message = {"op": "generate", "id": rid, "prompt": prompt, "sampling": asdict(sampling)}
            self._write({**message, "max_tokens": max_tokens, "stop": list(stop)})
            while True:
                msg = q.get()
                if msg["op"] == "chunk":
                    yield Chunk(msg["text"], msg["token"])
                elif msg["op"] == "done":
                    finished = True
                    fields = {k: msg[k] for k in ("prompt_tokens", "completion_tokens", "prompt_seconds")}
                    yield Done(msg["finish"], **fields, generation_seconds=msg["generation_seconds"])
                    return
                else:
                    finished = True
                    raise _error(msg)
        finally:
            with self._lock:
                self._queues.pop(rid, None)
            if not finished and self.alive:
                self._write({"op": "cancel", "id": rid})

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


def _error(msg: dict[str, Any]) -> EdgeslmError:
    """The worker's error as the same class here (an unknown kind becomes EngineError)."""
    cls = getattr(errors, str(msg.get("kind")), EngineError)
    if not (isinstance(cls, type) and issubclass(cls, EdgeslmError)):
        cls = EngineError
    return cls(str(msg.get("message")))

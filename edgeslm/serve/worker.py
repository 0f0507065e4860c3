"""A model runner process: ``python -m edgeslm.serve.worker``, one per loaded model.

It loads the model, then serves requests from JSON lines on stdin and answers with JSON lines
on stdout, decoding every request it holds in one batch (``engines.llamacpp_batch``); requests
beyond the free slots wait in order. Only this process loads native code, so a crash here fails
only its own requests. Messages in: ``{"op": "generate", "id", "prompt", "sampling",
"max_tokens", "stop"}``, ``{"op": "cancel", "id"}``. Out: ``{"op": "ready", ...}``, ``{"op":
"chunk", "id", "text", "token"}``, ``{"op": "done", "id", "finish", "prompt_tokens",
"completion_tokens", "prompt_seconds", "generation_seconds"}``, ``{"op": "error", "id", "kind",
"message"}``.
"""

from __future__ import annotations

import json
import os
import select
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..engines.base import SamplingParams
from ..errors import ContextOverflowError, EdgeslmError
from ..generation import TextStream, load


@dataclass
class _Request:
    id: str
    tokens: list[int]
    sampling: SamplingParams
    limit: int
    stop: list[str]
    received: float = field(default_factory=time.perf_counter)
    first: float | None = None
    count: int = 0
    text: TextStream | None = None


class _Lines:
    """Whole lines from a file descriptor, without blocking once ``ready`` said so."""

    def __init__(self, fd: int) -> None:
        self.fd, self.buf, self.closed = fd, b"", False

    def ready(self, timeout: float | None) -> bool:
        return b"\n" in self.buf or bool(select.select([self.fd], [], [], timeout)[0])

    def read(self) -> list[bytes]:
        if b"\n" not in self.buf:
            data = os.read(self.fd, 1 << 16)
            self.closed = not data
            self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        return lines


def _send(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def serve(name: str, slots: int, ctx_per_slot: int, threads: int | None) -> None:
    from ..engines.llamacpp_batch import BatchDecoder

    model = load(name, ctx=min(ctx_per_slot, 512), threads=threads)
    batch = BatchDecoder(model.engine, slots, ctx_per_slot)  # type: ignore[arg-type]
    _send({"op": "ready", "name": model.name, "slots": slots, "ctx_per_slot": ctx_per_slot, "pid": os.getpid()})
    lines, waiting, running = _Lines(sys.stdin.fileno()), deque[_Request](), dict[str, _Request]()
    while not lines.closed:
        idle = not running and not waiting
        while lines.ready(None if idle else 0):
            for raw in lines.read():
                _handle(raw, model, batch, waiting, running)
            idle = False
            if lines.closed:
                return
        while waiting and batch.free_slots():
            r = waiting.popleft()
            batch.add(r.id, r.tokens, r.sampling, r.limit)
            running[r.id] = r
        for ev in batch.step():
            _emit(model, batch, running, ev.request, ev.token, ev.finish)


def _handle(raw: bytes, model: Any, batch: Any, waiting: deque[_Request], running: dict[str, _Request]) -> None:
    msg = json.loads(raw)
    rid = str(msg.get("id"))
    if msg["op"] == "cancel":
        batch.cancel(rid)
        running.pop(rid, None)
        for r in [r for r in waiting if r.id == rid]:
            waiting.remove(r)
        return
    try:
        tokens = model.prompt_tokens(msg["prompt"])
        if len(tokens) >= batch.ctx_per_slot:
            raise ContextOverflowError(
                f"the prompt has {len(tokens):,} tokens but the context holds {batch.ctx_per_slot:,}; shorten it"
            )
        room = batch.ctx_per_slot - len(tokens)
        limit = room if msg["max_tokens"] == -1 else min(int(msg["max_tokens"]), room)
        stop = list(msg.get("stop", []))
        waiting.append(_Request(rid, tokens, SamplingParams(**msg["sampling"]), limit, stop, text=TextStream(stop)))
    except EdgeslmError as exc:
        _send({"op": "error", "id": rid, "kind": type(exc).__name__, "message": str(exc)})


def _emit(model: Any, batch: Any, running: dict[str, _Request], rid: str, token: int, finish: str | None) -> None:
    r = running.get(rid)
    if r is None:
        return
    now = time.perf_counter()
    r.first = r.first or now
    if finish != "stop":  # an end-of-generation token is not text
        r.count += 1
        assert r.text is not None
        text, stopped = r.text.feed(model.engine.token_bytes(token))
        _send({"op": "chunk", "id": rid, "text": text, "token": token})
        if stopped and finish is None:  # a stop string: the slot is freed now
            batch.cancel(rid)
            finish = "stop"
    if finish is None:
        return
    running.pop(rid)
    tail = r.text.finish() if r.text is not None else ""
    if tail:
        _send({"op": "chunk", "id": rid, "text": tail, "token": None})
    _send({
        "op": "done", "id": rid, "finish": finish, "prompt_tokens": len(r.tokens), "completion_tokens": r.count,
        "prompt_seconds": r.first - r.received, "generation_seconds": now - r.first,
    })  # fmt: skip


def main() -> None:
    args = json.loads(sys.argv[1])
    try:
        serve(args["name"], args["slots"], args["ctx_per_slot"], args.get("threads"))
    except EdgeslmError as exc:
        _send({"op": "failed", "kind": type(exc).__name__, "message": str(exc)})
        sys.exit(1)


if __name__ == "__main__":
    main()

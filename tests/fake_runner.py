"""A runner without a model, for the server's handlers: deterministic replies, adjustable speed.

The reply to any prompt is ``REPLY_WORDS`` words (" w0", " w1", ...) up to ``max_tokens``; a
prompt containing ``TOO-LONG`` is refused as llama.cpp's runner refuses an overlong prompt, and
one containing ``CRASH`` fails after two tokens as a killed runner does.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections.abc import AsyncIterator, Sequence
from typing import Any, ClassVar

from edgeslm.errors import ContextOverflowError, EngineError
from edgeslm.runner import Chunk, Done, Embeddings, Infill, Job, Tokens

REPLY_WORDS = 6
_PIDS = itertools.count(50_000)


def prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    return " ".join(str(m.get("content", "")) if isinstance(m, dict) else str(m) for m in prompt)


class FakeRunner:
    delay: ClassVar[float] = 0.0  # seconds per token
    embed_delay: ClassVar[float] = 0.0  # seconds per embedding request
    embeds_cancelled: ClassVar[list[str]] = []
    jobs: ClassVar[list[Job]] = []
    cancelled: ClassVar[list[str]] = []
    started: ClassVar[list[str]] = []
    handed: ClassVar[list[Any]] = []  # what each runner was started with (the manager: a ResolvedModel)

    def __init__(self, model: Any, *, slots: int, ctx_per_slot: int, threads: int | None, home: str, **_: Any) -> None:
        name = model if isinstance(model, str) else model.name  # the manager hands a ResolvedModel
        self.model, self.name, self.slots, self.ctx = model, name, slots, ctx_per_slot
        self.info: dict[str, Any] = {"slots": slots, "ctx_per_slot": ctx_per_slot}
        self.alive, self.pid = True, next(_PIDS)
        FakeRunner.started.append(name)
        FakeRunner.handed.append(model)

    @classmethod
    def reset(cls) -> None:
        cls.delay, cls.jobs, cls.cancelled, cls.started, cls.handed = 0.0, [], [], [], []
        cls.embed_delay, cls.embeds_cancelled = 0.0, []

    async def agenerate(self, job: Job) -> AsyncIterator[Chunk | Done]:
        FakeRunner.jobs.append(job)
        text = prompt_text(job.prompt)
        if "TOO-LONG" in text:
            raise ContextOverflowError(f"the prompt has 9,999 tokens but the context holds {self.ctx:,}; shorten it")
        count = REPLY_WORDS if job.max_tokens == -1 else min(REPLY_WORDS, job.max_tokens)
        finished = False
        try:
            for i in range(count):
                await asyncio.sleep(self.delay)
                if "CRASH" in text and i == 2:
                    raise EngineError(f"the runner for {self.name} stopped (exit code -9) during this request")
                piece = f" w{i}"
                yield Chunk(piece, 100 + i, -0.5 if job.logprobs is not None else None, (("x", -1.0),), piece)
            finished = True
            finish = "length" if count == job.max_tokens else "stop"
            prompt_ids = tuple(range(len(text.split()))) if job.return_prompt_ids else ()
            yield Done(finish, len(text.split()), count, 0.01, 0.02, prompt_ids)
        finally:
            if not finished:
                FakeRunner.cancelled.append(text)

    async def aembed(self, texts: Sequence[str], *, truncate: bool = False) -> Embeddings:
        try:
            await asyncio.sleep(self.embed_delay)
        except asyncio.CancelledError:
            FakeRunner.embeds_cancelled.extend(texts)
            raise
        vectors = [[b / 255 for b in hashlib.sha256(t.encode()).digest()[:4]] for t in texts]
        return Embeddings(vectors, sum(len(t.split()) for t in texts))

    async def atokenize(self, content: str, *, add_special: bool = False, parse_special: bool = True,
                        with_pieces: bool = False) -> Tokens:
        words = content.split()
        return Tokens([100 + i for i in range(len(words))], [w.encode() for w in words] if with_pieces else None)

    async def acount(self, job: Job) -> int:
        return len(str(job.prompt).split())

    async def ainfill(self, fim: Infill) -> list[int]:
        return [1, *(await self.atokenize(fim.prefix)).ids, 2, *(await self.atokenize(fim.suffix)).ids, 3]

    async def adetokenize(self, ids: Sequence[int]) -> str:
        return " ".join(f"w{i - 100}" for i in ids)

    def close(self) -> None:
        self.alive = False

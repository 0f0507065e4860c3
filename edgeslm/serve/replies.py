"""Running replies for both dialects: ``Generation.start`` holds the model (loading it off the
event loop), sends the job to its runner and waits for the first event, so that a refusal (a
prompt too long, a full queue) becomes an HTTP status rather than a broken stream. Iterating it
yields the runner's events, records time to first token, inter-token latency and token counts,
and releases the model when the reply ends or the client goes away (the runner then frees the
slot at once). Several replies (``start_all``, ``merged``), embeddings, and a whole reply for a
client that may leave (``collect``, ``unless_gone``) build on it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from starlette.requests import Request

from ..errors import EngineError, InvalidParameterError, RunnerTimeoutError
from ..runner import Chunk, Done, Embeddings, Infill, Job
from ..runner.manager import Lease
from ..store.resolve import ResolvedModel
from .state import ServerState, note, resolve, state

T = TypeVar("T")
# Seconds a reply may go without an event (a token, the end) before its runner is presumed hung
# and the request fails with a 503: long enough for a queued request to wait out the slots ahead.
REPLY_SILENCE = 900.0


async def next_event(events: Any, model: str) -> Any:
    """The runner's next event, or a RunnerTimeoutError after REPLY_SILENCE seconds of silence."""
    try:
        return await asyncio.wait_for(anext(events, None), REPLY_SILENCE)
    except asyncio.TimeoutError:
        raise RunnerTimeoutError(
            f"{model} sent nothing for {REPLY_SILENCE:g} s: its runner seems hung; retry, or unload it"
        ) from None


class Generation:
    """One running reply; iterate it exactly once (or ``aclose`` it)."""

    def __init__(self, st: ServerState, request: Request, lease: Lease, events: Any, first: Chunk | Done) -> None:
        self.st, self.request, self.lease, self._events, self._first = st, request, lease, events, first
        self.started = request.scope["state"]["started"]
        self.name = lease.name
        self.load_seconds = lease.load_seconds
        self.done: Done | None = None
        self._released = False

    @classmethod
    async def start(cls, request: Request, model: ResolvedModel, job: Job, keep_alive: float | None) -> Generation:
        model.info.check_generates(model.name)
        st = state(request)
        if st.deterministic and not job.sampling.deterministic:
            job = replace(job, sampling=replace(job.sampling, deterministic=True))
        limit = st.manager.params.ctx_per_slot
        if job.max_tokens > limit:
            raise InvalidParameterError(
                f"max_tokens {job.max_tokens:,} is more than the context holds ({limit:,} tokens per slot)"
            )
        lease = await hold(request, model, keep_alive)
        events = lease.runner.agenerate(job)
        try:
            first = await next_event(events, lease.name)
            if first is None:
                raise EngineError(f"the runner for {lease.name} ended the reply without an event")
        except BaseException:
            await events.aclose()
            st.manager.release(lease)
            raise
        return cls(st, request, lease, events, first)

    async def __aiter__(self) -> AsyncIterator[Chunk | Done]:
        metrics, model = self.st.metrics, self.name
        ttft, itl = metrics.ttft.labels(model), metrics.itl.labels(model)
        first: float | None = None
        last: float | None = None
        try:
            event: Chunk | Done | None = self._first
            while event is not None:
                now = time.perf_counter()
                if isinstance(event, Chunk) and event.token is not None:
                    if last is None:
                        first = now
                        ttft.observe(now - self.started)
                    else:
                        itl.observe(now - last)
                    last = now
                elif isinstance(event, Done):
                    self.done = event
                    metrics.prompt_tokens.labels(model).inc(event.prompt_tokens)
                    metrics.generated_tokens.labels(model).inc(event.completion_tokens)
                    metrics.activity.add(
                        model, None if first is None else first - self.started, event.completion_tokens,
                        0.0 if first is None or last is None else last - first,
                    )
                    if event.drafted:
                        metrics.draft_tokens.labels(model).inc(event.drafted)
                        metrics.draft_accepted.labels(model).inc(event.accepted)
                    note(self.request, tokens_in=event.prompt_tokens, tokens_out=event.completion_tokens)
                yield event
                event = await next_event(self._events, model)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if not self._released:
            self._released = True
            await self._events.aclose()
            self.st.manager.release(self.lease)


async def start_all(
    request: Request, model: ResolvedModel, jobs: list[Job], keep_alive: float | None
) -> list[Generation]:
    """Several replies to one request (OpenAI's ``n``), each in its own slot, started together; if
    one is refused, the others are closed and the refusal is the answer."""
    started = await asyncio.gather(*(Generation.start(request, model, job, keep_alive) for job in jobs),
                                   return_exceptions=True)
    gens = [g for g in started if isinstance(g, Generation)]
    failed = [e for e in started if isinstance(e, BaseException)]
    if failed:
        await asyncio.gather(*(g.aclose() for g in gens), return_exceptions=True)
        raise failed[0]
    return gens


async def merged(gens: list[Generation]) -> AsyncIterator[tuple[int, Chunk | Done]]:
    """The events of several replies as they come, each with its reply's index. Each pump reads its
    reply through ``next_event``'s deadline and puts its failure (or its end) on the queue, so an
    item always arrives within REPLY_SILENCE; the queue's own deadline is a backstop past that."""
    if len(gens) == 1:
        async for ev in gens[0]:
            yield 0, ev
        return
    queue: asyncio.Queue[tuple[int, Chunk | Done | BaseException | None]] = asyncio.Queue()

    async def pump(i: int, gen: Generation) -> None:
        try:
            async for ev in gen:
                await queue.put((i, ev))
            await queue.put((i, None))
        except BaseException as exc:  # handed to the reader, which raises it
            await queue.put((i, exc))

    tasks = [asyncio.ensure_future(pump(i, g)) for i, g in enumerate(gens)]
    try:
        running = len(gens)
        while running:
            try:
                i, item = await asyncio.wait_for(queue.get(), REPLY_SILENCE + 60)
            except asyncio.TimeoutError:
                raise RunnerTimeoutError(f"{gens[0].name}'s replies went silent; retry, or unload it") from None
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(g.aclose() for g in gens), return_exceptions=True)


async def hold(request: Request, model: ResolvedModel, keep_alive: float | None) -> Lease:
    """The model's runner for this request (loaded off the event loop if needed)."""
    st = state(request)
    lease = await asyncio.to_thread(st.manager.acquire, model, keep_alive)
    note(request, model=lease.name)
    return lease


async def embed(
    request: Request, name: str, texts: Sequence[str | Sequence[int]], keep_alive: float | None,
    dimensions: int | None, *, truncate: bool = False
) -> tuple[Lease, Embeddings]:
    """Embed ``texts`` with ``name`` (no texts: just load it), counting the tokens; an over-long
    text is cut to the model's limit only with ``truncate``."""
    if dimensions is not None:
        raise InvalidParameterError("dimensions is not supported: the model's embedding size is used")
    lease = await hold(request, await resolve(request, name), keep_alive)
    try:
        work = lease.runner.aembed(texts, truncate=truncate) if texts else None
        result = await unless_gone(request, work) if work is not None else Embeddings([], 0)
    finally:
        state(request).manager.release(lease)
    note(request, tokens_in=result.tokens)
    state(request).metrics.prompt_tokens.labels(lease.name).inc(result.tokens)
    return lease, result


@dataclass
class Reply:
    text: str
    tokens: list[int]
    chunks: list[Chunk]  # those with a token (for log-probabilities)
    done: Done


class ClientGone(Exception):
    """The client disconnected before a non-streamed reply was ready."""


async def collect(request: Request, gen: Generation) -> Reply:
    """Run a reply to its end; stop (and free the slot) if the client disconnects meanwhile."""

    async def drain() -> Reply:
        parts, tokens, chunks = [], [], []
        async for ev in gen:
            if isinstance(ev, Chunk):
                parts.append(ev.text)
                if ev.token is not None:
                    tokens.append(ev.token)
                    chunks.append(ev)
        assert gen.done is not None
        return Reply("".join(parts), tokens, chunks, gen.done)

    try:
        return await unless_gone(request, drain())
    finally:
        await gen.aclose()


async def infill_ids(request: Request, model: ResolvedModel, fim: Infill, keep_alive: float | None) -> list[int]:
    """A fill-in-the-middle prompt's token ids, built on the model's runner from its FIM tokens."""
    lease = await hold(request, model, keep_alive)
    try:
        return await unless_gone(request, lease.runner.ainfill(fim))
    finally:
        state(request).manager.release(lease)


async def unless_gone(request: Request, work: Awaitable[T]) -> T:
    """``work``'s result, unless the client disconnects first: then ``work`` is cancelled (its
    runner frees the slot or forgets the request) and ``ClientGone`` raised."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.5)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise ClientGone()
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

"""What both dialects share: the server's state, parsing bodies, and running one generation.

``Generation.start`` holds the model (loading it off the event loop), sends the job to its
runner and waits for the first event, so that a refusal (a prompt too long, a full queue)
becomes an HTTP status rather than a broken stream. Iterating it yields the runner's events,
records time to first token, inter-token latency and token counts, and releases the model
when the reply ends or the client goes away (the runner then frees the slot at once).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request

from ..config import Settings
from ..errors import EngineError, InvalidParameterError, ModelNotFoundError, RunnerTimeoutError
from ..formats.folder_files import chat_template_of
from ..formats.gguf_header import read_gguf_header
from ..runner import Chunk, Done, Embeddings, Job
from ..store import Store, parse_name
from ..store.records import Manifest
from ..tools.native import ToolFormat
from ..tools.native import detect as detect_tool_format
from .audit import AuditLog
from .keys import KeyRing
from .manager import Lease, ModelManager
from .metrics import Metrics

B = TypeVar("B", bound=BaseModel)
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


@dataclass
class ServerState:
    settings: Settings
    manager: ModelManager
    metrics: Metrics
    keys: KeyRing | None = None
    audit: AuditLog | None = None
    audit_prompts: bool = False
    started: float = field(default_factory=time.time)
    _store: Store | None = None
    _tool_formats: dict[str, ToolFormat] = field(default_factory=dict)  # by manifest digest

    def store(self) -> Store:
        """The store, opened (and swept) once; its manifests are read fresh on every lookup."""
        if self._store is None:
            from ..store.uploads import sweep_uploads

            self._store = Store.open(self.settings.models_dir)
            sweep_uploads(self._store)  # uploads no create used within a day
        return self._store

    def manifest(self, name: str) -> Manifest:
        manifest = self.store().find(parse_name(name))
        if manifest is None:
            raise ModelNotFoundError(f"model '{name}' not found; 'GET /api/tags' lists the models this server has")
        return manifest

    async def tool_format(self, name: str) -> ToolFormat:
        """The tool format of the model's chat template (read once per model); GENERIC for a model
        not found here (the request then fails where it is run, with the usual message)."""
        try:
            manifest = self.manifest(name)
        except ModelNotFoundError:
            return ToolFormat.GENERIC
        if manifest.digest not in self._tool_formats:
            template = await asyncio.to_thread(chat_template, manifest, self.store().model_path(manifest))
            self._tool_formats[manifest.digest] = detect_tool_format(template)
        return self._tool_formats[manifest.digest]


def chat_template(manifest: Manifest, path: Path) -> str | None:
    """A stored model's chat template: a created model's TEMPLATE, a folder's files, else the GGUF's metadata."""
    if manifest.defaults.get("template"):
        return str(manifest.defaults["template"])
    if manifest.layers:
        return chat_template_of(path)
    template = read_gguf_header(path, label=str(manifest.name)).metadata.get("tokenizer.chat_template")
    return template if isinstance(template, str) else None


@dataclass(frozen=True)
class Stored:
    """What ``create`` stored with a model (its system prompt, parameters and example messages),
    read once per request."""

    system: str | None
    parameters: dict[str, Any]
    examples: list[dict[str, Any]]

    def conversation(self, messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str | None]:
        """Ollama's order: the example messages, then the request's; and the system prompt to put
        first (none when the request brings its own)."""
        own_system = bool(messages) and messages[0].get("role") == "system"
        return [dict(m) for m in self.examples] + messages, None if own_system else self.system


def stored(request: Request, name: str) -> Stored:
    defaults = state(request).manifest(name).defaults
    return Stored(defaults.get("system"), dict(defaults.get("parameters") or {}),
                  list(defaults.get("messages") or []))  # fmt: skip


def state(request: Request) -> ServerState:
    st: ServerState = request.app.state.edgeslm
    return st


def note(request: Request, **fields: Any) -> None:
    """Facts for this request's audit line (model, tokens, prompt)."""
    request.scope.setdefault("state", {}).setdefault("audit", {}).update(fields)


async def parse(request: Request, schema: type[B]) -> B:
    """The body as ``schema``: a JSON object, or a 400 that names the first problem."""
    raw = await request.body()
    try:
        data = json.loads(raw or b"{}")
    except json.JSONDecodeError as exc:
        raise InvalidParameterError(f"the body is not valid JSON ({exc.msg} at position {exc.pos})") from None
    except UnicodeDecodeError:
        raise InvalidParameterError("the body is not valid JSON (it is not UTF-8)") from None
    except RecursionError:
        raise InvalidParameterError("the body is nested too deeply") from None
    if not isinstance(data, dict):
        raise InvalidParameterError(f"the body must be a JSON object, not a JSON {type(data).__name__}")
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise InvalidParameterError(describe_validation(exc)) from None


def describe_validation(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors(include_url=False, include_input=False)[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        problems.append(f"{where}: {err['msg']}")
    more = f" (and {exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
    return "invalid request: " + "; ".join(problems) + more


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
    async def start(cls, request: Request, name: str, job: Job, keep_alive: float | None) -> Generation:
        st = state(request)
        limit = st.manager.params.ctx_per_slot
        if job.max_tokens > limit:
            raise InvalidParameterError(
                f"max_tokens {job.max_tokens:,} is more than the context holds ({limit:,} tokens per slot)"
            )
        lease = await hold(request, name, keep_alive)
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
                    )  # fmt: skip
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


async def start_all(request: Request, name: str, jobs: list[Job], keep_alive: float | None) -> list[Generation]:
    """Several replies to one request (OpenAI's ``n``), each in its own slot, started together; if
    one is refused, the others are closed and the refusal is the answer."""
    started = await asyncio.gather(*(Generation.start(request, name, job, keep_alive) for job in jobs),
                                   return_exceptions=True)  # fmt: skip
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


async def hold(request: Request, name: str, keep_alive: float | None) -> Lease:
    """The model's runner for this request (loaded off the event loop if needed)."""
    st = state(request)
    lease = await asyncio.to_thread(st.manager.acquire, name, keep_alive)
    note(request, model=lease.name)
    return lease


async def embed(
    request: Request, name: str, texts: list[str], keep_alive: float | None, dimensions: int | None
) -> tuple[Lease, Embeddings]:
    """Embed ``texts`` with ``name`` (no texts: just load it), counting the tokens."""
    if dimensions is not None:
        raise InvalidParameterError("dimensions is not supported: the model's embedding size is used")
    lease = await hold(request, name, keep_alive)
    try:
        result = await unless_gone(request, lease.runner.aembed(texts)) if texts else Embeddings([], 0)
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


UPLOAD_SILENCE = 120.0  # seconds an upload may go without a byte


async def body_chunks(request: Request, *, resumable: bool = False) -> AsyncIterator[bytes]:
    """The request's body as it arrives; every wait has a deadline (``UPLOAD_SILENCE``). A sender
    that stops loses the upload, or — ``resumable`` — keeps what arrived, as does one cut off."""
    then = "resume it" if resumable else "nothing was kept"
    chunks = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(chunks.__anext__(), UPLOAD_SILENCE)
        except StopAsyncIteration:
            return
        except ClientDisconnect:
            if resumable:
                return
            raise
        except asyncio.TimeoutError:
            raise RunnerTimeoutError(f"the upload stalled for {UPLOAD_SILENCE:g} s; {then}") from None
        yield chunk

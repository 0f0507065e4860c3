"""OpenAI's API: chat completions, completions, embeddings and models, with SSE streaming that
ends in ``data: [DONE]``. Unset sampling fields take llama.cpp's defaults, as llama-server does."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ...engines.base import SamplingParams
from ...errors import EdgeslmError, InvalidParameterError, ModelNotFoundError, http_status_for
from ...runner import Chunk, Done, Infill, Job
from ...store.records import Manifest
from ...store.resolve import stored
from ...tools import ToolReply
from ...tools.plan import calls_from, conversation, openai_calls
from ..bodies import parse
from ..http_errors import error_body
from ..replies import Reply, collect, infill_ids, merged, start_all
from ..replies import embed as embed_texts
from ..state import note, plan_for, resolve, state
from .schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, _Sampling

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1")
FINGERPRINT = "edgeslm"


SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "presence_penalty",
                   "frequency_penalty", "seed", "deterministic")


def sampling_of(body: _Sampling, stored: Mapping[str, Any] | None = None) -> SamplingParams:
    """llama-server's mapping: unset fields take a created model's stored parameters (as Ollama's
    OpenAI layer merges a Modelfile's), else llama.cpp's defaults; the penalties are its penalties sampler."""
    return SamplingParams.over(stored or {}, {k: getattr(body, k) for k in SAMPLING_FIELDS})


def stored_limits(stored: Mapping[str, Any], stops: tuple[str, ...]) -> tuple[int | None, tuple[str, ...]]:
    """A created model's num_predict (when positive) and stop strings, where the request gives none."""
    limit = stored.get("num_predict")
    return (limit if isinstance(limit, int) and limit > 0 else None), stops or tuple(stored.get("stop") or ())


def limit_of(*values: int | None) -> int:
    for v in values:
        if v is not None:
            if v < 1:
                raise InvalidParameterError(f"max_tokens {v} is out of range; valid: 1 up to the context size")
            return v
    return -1


def sse(events: AsyncIterator[dict[str, Any]], path: str) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        try:
            async for event in events:
                yield b"data: " + json.dumps(event).encode() + b"\n\n"
        except EdgeslmError as exc:  # the status is sent already: the error is an event
            yield b"data: " + json.dumps(error_body(path, http_status_for(exc), str(exc))).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def chat_logprobs(chunks: list[Chunk]) -> dict[str, Any]:
    def entry(token: str, lp: float) -> dict[str, Any]:
        return {"token": token, "logprob": lp, "bytes": list(token.encode())}

    content = [{**entry(c.piece, c.logprob), "top_logprobs": [entry(t, p) for t, p in c.top]}
               for c in chunks if c.logprob is not None]
    return {"content": content}


def completion_logprobs(chunks: list[Chunk]) -> dict[str, Any]:
    offsets, at = [], 0
    for c in chunks:
        offsets.append(at)
        at += len(c.piece)
    return {
        "tokens": [c.piece for c in chunks],
        "token_logprobs": [c.logprob for c in chunks],
        "top_logprobs": [dict(c.top) for c in chunks],
        "text_offset": offsets,
    }


def usage_of(dones: list[Done]) -> dict[str, int]:
    """One prompt, n completions: the prompt counted once, as OpenAI counts it."""
    prompt, completion = dones[0].prompt_tokens, sum(d.completion_tokens for d in dones)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def jobs_of(job: Job, n: int) -> list[Job]:
    """n copies of ``job``; with a seed, choice i samples with seed + i (else all n would be alike)."""
    seed = job.sampling.seed
    return [job if seed is None or i == 0 else replace(job, sampling=replace(job.sampling, seed=seed + i))
            for i in range(n)]


def chat_messages(body: ChatCompletionRequest) -> list[dict[str, Any]]:
    """The conversation in the shape ``tools.plan`` reads: role, text, calls made, the call answered."""
    return [{"role": "system" if m.role == "developer" else m.role, "content": m.text(),
             "tool_calls": calls_from(m.tool_calls, f"messages[{i}]") if m.role == "assistant" else (),
             "tool_call_id": m.tool_call_id} for i, m in enumerate(body.messages)]


def chat_message(reply: ToolReply) -> dict[str, Any]:
    if reply.calls:  # text before the calls (a native format's "auto") comes with them
        return {"role": "assistant", "content": reply.content, "tool_calls": openai_calls(reply.calls)}
    return {"role": "assistant", "content": reply.content}


def chat_finish(reply: ToolReply, done: Done) -> str:
    return "tool_calls" if reply.calls else done.finish


@router.post("/chat/completions")
async def chat_completions(request: Request) -> Response:
    body = await parse(request, ChatCompletionRequest)
    note(request, model=body.model)
    n = body.choices(state(request).manager.params.slots)
    given = chat_messages(body)
    plan, found = await plan_for(request, body.model, given, body.tools, body.tool_choice, body.parallel_tool_calls,
                                 has_format=body.response_format is not None)
    model = stored(found)
    messages, system = model.conversation(conversation(given, plan, ids_required=True))
    if state(request).audit_prompts:
        note(request, prompt=json.dumps(messages)[:100_000])
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    fmt = plan.format() or (body.response_format.spec() if body.response_format else None)
    default_limit, stops = stored_limits(model.parameters, body.stops())
    limit = limit_of(body.max_completion_tokens, body.max_tokens, default_limit)
    job = Job(messages, sampling_of(body, model.parameters), limit, stops, logprobs, system=system, format=fmt,
              tooling=plan.tooling(), truncate=body.truncation == "auto")
    gens = await start_all(request, found, jobs_of(job, n), None)
    rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    head = {"id": rid, "created": created, "model": gens[0].name, "system_fingerprint": FINGERPRINT}
    if not body.stream:
        replies = await asyncio.gather(*(collect(request, g) for g in gens))
        read = [plan.read(r.text) for r in replies]
        choices = [{"index": i, "message": chat_message(t), "finish_reason": chat_finish(t, r.done),
                    "logprobs": chat_logprobs(r.chunks) if logprobs is not None else None}
                   for i, (r, t) in enumerate(zip(replies, read, strict=True))]
        return JSONResponse({**head, "object": "chat.completion", "choices": choices,
                             "usage": usage_of([r.done for r in replies])})
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    async def events() -> AsyncIterator[dict[str, Any]]:
        def chunk(i: int, delta: dict[str, Any], finish: str | None, lp: Any = None) -> dict[str, Any]:
            choice = {"index": i, "delta": delta, "logprobs": lp, "finish_reason": finish}
            return {**head, "object": "chat.completion.chunk", "choices": [choice]}

        for i in range(n):
            yield chunk(i, {"role": "assistant", "content": ""}, None)
        dones: list[Done] = []
        text, sent = [""] * n, [""] * n  # with tools: the reply so far, and the text streamed of it
        async for i, ev in merged(gens):
            if isinstance(ev, Chunk):
                if not plan.active:
                    if ev.text or ev.logprob is not None:
                        lp = chat_logprobs([ev]) if ev.logprob is not None else None
                        yield chunk(i, {"content": ev.text}, None, lp)
                    continue
                text[i] += ev.text
                free = text[i][: plan.free(text[i])]
                if len(free) > len(sent[i]):
                    yield chunk(i, {"content": free[len(sent[i]) :]}, None)
                    sent[i] = free
                continue
            dones.append(ev)
            reply = plan.read(text[i])
            rest = plan.rest(reply, sent[i])
            if plan.active and rest:
                yield chunk(i, {"content": rest}, None)
            if reply.calls:
                calls = [{"index": k, **c} for k, c in enumerate(openai_calls(reply.calls))]
                yield chunk(i, {"tool_calls": calls}, None)
            yield chunk(i, {}, chat_finish(reply, ev))
        if include_usage:
            yield {**head, "object": "chat.completion.chunk", "choices": [], "usage": usage_of(dones)}

    return sse(events(), request.url.path)


@router.post("/completions")
async def completions(request: Request) -> Response:
    body = await parse(request, CompletionRequest)
    note(request, model=body.model)
    n = body.choices(state(request).manager.params.slots)
    if body.echo:
        raise InvalidParameterError("echo is not supported; send the prompt alone")
    if body.suffix and not isinstance(body.prompt, str):
        raise InvalidParameterError("suffix (fill-in-the-middle) needs the prompt as text: the code before the cursor")
    prompt: str | list[int]
    if isinstance(body.prompt, list) and body.prompt and all(isinstance(p, str) for p in body.prompt):
        if len(body.prompt) != 1:
            raise InvalidParameterError("a list of several prompts is not supported; send one prompt per request")
        prompt = str(body.prompt[0])
    else:
        prompt = body.prompt if isinstance(body.prompt, str) else [int(t) for t in body.prompt]
    if not prompt:
        raise InvalidParameterError("the prompt is empty")
    if state(request).audit_prompts:
        note(request, prompt=str(prompt)[:100_000])
    found = await resolve(request, body.model)
    if body.suffix:  # the model's FIM tokens around prompt and suffix
        prompt = await infill_ids(request, found, Infill(str(prompt), body.suffix), None)
    parameters = stored(found).parameters
    default_limit, stops = stored_limits(parameters, body.stops())
    job = Job(prompt, sampling_of(body, parameters), limit_of(body.max_tokens, default_limit), stops, body.logprobs)
    gens = await start_all(request, found, jobs_of(job, n), None)
    head = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
            "model": gens[0].name, "system_fingerprint": FINGERPRINT}
    if not body.stream:
        replies: list[Reply] = list(await asyncio.gather(*(collect(request, g) for g in gens)))
        choices = [{"text": r.text, "index": i, "finish_reason": r.done.finish,
                    "logprobs": completion_logprobs(r.chunks) if body.logprobs is not None else None}
                   for i, r in enumerate(replies)]
        return JSONResponse({**head, "choices": choices, "usage": usage_of([r.done for r in replies])})
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    async def events() -> AsyncIterator[dict[str, Any]]:
        dones: list[Done] = []
        async for i, ev in merged(gens):
            if isinstance(ev, Chunk):
                lp = completion_logprobs([ev]) if ev.logprob is not None else None
                yield {**head, "choices": [{"text": ev.text, "index": i, "logprobs": lp, "finish_reason": None}]}
            else:
                dones.append(ev)
                yield {**head, "choices": [{"text": "", "index": i, "logprobs": None, "finish_reason": ev.finish}]}
        if include_usage:
            yield {**head, "choices": [], "usage": usage_of(dones)}

    return sse(events(), request.url.path)


@router.post("/embeddings")
async def embeddings(request: Request) -> Response:
    body = await parse(request, EmbeddingRequest)
    note(request, model=body.model)
    lease, result = await embed_texts(request, body.model, body.texts(), None, body.dimensions)

    def encode(vec: list[float]) -> list[float] | str:
        if body.encoding_format == "base64":
            return base64.b64encode(np.asarray(vec, dtype="<f4").tobytes()).decode()
        return vec

    data = [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(result.vectors)]
    tokens = {"prompt_tokens": result.tokens, "total_tokens": result.tokens}
    return JSONResponse({"object": "list", "data": data, "model": lease.name, "usage": tokens})


def model_object(m: Manifest) -> dict[str, Any]:
    try:
        created = int(dt.datetime.fromisoformat(m.created).timestamp())
    except ValueError:
        created = 0
    return {"id": str(m.name), "object": "model", "created": created, "owned_by": "edgeslm"}


@router.get("/models")
async def models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [model_object(m) for m in state(request).store().manifests()]}


@router.get("/models/{model:path}")
async def model(request: Request, model: str) -> dict[str, Any]:
    try:
        return model_object(state(request).manifest(model))
    except ModelNotFoundError:
        raise ModelNotFoundError(f"the model '{model[:200]}' does not exist") from None

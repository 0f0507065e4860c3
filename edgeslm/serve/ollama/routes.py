"""Ollama's API (``docs/api.md``): generate, chat, embed, tags, show, ps, version, and the store's
verbs in ``admin``. Bodies as Ollama's clients send them; replies with Ollama's fields and
NDJSON streaming; durations in nanoseconds."""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from ...engines.base import SamplingParams
from ...errors import EdgeslmError, InvalidParameterError, http_status_for
from ...runner import Chunk, Done, Infill, Job
from ...store import parse_name
from ...store.records import Manifest
from ...store.resolve import ResolvedModel, stored
from ...tools import ToolReply
from ...tools.native import ToolFormat
from ...tools.native import detect as detect_tool_format
from ...tools.plan import calls_from, conversation, ollama_calls
from ...units import format_params
from ...version import __version__
from ..bodies import parse
from ..http_errors import public_message
from ..limits import MAX_TOP_LOGPROBS
from ..replies import Generation, collect, hold, infill_ids
from ..replies import embed as embed_texts
from ..state import note, plan_for, resolve, state
from .schemas import (
    ChatRequest,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequest,
    Options,
    check_stops,
    parse_keep_alive,
)

log = logging.getLogger(__name__)
router = APIRouter()
NDJSON = "application/x-ndjson"
NEVER = "2318-11-28T00:00:00Z"  # Ollama's "never expires"
# Ollama's defaults (api/types.go DefaultOptions)
DEFAULTS = {"temperature": 0.8, "top_k": 40, "top_p": 0.9, "min_p": 0.0, "repeat_penalty": 1.1, "repeat_last_n": 64}
SAMPLING_KEYS = ("temperature", "top_k", "top_p", "min_p", "repeat_penalty", "repeat_last_n", "presence_penalty",
                 "frequency_penalty", "seed", "deterministic")


def now_iso(in_seconds: float = 0.0) -> str:
    when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=in_seconds)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def ns(seconds: float) -> int:
    return int(seconds * 1e9)


@dataclass(frozen=True)
class JobSettings:
    sampling: SamplingParams
    max_tokens: int
    stop: tuple[str, ...]
    num_ctx: int | None  # the request's own context where smaller than the slot's


def job_settings(request: Request, options: Options | None, stored: dict[str, Any]) -> JobSettings:
    """Sampling, token limit, stop strings and context: Ollama's defaults < the model's stored
    parameters < options. A ``num_ctx`` below the server's context per slot holds the request to it."""
    given = options.model_dump(exclude_none=True) if options else {}
    merged = {**DEFAULTS, **stored, **given}
    ignored = sorted(k for k in given if k not in (*SAMPLING_KEYS, "num_ctx", "num_predict", "stop"))
    if ignored:
        log.info("options not used by llama.cpp's samplers here, ignored: %s", ", ".join(ignored)[:200])
    seed = merged.get("seed")
    sampling = SamplingParams(
        **{k: merged[k] for k in SAMPLING_KEYS if k in merged and k != "seed"},
        seed=None if seed is None or seed == -1 else seed,
    )
    ctx = state(request).manager.params.ctx_per_slot
    num_ctx = merged.get("num_ctx")
    if num_ctx is not None and not (isinstance(num_ctx, int) and 1 <= num_ctx <= ctx):
        raise InvalidParameterError(
            f"num_ctx {num_ctx} is more than this server's context per slot ({ctx:,}); restart 'edgeslm serve --ctx N'"
        )
    num_predict = merged.get("num_predict", -1)
    if not isinstance(num_predict, int) or num_predict == 0 or num_predict < -2 or num_predict > ctx:
        raise InvalidParameterError(
            f"num_predict {num_predict} is out of range; valid: -1 (no limit), -2 (fill the context) or 1 to {ctx:,}"
        )
    return JobSettings(sampling, -1 if num_predict < 0 else num_predict, check_stops(merged.get("stop")),
                       num_ctx if num_ctx is not None and num_ctx < ctx else None)


def check_logprobs(wanted: bool | None, top: int | None) -> int | None:
    if not wanted:
        return None
    top = top or 0
    if not 0 <= top <= MAX_TOP_LOGPROBS:
        raise InvalidParameterError(f"top_logprobs {top} is out of range; valid: 0 to {MAX_TOP_LOGPROBS}")
    return top


def logprobs_of(chunks: list[Chunk]) -> list[dict[str, Any]]:
    return [
        {"token": c.piece, "logprob": c.logprob, "top_logprobs": [{"token": t, "logprob": lp} for t, lp in c.top]}
        for c in chunks
        if c.logprob is not None
    ]


def final_fields(gen: Generation, done: Done) -> dict[str, Any]:
    return {
        "done": True,
        "done_reason": done.finish,
        "total_duration": ns(time.perf_counter() - gen.started),
        "load_duration": ns(gen.load_seconds),
        "prompt_eval_count": done.prompt_tokens,
        "prompt_eval_duration": ns(done.prompt_seconds),
        "eval_count": done.completion_tokens,
        "eval_duration": ns(done.generation_seconds),
    }


def ndjson(lines: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        try:
            async for line in lines:
                yield json.dumps(line).encode() + b"\n"
        except EdgeslmError as exc:  # after the first line the status is sent: the error is a line
            yield json.dumps({"error": public_message(str(exc))}).encode() + b"\n"
            log.warning("a stream ended with %s (HTTP %d)", type(exc).__name__, http_status_for(exc))

    return StreamingResponse(body(), media_type=NDJSON)


@router.get("/")
@router.head("/")
async def root() -> Response:
    return PlainTextResponse("edgeslm is running")


@router.get("/api/version")
@router.head("/api/version")
async def version() -> dict[str, str]:
    return {"version": __version__}


async def _load_only(request: Request, model: ResolvedModel, keep_alive: float | None, **extra: Any) -> JSONResponse:
    """A request with no prompt loads the model (or unloads it with keep_alive 0), as Ollama does."""
    st = state(request)
    if keep_alive == 0:
        st.manager.unload(model)
        reason = "unload"
    else:
        st.manager.release(await hold(request, model, keep_alive))
        reason = "load"
    return JSONResponse({"model": model.name, "created_at": now_iso(), **extra, "done": True, "done_reason": reason})


@router.post("/api/generate")
async def generate(request: Request) -> Response:
    body = await parse(request, GenerateRequest)
    note(request, model=body.model)
    if body.template:
        raise InvalidParameterError(
            "request-supplied templates are refused; the model's own chat template is used "
            "(or send raw=true with a prompt you formatted yourself)"
        )
    if body.images:
        raise InvalidParameterError("images are not supported: edgeslm serves text models")
    if body.suffix and body.context:
        raise InvalidParameterError("suffix (fill-in-the-middle) takes no context; send the code before the cursor "
                                    "as the prompt")
    keep = parse_keep_alive(body.keep_alive)
    found = await resolve(request, body.model)
    if not body.prompt and not body.context:
        return await _load_only(request, found, keep, response="")
    model = stored(found)
    settings = job_settings(request, body.options, model.parameters)
    if state(request).audit_prompts:
        note(request, prompt=body.prompt)
    prompt: Any = body.prompt
    fim = bool(body.suffix)  # the model's FIM tokens around prompt and suffix, as Ollama's templates write them
    if fim:
        fim_job = Infill(body.prompt, body.suffix or "", truncate=body.truncate, max_tokens=settings.max_tokens,
                         num_ctx=settings.num_ctx)
        prompt = await infill_ids(request, found, fim_job, keep)
    elif not body.raw and not body.context and model.examples:  # the model's example messages come first
        prompt = [*model.examples, {"role": "user", "content": body.prompt}]
    job = Job(
        prompt, settings.sampling, settings.max_tokens, settings.stop, check_logprobs(body.logprobs, body.top_logprobs),
        template=not (body.raw or fim), system=None if body.raw or fim else (body.system or model.system),
        context=tuple(body.context or ()), format=body.format, return_prompt_ids=True, truncate=body.truncate,
        num_ctx=settings.num_ctx,
    )
    gen = await Generation.start(request, found, job, keep)
    if not body.stream:
        reply = await collect(request, gen)
        out = {"model": gen.name, "created_at": now_iso(), "response": reply.text, **final_fields(gen, reply.done)}
        out["context"] = [*reply.done.prompt_ids, *reply.tokens]
        if job.logprobs is not None:
            out["logprobs"] = logprobs_of(reply.chunks)
        return JSONResponse(out)

    async def lines() -> AsyncIterator[dict[str, Any]]:
        tokens: list[int] = []
        async for ev in gen:
            if isinstance(ev, Chunk):
                if ev.token is not None:
                    tokens.append(ev.token)
                line: dict[str, Any] = {"model": gen.name, "created_at": now_iso(), "response": ev.text, "done": False}
                if ev.logprob is not None:
                    line["logprobs"] = logprobs_of([ev])
                yield line
            else:
                final = {"model": gen.name, "created_at": now_iso(), "response": "", **final_fields(gen, ev)}
                yield {**final, "context": [*ev.prompt_ids, *tokens]}

    return ndjson(lines())


def chat_message(reply: ToolReply) -> dict[str, Any]:
    """Ollama's message: the text, or the calls with their arguments as objects."""
    if reply.calls:
        return {"role": "assistant", "content": reply.content or "", "tool_calls": ollama_calls(reply.calls)}
    return {"role": "assistant", "content": reply.content or ""}


@router.post("/api/chat")
async def chat(request: Request) -> Response:
    body = await parse(request, ChatRequest)
    note(request, model=body.model)
    if any(m.images for m in body.messages):
        raise InvalidParameterError("images are not supported: edgeslm serves text models")
    given = [{"role": m.role, "content": m.content, "tool_calls": calls_from(m.tool_calls, f"messages[{i}]"),
              "tool_name": m.tool_name} for i, m in enumerate(body.messages)]
    plan, found = await plan_for(request, body.model, given, body.tools, None, None,
                                 has_format=body.format is not None)
    keep = parse_keep_alive(body.keep_alive)
    if not body.messages:
        return await _load_only(request, found, keep, message={"role": "assistant", "content": ""})
    model = stored(found)
    settings = job_settings(request, body.options, model.parameters)
    messages, system = model.conversation(conversation(given, plan, ids_required=False))
    if state(request).audit_prompts:
        note(request, prompt=json.dumps(messages)[:100_000])
    logprobs = check_logprobs(body.logprobs, body.top_logprobs)
    job = Job(messages, settings.sampling, settings.max_tokens, settings.stop, logprobs, system=system,
              format=plan.format() or body.format, tooling=plan.tooling(), truncate=body.truncate,
              num_ctx=settings.num_ctx)
    gen = await Generation.start(request, found, job, keep)
    if not body.stream:
        reply = await collect(request, gen)
        out = {"model": gen.name, "created_at": now_iso(), "message": chat_message(plan.read(reply.text)),
               **final_fields(gen, reply.done)}
        if logprobs is not None:
            out["logprobs"] = logprobs_of(reply.chunks)
        return JSONResponse(out)

    async def lines() -> AsyncIterator[dict[str, Any]]:
        text, sent = "", ""  # with tools: the reply so far, and the text streamed of it

        def line(message: dict[str, Any]) -> dict[str, Any]:
            return {"model": gen.name, "created_at": now_iso(), "message": message, "done": False}

        async for ev in gen:
            if isinstance(ev, Chunk):
                if not plan.active:
                    out = line({"role": "assistant", "content": ev.text})
                    if ev.logprob is not None:
                        out["logprobs"] = logprobs_of([ev])
                    yield out
                    continue
                text += ev.text
                free = text[: plan.free(text)]
                if len(free) > len(sent):
                    yield line({"role": "assistant", "content": free[len(sent) :]})
                    sent = free
                continue
            if plan.active:
                reply = plan.read(text)
                last = {**chat_message(reply), "content": plan.rest(reply, sent)}
                if last["content"] or reply.calls:
                    yield line(last)
            yield {"model": gen.name, "created_at": now_iso(), "message": {"role": "assistant", "content": ""},
                   **final_fields(gen, ev)}

    return ndjson(lines())


@router.post("/api/embed")
async def embed(request: Request) -> Response:
    body = await parse(request, EmbedRequest)
    note(request, model=body.model)
    started = request.scope["state"]["started"]
    lease, result = await embed_texts(
        request, body.model, body.texts(), parse_keep_alive(body.keep_alive), body.dimensions, truncate=body.truncate
    )
    return JSONResponse({
        "model": lease.name, "embeddings": result.vectors,
        "total_duration": ns(time.perf_counter() - started), "load_duration": ns(lease.load_seconds),
        "prompt_eval_count": result.tokens,
    })


@router.post("/api/embeddings")
async def embeddings(request: Request) -> Response:
    body = await parse(request, EmbeddingsRequest)
    note(request, model=body.model)
    texts = [body.prompt] if body.prompt else []
    _, result = await embed_texts(request, body.model, texts, parse_keep_alive(body.keep_alive), None, truncate=True)
    return JSONResponse({"embedding": result.vectors[0] if result.vectors else []})


def details(manifest: Manifest) -> dict[str, Any]:
    info = manifest.info
    return {
        "parent_model": "",
        "format": manifest.format.value,
        "family": info.architecture,
        "families": [info.architecture],
        "parameter_size": format_params(info.n_params),
        "quantization_level": info.file_type or "unknown",
    }


def capabilities(manifest: Manifest, template: object, fim: bool) -> list[str]:
    """What Ollama's ``/api/show`` says a model can do: ``completion`` (or ``embedding`` for an encoder),
    ``tools`` where its chat template writes a tool format (as Ollama reads ``.Tools`` in its
    templates), ``insert`` where llama.cpp finds its fill-in-the-middle tokens (``fim``)."""
    if manifest.info.embedding_only:
        return ["embedding"]
    native = detect_tool_format(template if isinstance(template, str) else None) is not ToolFormat.GENERIC
    return ["completion", *(["tools"] if native else []), *(["insert"] if fim else [])]


def model_entry(m: Manifest) -> dict[str, Any]:
    digest = m.digest.removeprefix("sha256-")
    entry = {"name": str(m.name), "model": str(m.name), "modified_at": m.created, "size": m.size, "digest": digest}
    return {**entry, "details": details(m)}


@router.get("/api/tags")
async def tags(request: Request) -> dict[str, Any]:
    manifests = sorted(state(request).store().manifests(), key=lambda m: m.created, reverse=True)
    return {"models": [model_entry(m) for m in manifests]}


@router.get("/api/ps")
async def ps(request: Request) -> dict[str, Any]:
    st = state(request)
    out = []
    for m in st.manager.ps():
        manifest = st.store().find(parse_name(m.name))
        expires = NEVER if m.expires_in is None else now_iso(m.expires_in)
        entry = model_entry(manifest) if manifest else {"name": m.name, "model": m.name}
        out.append({
            **entry, "size": m.memory, "size_vram": 0, "expires_at": expires,
            "context_length": st.manager.params.ctx_per_slot, "slots": m.slots, "in_flight": m.in_flight,
            "pinned": m.pinned, "adapters": [a.label or a.digest[:19] for a in manifest.adapters] if manifest else [],
        })
    return {"models": out}

"""llama-server's ``/tokenize``, ``/detokenize`` and ``/infill`` (``tools/server/README.md`` in
llama.cpp), with a ``model`` field since this server holds many: the text as the model's own token
ids, on the runner that serves it (so special tokens parse as its generation does), and back; code
completion between a prefix and a suffix, its prompt built as llama-server builds it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ...engines.base import SamplingParams
from ...runner import Chunk, Done, Infill, Job
from ...store.resolve import stored
from ..bodies import parse
from ..limits import MAX_CONTEXT_IDS, MAX_NAME, MAX_STOP
from ..replies import Generation, collect, hold, infill_ids, unless_gone
from ..state import resolve, state

router = APIRouter()


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(max_length=MAX_NAME)
    content: str
    add_special: bool = False  # llama-server's defaults: no BOS, special tokens' texts parsed as such
    parse_special: bool = True
    with_pieces: bool = False


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(max_length=MAX_NAME)
    tokens: list[int] = Field(max_length=MAX_CONTEXT_IDS)


@router.post("/tokenize")
async def tokenize(request: Request) -> dict[str, Any]:
    body = await parse(request, TokenizeRequest)
    lease = await hold(request, await resolve(request, body.model), None)
    try:
        found = await unless_gone(request, lease.runner.atokenize(
            body.content, add_special=body.add_special, parse_special=body.parse_special, with_pieces=body.with_pieces))
    finally:
        state(request).manager.release(lease)
    if found.pieces is None:
        return {"tokens": found.ids}
    return {"tokens": [{"id": t, "piece": _piece(p)} for t, p in zip(found.ids, found.pieces, strict=True)]}


@router.post("/detokenize")
async def detokenize(request: Request) -> dict[str, str]:
    body = await parse(request, DetokenizeRequest)
    lease = await hold(request, await resolve(request, body.model), None)
    try:
        text = await unless_gone(request, lease.runner.adetokenize(body.tokens))
    finally:
        state(request).manager.release(lease)
    return {"content": text}


class ExtraChunk(BaseModel):
    model_config = ConfigDict(extra="ignore")
    text: str
    filename: str = "tmp"


class InfillRequest(BaseModel):
    """llama-server's ``/infill`` body (the sampling fields it shares with ``/completion``)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)
    model: str = Field(max_length=MAX_NAME)
    input_prefix: str
    input_suffix: str
    input_extra: list[ExtraChunk] = Field(default_factory=list, max_length=1024)
    prompt: str = ""  # text the middle starts with, after the FIM middle token
    n_predict: int = -1  # -1: until the model stops or the context is full
    temperature: float | None = Field(None, ge=0, le=2)
    top_k: int | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    min_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = None
    stop: list[str] = Field(default_factory=list, max_length=MAX_STOP)
    stream: bool = False
    return_tokens: bool = False  # the generated ids beside the text


@router.post("/infill")
async def infill(request: Request) -> Response:
    """Code completion between ``input_prefix`` and ``input_suffix`` (other files in ``input_extra``):
    the prompt llama-server's ``/infill`` builds, token for token; its reply's fields."""
    body = await parse(request, InfillRequest)
    found = await resolve(request, body.model)
    fim = Infill(body.input_prefix, body.input_suffix, tuple((c.filename, c.text) for c in body.input_extra),
                 body.prompt, repo=True)
    ids = await infill_ids(request, found, fim, None)
    slot = state(request).manager.params.ctx_per_slot
    limit = body.n_predict if body.n_predict > 0 else max(1, slot - len(ids))
    sampling = SamplingParams.over(stored(found).parameters, {
        "temperature": body.temperature, "top_k": body.top_k, "top_p": body.top_p, "min_p": body.min_p,
        "seed": body.seed})
    gen = await Generation.start(request, found, Job(ids, sampling, min(limit, slot), tuple(body.stop)), None)
    if not body.stream:
        reply = await collect(request, gen)
        made = {"tokens": reply.tokens} if body.return_tokens else {}
        return JSONResponse({"index": 0, "content": reply.text, **made,
                             **_final(gen.name, reply.done, len(reply.tokens))})

    async def events() -> AsyncIterator[bytes]:
        count = 0
        async for ev in gen:
            if isinstance(ev, Chunk):
                count += ev.token is not None
                line = {"index": 0, "content": ev.text, "stop": False}
            else:
                line = {"index": 0, "content": "", **_final(gen.name, ev, count)}
            yield f"data: {json.dumps(line)}\n\n".encode()

    return StreamingResponse(events(), media_type="text/event-stream")


def _final(model: str, done: Done, predicted: int) -> dict[str, Any]:
    """llama-server's closing fields: why it stopped (``eos``, ``word``, ``limit``) and the counts."""
    kind = "word" if done.stop_sequence else "limit" if done.finish == "length" else "eos"
    return {"stop": True, "model": model, "stop_type": kind, "stopping_word": done.stop_sequence or "",
            "tokens_predicted": predicted, "tokens_evaluated": done.prompt_tokens, "truncated": False}


def _piece(raw: bytes) -> str | list[int]:
    """A token's text, or its bytes where they are not UTF-8 on their own (as llama-server writes them)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return list(raw)

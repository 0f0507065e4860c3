"""llama-server's ``/tokenize`` and ``/detokenize`` (``tools/server/README.md`` in llama.cpp), with a
``model`` field since this server holds many: the text as the model's own token ids, on the runner
that serves it (so special tokens parse as its generation does), and back."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request

from ..bodies import parse
from ..limits import MAX_CONTEXT_IDS, MAX_NAME
from ..replies import hold, unless_gone
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


def _piece(raw: bytes) -> str | list[int]:
    """A token's text, or its bytes where they are not UTF-8 on their own (as llama-server writes them)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return list(raw)

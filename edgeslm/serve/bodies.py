"""Reading requests: a JSON body as its schema (or a 400 naming the first problem), and an
upload's bytes as they arrive, each wait with a deadline."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request

from ..errors import InvalidParameterError, RunnerTimeoutError

B = TypeVar("B", bound=BaseModel)


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

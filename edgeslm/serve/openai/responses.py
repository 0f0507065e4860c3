"""OpenAI's Responses API: ``POST /v1/responses`` with ``input`` (text, or messages and
function-call items), ``instructions``, ``max_output_tokens``, ``temperature``, ``top_p``,
function ``tools`` (the generic format, as chat completions), ``text.format`` (json_object or
json_schema, a grammar as chat's ``response_format``), and streamed events. With ``store`` (OpenAI's
default) a response is kept (``kept``): ``previous_response_id`` continues its conversation, and
``GET``/``DELETE /v1/responses/{id}`` and ``/input_items`` read and remove it, each key its own."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ...engines.base import SamplingParams
from ...errors import EdgeslmError, InvalidParameterError
from ...runner import Chunk, Done, Job
from ...store.resolve import stored
from ...tools import ToolCall, ToolReply
from ...tools.plan import conversation
from ..bodies import parse
from ..replies import Generation, collect
from ..state import note, plan_for, state
from .kept import KeptResponses
from .schemas import ResponsesRequest

router = APIRouter(prefix="/v1")
ROLES = ("user", "assistant", "system", "developer")


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") in ("input_text", "output_text")
                                         for p in content):
        return "".join(str(p.get("text") or "") for p in content)
    raise InvalidParameterError(f"{where}: content must be text or input_text/output_text parts (no images or files)")


def input_messages(body: ResponsesRequest) -> list[dict[str, Any]]:
    """``input`` as chat messages: text is one user turn; function_call and function_call_output
    items become an assistant call and its tool result."""
    out: list[dict[str, Any]] = [{"role": "system", "content": body.instructions}] if body.instructions else []
    if isinstance(body.input, str):
        return [*out, {"role": "user", "content": body.input}]
    for i, item in enumerate(body.input):
        where, kind = f"input[{i}]", item.get("type", "message")
        if kind == "message" and item.get("role") in ROLES:
            role = "system" if item["role"] == "developer" else item["role"]
            out.append({"role": role, "content": _text(item.get("content"), where)})
        elif kind == "function_call":
            args = item.get("arguments") or "{}"
            try:
                parsed = json.loads(args) if isinstance(args, str) else args
            except json.JSONDecodeError:
                raise InvalidParameterError(f"{where}: arguments is not valid JSON") from None
            if not isinstance(parsed, dict) or not isinstance(item.get("name"), str):
                raise InvalidParameterError(f"{where}: a function_call needs a name and JSON object arguments")
            call = ToolCall(str(item.get("call_id") or ""), item["name"], parsed)
            out.append({"role": "assistant", "content": "", "tool_calls": (call,)})
        elif kind == "function_call_output":
            out.append({"role": "tool", "content": str(item.get("output") or ""), "tool_call_id": item.get("call_id")})
        else:
            raise InvalidParameterError(f"{where}: input items of type {str(kind)[:40]!r} are not supported")
    return out


def _chat_tools(body: ResponsesRequest) -> tuple[Any, Any]:
    """The Responses API's flat function tools and tool_choice, in the chat shape ``tools.plan`` reads."""
    tools = None
    if body.tools:
        tools = [{"type": t.get("type"), "function": {k: t.get(k) for k in ("name", "description", "parameters")
                                                      if t.get(k) is not None}} if isinstance(t, dict) else t
                 for t in body.tools]
    choice = body.tool_choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        choice = {"type": "function", "function": {"name": choice.get("name")}}
    return tools, choice


def _owner(request: Request) -> str:
    """Whose kept responses these are: the API key's id ("local" on a server without keys)."""
    key = request.scope.get("state", {}).get("key")
    return f"key:{key.id}" if key is not None else "local"


def _kept(request: Request) -> KeptResponses:
    return KeptResponses(state(request).settings.home)


def _as_items(given: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "message", "role": "user", "content": given}] if isinstance(given, str) else list(given)


def _output_as_input(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A kept response's output, as the input items of the next turn."""
    items = []
    for item in output:
        if item["type"] == "message":
            text = "".join(p.get("text", "") for p in item["content"])
            items.append({"type": "message", "role": "assistant", "content": text})
        elif item["type"] == "function_call":
            items.append({k: item[k] for k in ("type", "call_id", "name", "arguments")})
    return items


@router.post("/responses")
async def responses(request: Request) -> Response:
    body = await parse(request, ResponsesRequest)
    note(request, model=body.model)
    items = _as_items(body.input)
    if body.previous_response_id:  # its conversation, then this input (its instructions are not carried over)
        before = await asyncio.to_thread(_kept(request).load, _owner(request), body.previous_response_id)
        items = [*before["input"], *_output_as_input(before["response"]["output"]), *items]
        body = body.model_copy(update={"input": items})
    tools, choice = _chat_tools(body)
    given = input_messages(body)
    fmt = body.text.format.spec()
    plan, found = await plan_for(request, body.model, given, tools, choice, body.parallel_tool_calls,
                                 has_format=fmt is not None)
    messages, system = stored(found).conversation(conversation(given, plan, ids_required=True))
    sampling = SamplingParams()
    if body.temperature is not None:
        sampling = replace(sampling, temperature=body.temperature)
    if body.top_p is not None:
        sampling = replace(sampling, top_p=body.top_p)
    job = Job(messages, sampling, body.max_output_tokens or -1, (),
              system=system,
              format=plan.format() or fmt,
              tooling=plan.tooling(),
              truncate=body.truncation == "auto")
    gen = await Generation.start(request, found, job, None)
    keep = None if body.store is False else (_kept(request), _owner(request), items)
    head = {"id": f"resp_{uuid.uuid4().hex}", "object": "response", "created_at": int(time.time()),
            "model": gen.name, "parallel_tool_calls": plan.parallel, "tool_choice": body.tool_choice or "auto",
            "tools": body.tools or [], "instructions": body.instructions, "temperature": body.temperature,
            "top_p": body.top_p, "max_output_tokens": body.max_output_tokens,
            "text": {"format": body.text.format.model_dump(by_alias=True, exclude_none=True)},
            "previous_response_id": body.previous_response_id, "store": keep is not None}
    if not body.stream:
        reply = await collect(request, gen)
        final = _final(head, plan.read(reply.text), reply.done)
        await _keep(keep, final)
        return JSONResponse(final)
    return StreamingResponse(_events(head, gen, plan.active, plan.read, keep), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


async def _keep(keep: tuple[KeptResponses, str, list[dict[str, Any]]] | None, final: dict[str, Any]) -> None:
    if keep is not None:
        kept, owner, items = keep
        await asyncio.to_thread(kept.save, owner, {"id": final["id"], "input": items, "response": final})


@router.get("/responses/{rid}")
async def get_response(request: Request, rid: str) -> dict[str, Any]:
    record = await asyncio.to_thread(_kept(request).load, _owner(request), rid)
    found: dict[str, Any] = record["response"]
    return found


@router.get("/responses/{rid}/input_items")
async def input_items(request: Request, rid: str) -> dict[str, Any]:
    record = await asyncio.to_thread(_kept(request).load, _owner(request), rid)
    data = [{"id": f"msg_{rid[5:21]}_{i}", **item} for i, item in enumerate(record["input"])]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": False}


@router.delete("/responses/{rid}")
async def delete_response(request: Request, rid: str) -> dict[str, Any]:
    await asyncio.to_thread(_kept(request).delete, _owner(request), rid)
    return {"id": rid, "object": "response", "deleted": True}


def _items(reply: ToolReply, text_id: str, status: str) -> list[dict[str, Any]]:
    if reply.calls:
        return [{"type": "function_call", "id": f"fc_{uuid.uuid4().hex[:24]}", "call_id": c.id, "name": c.name,
                 "arguments": json.dumps(c.arguments, ensure_ascii=False), "status": "completed"}
                for c in reply.calls]
    part = {"type": "output_text", "text": reply.content or "", "annotations": []}
    return [{"type": "message", "id": text_id, "status": status, "role": "assistant", "content": [part]}]


def _final(head: dict[str, Any], reply: ToolReply, done: Done, text_id: str | None = None) -> dict[str, Any]:
    cut = done.finish == "length"
    n_in, n_out = done.prompt_tokens, done.completion_tokens
    details_in, details_out = {"cached_tokens": 0}, {"reasoning_tokens": 0}
    usage = {"input_tokens": n_in, "output_tokens": n_out, "total_tokens": n_in + n_out,
             "input_tokens_details": details_in, "output_tokens_details": details_out}
    status = "incomplete" if cut else "completed"
    details = {"reason": "max_output_tokens"} if cut else None
    output = _items(reply, text_id or _msg_id(), status)  # a message cut by the limit is incomplete too
    return {**head, "status": status, "output": output, "incomplete_details": details, "usage": usage, "error": None}


def _msg_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


async def _events(head: dict[str, Any], gen: Generation, held: bool, read: Any,
                  keep: tuple[KeptResponses, str, list[dict[str, Any]]] | None) -> AsyncIterator[bytes]:
    """Server-sent events as OpenAI sends them, each with its ``type`` and ``sequence_number``;
    text streams as deltas unless tools are offered (then the reply is known once complete)."""
    seq = iter(range(1 << 30))

    def event(kind: str, **data: Any) -> bytes:
        payload = {"type": kind, "sequence_number": next(seq), **data}
        return f"event: {kind}\ndata: {json.dumps(payload)}\n\n".encode()

    text_id, parts = _msg_id(), []
    started = {**head, "status": "in_progress", "output": [], "usage": None}
    yield event("response.created", response=started)
    yield event("response.in_progress", response=started)
    where = {"item_id": text_id, "output_index": 0, "content_index": 0}
    empty = {"type": "output_text", "text": "", "annotations": []}
    try:
        if not held:
            item = {"type": "message", "id": text_id, "status": "in_progress", "role": "assistant", "content": []}
            yield event("response.output_item.added", output_index=0, item=item)
            yield event("response.content_part.added", part=empty, **where)
        async for ev in gen:
            if isinstance(ev, Chunk):
                parts.append(ev.text)
                if not held and ev.text:
                    yield event("response.output_text.delta", delta=ev.text, logprobs=[], **where)
                continue
            final = _final(head, read("".join(parts)), ev, text_id)
            await _keep(keep, final)
            for i, out in enumerate(final["output"]):
                async for line in _item_events(event, i, out, announced=not held):
                    yield line
            yield event("response.completed" if final["status"] == "completed" else "response.incomplete",
                        response=final)
    except EdgeslmError as exc:  # the status is sent already: the error is an event
        yield event("error", code=type(exc).__name__, message=str(exc), param=None)


async def _item_events(event: Any, i: int, item: dict[str, Any], *, announced: bool) -> AsyncIterator[bytes]:
    if item["type"] == "function_call":
        yield event(
            "response.output_item.added", output_index=i, item={**item, "arguments": "", "status": "in_progress"}
        )
        yield event(
            "response.function_call_arguments.delta", item_id=item["id"], output_index=i, delta=item["arguments"]
        )
        yield event("response.function_call_arguments.done", item_id=item["id"], output_index=i,
                    name=item["name"], arguments=item["arguments"])
    else:
        part = item["content"][0]
        where = {"item_id": item["id"], "output_index": i, "content_index": 0}
        if not announced:
            yield event(
                "response.output_item.added", output_index=i, item={**item, "status": "in_progress", "content": []}
            )
            yield event("response.content_part.added", part={**part, "text": ""}, **where)
            if part["text"]:
                yield event("response.output_text.delta", delta=part["text"], logprobs=[], **where)
        yield event("response.output_text.done", text=part["text"], logprobs=[], **where)
        yield event("response.content_part.done", part=part, **where)
    yield event("response.output_item.done", output_index=i, item=item)

"""Anthropic's Messages API (``POST /v1/messages``): system as text or blocks (a system role inside
``messages`` too, as Claude Code sends it), text, tool_use and tool_result blocks, ``tools`` and
``tool_choice`` through the model's own tool format (the path OpenAI's chat completions take),
``stop_sequences``, ``temperature``/``top_p``/``top_k``, ``max_tokens``; replies and streamed events
in Anthropic's shapes (``message_start``, ``content_block_start``/``delta``/``stop`` with
``text_delta`` and ``input_json_delta``, ``message_delta`` with the stop reason and usage,
``message_stop``, ``ping``)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ...engines.base import SamplingParams
from ...errors import EdgeslmError, http_status_for
from ...runner import Chunk, Done, Job
from ...store.resolve import ResolvedModel, stored
from ...tools import ToolReply
from ...tools.plan import ToolPlan, conversation
from ..bodies import parse
from ..http_errors import error_body
from ..replies import Generation, collect, hold, unless_gone
from ..state import note, plan_for, state
from .schemas import CountRequest, MessagesRequest

router = APIRouter(prefix="/v1")


async def _prepared(request: Request, body: CountRequest) -> tuple[Job, ToolPlan, ResolvedModel]:
    """The request as the runner's job (its conversation, system and tools in the model's own format),
    the tool plan that reads the reply, and the model, resolved once."""
    note(request, model=body.model)
    body.check()
    given = body.chat_messages()
    tools, choice, parallel = body.chat_tools()
    schema = body.output_schema() if isinstance(body, MessagesRequest) else None
    plan, found = await plan_for(request, body.model, given, tools, choice, parallel, has_format=schema is not None)
    model = stored(found)
    chat, system = model.conversation(conversation(given, plan, ids_required=True))
    if not isinstance(body, MessagesRequest):
        return Job(chat, system=system, tooling=plan.tooling()), plan, found
    sampling = SamplingParams.over(model.parameters, {"temperature": body.temperature, "top_p": body.top_p,
                                                     "top_k": body.top_k})
    # Claude Code asks for 32,000 tokens whatever the model: held to what a slot holds, the reply ends
    # with stop_reason max_tokens when the context fills (as Ollama and llama-server end it)
    held = min(body.max_tokens, state(request).manager.params.ctx_per_slot)
    job = Job(chat, sampling, held, tuple(body.stop_sequences or ()), system=system, tooling=plan.tooling(),
              format=plan.format() or schema)
    return job, plan, found


@router.post("/messages/count_tokens")
async def count_tokens(request: Request) -> dict[str, int]:
    """The tokens the prompt takes, rendered as ``/v1/messages`` renders it (nothing is generated)."""
    job, _, found = await _prepared(request, await parse(request, CountRequest))
    lease = await hold(request, found, None)
    try:
        return {"input_tokens": await unless_gone(request, lease.runner.acount(job))}
    finally:
        state(request).manager.release(lease)


@router.post("/messages")
async def messages(request: Request) -> Response:
    body = await parse(request, MessagesRequest)
    job, plan, found = await _prepared(request, body)
    gen = await Generation.start(request, found, job, None)
    head = {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant", "model": gen.name}
    if not body.stream:
        reply = await collect(request, gen)
        read = plan.read(reply.text)
        return JSONResponse({**head, "content": content_blocks(read), **stop_of(read, reply.done),
                             "usage": usage_of(reply.done)})
    return StreamingResponse(_events(request, head, gen, plan), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


def content_blocks(reply: ToolReply) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = [{"type": "text", "text": reply.content}] if reply.content else []
    return blocks + [{"type": "tool_use", "id": _tool_id(c.id), "name": c.name, "input": c.arguments}
                     for c in reply.calls]


def stop_of(reply: ToolReply, done: Done) -> dict[str, Any]:
    if reply.calls:
        return {"stop_reason": "tool_use", "stop_sequence": None}
    if done.finish == "length":
        return {"stop_reason": "max_tokens", "stop_sequence": None}
    if done.stop_sequence is not None:
        return {"stop_reason": "stop_sequence", "stop_sequence": done.stop_sequence}
    return {"stop_reason": "end_turn", "stop_sequence": None}


def usage_of(done: Done | None) -> dict[str, int]:
    if done is None:
        return {"input_tokens": 0, "output_tokens": 0}
    return {"input_tokens": done.prompt_tokens, "output_tokens": done.completion_tokens}


def _tool_id(given: str) -> str:
    return given if given.startswith("toolu_") else f"toolu_{uuid.uuid4().hex[:24]}"


def event(kind: str, **data: Any) -> bytes:
    """One server-sent event in Anthropic's shape: its data a JSON line (a model's text or tool arguments
    holding blank lines or ``data:`` stay inside the JSON string, escaped)."""
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()


async def _events(request: Request, head: dict[str, Any], gen: Generation, plan: Any) -> AsyncIterator[bytes]:
    start = {**head, "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": {"input_tokens": 0, "output_tokens": 0}}
    yield event("message_start", message=start)
    yield event("ping")
    index, text, sent, open_text = 0, "", "", False
    try:
        async for ev in gen:
            if isinstance(ev, Chunk):
                text += ev.text
                free = text if not plan.active else text[: plan.free(text)]
                if len(free) > len(sent):
                    if not open_text:
                        yield event("content_block_start", index=index, content_block={"type": "text", "text": ""})
                        open_text = True
                    yield event("content_block_delta", index=index, delta={"type": "text_delta",
                                                                           "text": free[len(sent):]})
                    sent = free
                continue
            reply = plan.read(text)
            rest = plan.rest(reply, sent) if plan.active else ""
            if rest:
                if not open_text:
                    yield event("content_block_start", index=index, content_block={"type": "text", "text": ""})
                    open_text = True
                yield event("content_block_delta", index=index, delta={"type": "text_delta", "text": rest})
            if open_text:
                yield event("content_block_stop", index=index)
                index += 1
            for call in reply.calls:
                block: dict[str, Any] = {"type": "tool_use", "id": _tool_id(call.id), "name": call.name, "input": {}}
                yield event("content_block_start", index=index, content_block=block)
                yield event("content_block_delta", index=index, delta={
                    "type": "input_json_delta", "partial_json": json.dumps(call.arguments, ensure_ascii=False)})
                yield event("content_block_stop", index=index)
                index += 1
            yield event("message_delta", delta=stop_of(reply, ev), usage=usage_of(ev))
            yield event("message_stop")
    except EdgeslmError as exc:  # the status is sent already: the error is an event, in Anthropic's shape
        yield event("error", **{"error": error_body(request.url.path, http_status_for(exc), str(exc))["error"]})

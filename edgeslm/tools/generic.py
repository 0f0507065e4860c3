"""Tool calling for any chat model, as llama.cpp's "Generic" handler does it (common/chat.cpp).

The tools and the reply's shape go into a system message; the whole reply is generated under a
grammar built from one JSON Schema — ``{"tool_call": {"name", "arguments"}}`` (``tool_calls``, a
list, when calls may be parallel) or ``{"response": "..."}`` — so every call parses and its
arguments validate against the tool's schema. ``required`` or a named function leaves only the
call. Earlier calls in the conversation are written back in the same JSON, and tool results go
to the template as ``role: "tool"`` messages (with the tool's ``name``), as ChatML renders them.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidParameterError
from .spec import Tool, ToolCall, ToolChoice

INSTRUCTION = (
    "Respond in JSON format, either with `tool_call` (a request to call tools) or with `response` reply to the "
    "user's request"
)


@dataclass(frozen=True)
class ToolReply:
    content: str | None
    calls: tuple[ToolCall, ...]
    complete: bool  # False: the text stopped before its JSON closed (finish_reason "length")


def new_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


def reply_schema(tools: Sequence[Tool], choice: ToolChoice, parallel: bool) -> dict[str, Any]:
    """The JSON Schema every reply is generated under."""
    offered = [t for t in tools if choice.mode != "function" or t.name == choice.name]
    defs: dict[str, Any] = {}
    calls = []
    for t in offered:
        arguments = _hoisted(t, defs)
        calls.append({"type": "object", "properties": {"name": {"type": "string", "const": t.name},
                      "arguments": arguments}, "required": ["name", "arguments"]})
    one = calls[0] if len(calls) == 1 else {"anyOf": calls}
    if parallel:
        many = {"type": "array", "items": one, "minItems": 1, "maxItems": MAX_PARALLEL}
        call: dict[str, Any] = {"type": "object", "properties": {"tool_calls": many}, "required": ["tool_calls"]}
    else:
        call = {"type": "object", "properties": {"tool_call": one}, "required": ["tool_call"]}
    response = {"type": "object", "properties": {"response": {"type": "string"}}, "required": ["response"]}
    schema = call if choice.mode in ("required", "function") else {"anyOf": [call, response]}
    return {**schema, "$defs": defs} if defs else schema


def _hoisted(tool: Tool, defs: dict[str, Any]) -> Any:
    """The tool's parameters with its definitions moved to the reply schema's root (its ``$ref``
    resolve from there), each renamed ``TOOL__NAME`` so two tools' definitions never meet (what the
    grammar enforces of them: ``Tool.enforced``)."""
    params = tool.enforced
    own = {f"#/{key}/{name}": f"#/$defs/{tool.name}__{name}"
           for key in ("$defs", "definitions") for name in params.get(key, {})}

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: own.get(v, v) if k == "$ref" else rewrite(v) for k, v in node.items()
                    if k not in ("$defs", "definitions") or node is not params}
        if isinstance(node, list):
            return [rewrite(x) for x in node]
        return node

    for key in ("$defs", "definitions"):
        for name, body in params.get(key, {}).items():
            defs[f"{tool.name}__{name}"] = rewrite(body)
    return rewrite(params)


def system_text(tools: Sequence[Tool], choice: ToolChoice, *, example: bool = True) -> str:
    """The tools, an example call (as minja's polyfill shows one), and the reply's two shapes. Once
    a tool has answered, the conversation holds a real call: no example (small models then answer
    rather than call again)."""
    listed = [t.as_openai()["function"] for t in tools if choice.mode != "function" or t.name == choice.name]
    text = f"You can call any of the following tools to satisfy the user's requests: {json.dumps(listed)}"
    if example:
        call = json.dumps({"tool_call": {"name": listed[0]["name"], "arguments": {"arg1": "some_value"}}})
        text += f"\n\nExample tool call syntax:\n\n{call}"
    return f"{text}\n\n{INSTRUCTION}"


def prepare(messages: Sequence[Mapping[str, Any]], tools: Sequence[Tool], choice: ToolChoice,
            parallel: bool) -> list[dict[str, Any]]:
    """The conversation as the template gets it: the tools in the system message, earlier calls
    and tool results written as the JSON the model reads and writes."""
    out = [_plain(m, parallel, _calls_by_id(messages)) for m in messages]
    answered = bool(messages) and messages[-1]["role"] == "tool"
    extra = system_text(tools, choice, example=not answered) if choice.mode != "none" else ""
    if extra:
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{extra}".strip()}
        else:
            out.insert(0, {"role": "system", "content": extra})
    return out


def _calls_by_id(messages: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    return {c.id: c.name for m in messages for c in m.get("tool_calls") or ()}


def _plain(m: Mapping[str, Any], parallel: bool, calls: dict[str, str]) -> dict[str, Any]:
    role, content = m["role"], m.get("content") or ""
    if role == "assistant" and m.get("tool_calls"):
        made = [{"name": c.name, "arguments": c.arguments} for c in m["tool_calls"]]
        body = {"tool_calls": made} if parallel or len(made) > 1 else {"tool_call": made[0]}
        return {"role": "assistant", "content": json.dumps(body, ensure_ascii=False)}
    if role == "tool":  # as the template renders the role (ChatML does; written as user JSON, SmolLM2 calls again)
        name = m.get("tool_name") or calls.get(m.get("tool_call_id") or "", "")
        return {"role": "tool", "content": content, "name": name, "tool_call_id": m.get("tool_call_id") or ""}
    return {"role": role, "content": content}


def check_history(messages: Sequence[Mapping[str, Any]], *, ids_required: bool) -> None:
    """Each tool result answers a call made earlier in the conversation (OpenAI: by its id)."""
    made: set[str] = set()
    for i, m in enumerate(messages):
        made.update(c.id for c in m.get("tool_calls") or ())
        if m["role"] != "tool":
            continue
        call_id = m.get("tool_call_id")
        if call_id is None:
            if ids_required:
                raise InvalidParameterError(
                    f"messages[{i}]: a tool message needs the tool_call_id of the call it answers"
                )
            continue
        if call_id not in made:
            raise InvalidParameterError(
                f"messages[{i}]: tool_call_id {str(call_id)[:64]!r} matches no call of an earlier assistant message"
            )


RESPONSE_HEAD = re.compile(r'\s*\{\s*"response"\s*:\s*"')
MAX_PARALLEL = 16  # calls in one reply: a small model may repeat a call until max_tokens otherwise


def parse_reply(text: str) -> ToolReply:
    """The generated JSON as text or calls; an unfinished reply (cut by max_tokens) is text, never a
    call: the response's text so far, else what was generated."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return ToolReply(_partial_response(text), (), complete=False)
    if not isinstance(data, dict):
        return ToolReply(text, (), complete=True)
    made = data.get("tool_calls") if "tool_calls" in data else [data["tool_call"]] if "tool_call" in data else None
    if made is None:
        response = data.get("response")
        return ToolReply(response if isinstance(response, str) else text, (), complete=True)
    calls = tuple(ToolCall(new_call_id(), str(c["name"]), dict(c["arguments"])) for c in made)
    return ToolReply(None, calls, complete=True)


def _partial_response(text: str) -> str:
    """``{"response": "Par`` -> ``Par``: the string so far (a trailing half escape dropped)."""
    head = RESPONSE_HEAD.match(text)
    if head is None:
        return text
    body = text[head.end() :]
    for cut in range(len(body), max(len(body) - 8, -1), -1):  # an escape is at most \uXXXX
        try:
            value = json.loads(f'"{body[:cut]}"')
        except json.JSONDecodeError:
            continue
        return str(value)
    return text


def tool_results_as_user(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """For a template that takes no ``tool`` role (Gemma's alternation check raises on it): each
    result as a user turn in JSON, as minja's polyfill wrote them, results in a row in one turn."""
    out: list[dict[str, Any]] = []
    merged = False  # the last turn is results already
    for m in messages:
        if m.get("role") != "tool":
            out.append(dict(m))
            merged = False
            continue
        result = {"tool_response": {"tool": m.get("name") or "", "content": m.get("content") or ""}}
        text = json.dumps(result, ensure_ascii=False)
        if merged:
            out[-1] = {"role": "user", "content": f"{out[-1]['content']}\n{text}"}
        else:
            out.append({"role": "user", "content": text})
        merged = True
    return out


def system_into_user(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """For a template that takes no ``system`` role (Gemma 2 raises on it): the system text opens
    the first user turn, as minja's polyfill wrote it."""
    out = [dict(m) for m in messages]
    if not out or out[0].get("role") != "system":
        return out
    system = out.pop(0).get("content") or ""
    if out and out[0].get("role") == "user":
        out[0] = {**out[0], "content": f"{system}\n\n{out[0].get('content') or ''}"}
    else:
        out.insert(0, {"role": "user", "content": system})
    return out

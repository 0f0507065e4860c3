"""What a request asks of tool calling, whatever its dialect: the tools, the choice and the model's
format (``ToolPlan``), the conversation the template renders, and calls as each dialect writes
them (OpenAI's arguments as a JSON string, Ollama's as an object) or sends them back."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidParameterError
from .generic import ToolReply, check_history, parse_reply, reply_schema
from .generic import prepare as prepare_tools
from .native import ToolFormat, free_text
from .native import parse as parse_native
from .native import prepare as prepare_native
from .spec import Tool, ToolCall, ToolChoice, parse_choice, parse_tools


@dataclass(frozen=True)
class ToolPlan:
    tools: tuple[Tool, ...] = ()
    choice: ToolChoice = ToolChoice("none")
    parallel: bool = False
    fmt: ToolFormat = ToolFormat.GENERIC  # the model's own format, where its template has one

    @property
    def active(self) -> bool:
        """The reply may (or must) be a call: it is generated under the calls' grammar."""
        return bool(self.tools) and self.choice.mode != "none"

    def format(self) -> dict[str, Any] | None:
        """The generic format's reply schema (the job's ``format``)."""
        generic = self.active and self.fmt is ToolFormat.GENERIC
        return reply_schema(self.tools, self.choice, self.parallel) if generic else None

    def tooling(self) -> dict[str, Any] | None:
        """A native format's job: the tools the template renders and what the runner's grammar needs."""
        if self.fmt is ToolFormat.GENERIC:
            return None
        offered = [t.as_openai() for t in self.tools]
        render = offered if self.active and self.fmt is not ToolFormat.PHI4 else None  # Phi-4: in the system turn
        return {"format": self.fmt.value, "tools": offered, "render": render, "choice": self.choice.mode
                if self.active else "none", "name": self.choice.name, "parallel": self.parallel}

    def free(self, text: str) -> int:
        """How much of the reply so far can stream as text: all without tools; with a native
        format's ``auto``, the text before its opening marker; else none (the reply is JSON or a call)."""
        if not self.active:
            return len(text)
        if self.fmt is ToolFormat.GENERIC or self.choice.mode != "auto":
            return 0
        return free_text(self.fmt, text)

    def rest(self, reply: ToolReply, sent: str) -> str:
        """The reply's text not streamed yet (``sent`` was)."""
        content = reply.content or ""
        return content[len(sent) :] if content.startswith(sent) else "" if sent else content

    def read(self, text: str) -> ToolReply:
        if not self.active:
            return ToolReply(text, (), complete=True)
        return parse_reply(text) if self.fmt is ToolFormat.GENERIC else parse_native(self.fmt, text, self.tools)


def uses_tools(tools: Any, messages: Sequence[Mapping[str, Any]]) -> bool:
    """Tools offered or tool turns in the conversation: the model's tool format matters."""
    return bool(tools) or any(m.get("tool_calls") or m["role"] == "tool" for m in messages)


def plan_tools(tools: Any, choice: Any, parallel: bool | None, *, has_format: bool) -> ToolPlan:
    if not tools:
        if choice not in (None, "none", "auto"):
            raise InvalidParameterError("tool_choice names a tool, but the request has no tools", params="tool_choice")
        return ToolPlan()
    parsed = parse_tools(tools)
    plan = ToolPlan(parsed, parse_choice(choice, parsed), parallel is True)  # llama-server's default: one call
    if plan.active and has_format:
        raise InvalidParameterError(
            "a response format and tools together are not supported: the reply is either a tool call or text",
            params=("response_format", "tools"),
        )
    return plan


def conversation(messages: Sequence[Mapping[str, Any]], plan: ToolPlan, *, ids_required: bool) -> list[dict[str, Any]]:
    """The messages the chat template renders: tool results checked against the calls they answer,
    and, where tools or tool turns take part, written as the model's format writes them."""
    check_history(messages, ids_required=ids_required)
    if not uses_tools(plan.tools, messages):
        return [{"role": m["role"], "content": m.get("content") or ""} for m in messages]
    if plan.fmt is not ToolFormat.GENERIC:
        return prepare_native(plan.fmt, messages, plan.tools, offer=plan.active)
    return prepare_tools(messages, plan.tools, plan.choice, plan.parallel)


def openai_calls(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    return [{"id": c.id, "type": "function",
             "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)}}
            for c in calls]


def ollama_calls(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    return [{"function": {"name": c.name, "arguments": c.arguments}} for c in calls]


def calls_from(raw: Any, where: str) -> tuple[ToolCall, ...]:
    """An assistant message's ``tool_calls`` as a client sends them back: OpenAI's (an id, the
    arguments as a JSON string) or Ollama's (no id, the arguments as an object)."""
    out = []
    for i, call in enumerate(raw or []):
        at = f"{where}.tool_calls[{i}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise InvalidParameterError(f"{at}: needs function.name and function.arguments")
        out.append(ToolCall(str(call.get("id") or ""), fn["name"], _arguments(fn.get("arguments"), at)))
    return tuple(out)


def _arguments(value: Any, where: str) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value or "{}")
        except json.JSONDecodeError:
            raise InvalidParameterError(f"{where}: function.arguments is not valid JSON") from None
    if not isinstance(value, dict):
        raise InvalidParameterError(f"{where}: function.arguments must be a JSON object")
    return value

"""Anthropic's Messages request, checked at the edge, and its content blocks as the chat messages
``tools.plan`` reads (the same path as OpenAI's chat completions)."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ...errors import InvalidParameterError
from ...tools import ToolCall
from ..limits import MAX_MESSAGES, MAX_NAME, MAX_STOP

# blocks a text model cannot take: refused by name, as Anthropic refuses what a model lacks
UNSUPPORTED = {"image": "images", "document": "documents (PDF)", "thinking": "thinking blocks",
               "redacted_thinking": "thinking blocks", "server_tool_use": "server tools",
               "web_search_tool_result": "server tools", "search_result": "search results"}


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class Message(_Body):
    role: Literal["user", "assistant", "system"]  # "system": as Claude Code sends it inside messages
    content: str | list[dict[str, Any]]


class CountRequest(_Body):
    """``/v1/messages/count_tokens``'s body: what a prompt is made of."""

    model: str = Field(max_length=MAX_NAME)
    messages: list[Message] = Field(max_length=MAX_MESSAGES)
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None

    def check(self) -> None:
        if self.thinking and self.thinking.get("type") == "enabled":
            raise InvalidParameterError("thinking: extended thinking is not available with this model; leave "
                                        "thinking out (or set it to disabled)", params="thinking")

    def system_text(self) -> str | None:
        return None if self.system is None else _text(self.system, "system")

    def chat_tools(self) -> tuple[list[dict[str, Any]] | None, Any, bool | None]:
        """Tools, tool_choice and parallel calls in the chat shape (``input_schema`` is the parameters)."""
        tools = None
        if self.tools:
            tools = []
            for i, t in enumerate(self.tools):
                if t.get("type") not in (None, "custom") or not isinstance(t.get("name"), str):
                    raise InvalidParameterError(f"tools[{i}]: only custom tools with a name are available here "
                                                f"(server tools such as {str(t.get('type'))[:40]!r} are not)")
                schema = t.get("input_schema")
                if not isinstance(schema, dict) or schema.get("type") != "object":
                    raise InvalidParameterError(f"tools[{i}].input_schema: must be a JSON schema of type object")
                tools.append({"type": "function", "function": {
                    "name": t["name"], "parameters": schema, "strict": t.get("strict") is True,
                    **({"description": t["description"]} if t.get("description") else {})}})
        choice: Any = None
        parallel = None
        if self.tool_choice:
            kind = self.tool_choice.get("type")
            choice = {"auto": "auto", "any": "required", "none": "none"}.get(str(kind))
            if kind == "tool":
                choice = {"type": "function", "function": {"name": self.tool_choice.get("name")}}
            elif choice is None:
                raise InvalidParameterError(f"tool_choice.type {str(kind)[:40]!r} is not one of auto, any, tool, none")
            parallel = False if self.tool_choice.get("disable_parallel_tool_use") else None
        return tools, choice, parallel

    def chat_messages(self) -> list[dict[str, Any]]:
        """The conversation as role, text, calls made and the call answered: a system message inside
        ``messages`` joins the system prompt's place; tool_result blocks become tool turns."""
        out: list[dict[str, Any]] = []
        system = self.system_text()
        if system:
            out.append({"role": "system", "content": system, "tool_calls": ()})
        for i, m in enumerate(self.messages):
            where = f"messages[{i}]"
            if isinstance(m.content, str) or m.role == "system":
                out.append({"role": m.role, "content": _text(m.content, where), "tool_calls": ()})
                continue
            out.extend(_blocks(m.role, m.content, where))
        return out



class OutputFormat(_Body):
    """``output_config.format``: structured output, the reply's text held to a JSON schema."""

    type: Literal["json_schema"]
    json_schema: dict[str, Any] = Field(alias="schema")


class OutputConfig(_Body):
    format: OutputFormat | None = None  # ``effort`` is ignored: it has no meaning for these models


class MessagesRequest(CountRequest):
    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = Field(None, max_length=MAX_STOP)
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    stream: bool = False
    metadata: dict[str, Any] | None = None  # accepted, as Anthropic keeps it for itself
    output_config: OutputConfig | None = None

    def output_schema(self) -> dict[str, Any] | None:
        """The JSON schema the reply's text must follow (``output_config.format``), if any."""
        fmt = self.output_config.format if self.output_config else None
        return fmt.json_schema if fmt else None

def _text(content: str | list[dict[str, Any]], where: str) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for j, block in enumerate(content):
        kind = block.get("type")
        if kind != "text" or not isinstance(block.get("text"), str):
            raise _unsupported(kind, f"{where}[{j}]", "text blocks")
        parts.append(block["text"])
    return "\n".join(parts)


def _blocks(role: str, blocks: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    texts: list[str] = []
    calls: list[ToolCall] = []
    results: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        kind, at = block.get("type"), f"{where}.content[{j}]"
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_use" and role == "assistant":
            given = block.get("input")
            if not isinstance(given, dict) or not isinstance(block.get("name"), str):
                raise InvalidParameterError(f"{at}: a tool_use block needs a name and an input object")
            calls.append(ToolCall(str(block.get("id") or ""), block["name"], given))
        elif kind == "tool_result" and role == "user":
            content = block.get("content", "")
            text = content if isinstance(content, str) else _text(content, f"{at}.content")
            if block.get("is_error"):
                text = f"Error: {text}"
            results.append({"role": "tool", "content": text, "tool_call_id": block.get("tool_use_id"),
                            "tool_calls": ()})
        else:
            raise _unsupported(kind, at, "text, tool_use (assistant) and tool_result (user) blocks")
    turn = {"role": role, "content": "\n".join(texts), "tool_calls": tuple(calls)}
    return [*results, turn] if results and texts else results or [turn]


def _unsupported(kind: Any, where: str, taken: str) -> InvalidParameterError:
    what = UNSUPPORTED.get(str(kind))
    if what:
        return InvalidParameterError(f"{where}: {what} are not supported: edgeslm serves text models")
    return InvalidParameterError(f"{where}: content blocks of type {json.dumps(str(kind))[:60]} are not "
                                 f"supported here; send {taken}")

"""Tool calling in a model's own format, where its chat template has one (as transformers'
``apply_chat_template(tools=)`` renders it and as llama.cpp's per-family handlers read it back).

A family is found from the template's text (``detect``, a table like llama.cpp's ``common/chat.cpp``
checks). Its tools go to the template (``tools``, or Phi-4-mini's system ``tools`` string), earlier
calls and tool results are written as the family writes them, and the reply is read back with the
family's markers (``parse``). The call itself is generated under a grammar (``tools.grammar``),
triggered lazily at the family's opening marker, so free text before it is not constrained.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from .generic import ToolReply, new_call_id
from .spec import Tool, ToolCall


class ToolFormat(str, Enum):
    GENERIC = "generic"  # no tools in the template: llama.cpp's Generic handler (``tools.generic``)
    HERMES = "hermes"  # Qwen 2.5/3, Hermes 2 Pro/3: <tool_call>{"name", "arguments"}</tool_call>
    LLAMA3 = "llama3"  # Llama 3.1-3.3: {"name", "parameters"} as the whole reply (<|python_tag|> optional)
    MISTRAL = "mistral"  # Mistral Nemo: [TOOL_CALLS][{"name", "arguments", "id"}, ...]
    MISTRAL_ARGS = "mistral-args"  # Mistral Small 3.2, Devstral: [TOOL_CALLS]name[ARGS]{...}
    PHI4 = "phi4"  # Phi-4-mini: functools[{"name", "arguments"}, ...] (or <|tool_call|>[...]<|/tool_call|>)


@dataclass(frozen=True)
class Family:
    arguments_key: str  # the call object's key for the arguments
    triggers: tuple[str, ...]  # regexes (llama.cpp's lazy-grammar patterns): the grammar starts at group 1
    markers: tuple[str, ...]  # special tokens the reply's text keeps (llama.cpp's preserved tokens)
    parallel: bool  # the format writes several calls in one reply


# The most blank characters the call grammar takes in one place (bounded: a model cannot loop on
# blank space). A trigger must never match text its grammar refuses (llama.cpp replays the match
# into the grammar and aborts the process if it cannot take it), so the triggers use the same bound.
BLANK = 16
_WS = f"[ \\t\\n]{{0,{BLANK}}}"

FAMILIES: dict[ToolFormat, Family] = {
    # Qwen 2.5 (the Coder models most) also writes a call as a fenced JSON block: llama.cpp's Hermes
    # handler triggers on and reads that form too (common/chat.cpp), and so does this one.
    ToolFormat.HERMES: Family(
        "arguments",
        (r"(<tool_call>)", rf'(```(?:json)?[ \t]{{0,4}}\n{_WS}\{{{_WS}"name"{_WS}:)'),
        ("<tool_call>", "</tool_call>"),
        True,
    ),
    ToolFormat.LLAMA3: Family(
        "parameters", (r'^[ \t\n]*(\{[ \t\n]{0,4}"name"[ \t\n]{0,4}:)[\s\S]*$',), ("<|python_tag|>",), False
    ),
    ToolFormat.MISTRAL: Family("arguments", (r"(\[TOOL_CALLS\])",), ("[TOOL_CALLS]",), True),
    ToolFormat.MISTRAL_ARGS: Family("arguments", (r"(\[TOOL_CALLS\])",), ("[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"), True),
    ToolFormat.PHI4: Family("arguments", (r"(functools\[)",), ("<|tool_call|>", "<|/tool_call|>"), True),
}

# (format, strings the template's source holds all of, strings it holds none of): the first row that fits.
DETECT: tuple[tuple[ToolFormat, tuple[str, ...], tuple[str, ...]], ...] = (
    (ToolFormat.MISTRAL_ARGS, ("[TOOL_CALLS]", "[ARGS]"), ()),
    (ToolFormat.MISTRAL, ("[TOOL_CALLS]", "tools"), ()),
    (ToolFormat.HERMES, ("<tool_call>", "tools"), ("<function=", "<tool_call>call:")),  # not Qwen3-Coder's XML
    (ToolFormat.LLAMA3, ("<|start_header_id|>", "ipython", "tools"), ()),
    (ToolFormat.PHI4, ("<|tool|>", "message['tools']"), ()),
)


def detect(template: str | None) -> ToolFormat:
    """The tool format a chat template writes; GENERIC when it has none this module reads."""
    if not template:
        return ToolFormat.GENERIC
    for fmt, wanted, unwanted in DETECT:
        if all(w in template for w in wanted) and not any(u in template for u in unwanted):
            return fmt
    return ToolFormat.GENERIC


MISTRAL_ID = re.compile(r"[A-Za-z0-9]{9}\Z")


def call_id(fmt: ToolFormat) -> str:
    """A new call's id: Mistral's templates refuse any but nine letters or digits."""
    if fmt in (ToolFormat.MISTRAL, ToolFormat.MISTRAL_ARGS):
        return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(9))
    return new_call_id()


def template_id(fmt: ToolFormat, raw: str) -> str:
    """An id as the template gets it: for Mistral, any other id mapped (stably) to nine hex digits."""
    if fmt in (ToolFormat.MISTRAL, ToolFormat.MISTRAL_ARGS) and not MISTRAL_ID.match(raw):
        return hashlib.sha256(raw.encode()).hexdigest()[:9]
    return raw


def prepare(fmt: ToolFormat, messages: Sequence[Mapping[str, Any]], tools: Sequence[Tool], *,
            offer: bool) -> list[dict[str, Any]]:
    """The conversation as the family's template takes it (OpenAI's shapes, arguments as objects,
    as transformers passes them; the ``tools`` variable is the job's). Phi-4-mini reads the tools
    off the system message, as a JSON string. ``offer`` False (tool_choice "none"): only earlier
    calls and results are written."""
    names = {c.id: c.name for m in messages for c in m.get("tool_calls") or ()}
    out = [_message(fmt, m, names) for m in messages]
    if fmt is ToolFormat.PHI4 and offer and tools:
        functions = json.dumps([t.as_openai()["function"] for t in tools], ensure_ascii=False)
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "tools": functions}
        else:
            out.insert(0, {"role": "system", "content": "", "tools": functions})
    return out


def _message(fmt: ToolFormat, m: Mapping[str, Any], names: dict[str, str]) -> dict[str, Any]:
    role, content = m["role"], m.get("content") or ""
    calls = m.get("tool_calls") or ()
    if role == "assistant" and calls:
        if fmt is ToolFormat.PHI4:  # its template writes the content only: the calls as the model writes them
            made = [{"name": c.name, "arguments": c.arguments} for c in calls]
            return {"role": "assistant", "content": f"functools{json.dumps(made, ensure_ascii=False)}"}
        return {"role": "assistant", "content": content, "tool_calls": [
            {"id": template_id(fmt, c.id), "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in calls]}
    if role == "tool":
        raw_id = m.get("tool_call_id") or ""
        name = m.get("tool_name") or names.get(raw_id, "")
        return {"role": "tool", "content": content, "name": name, "tool_call_id": template_id(fmt, raw_id)}
    return {"role": role, "content": content}


OPENINGS = {
    ToolFormat.HERMES: ("<tool_call>", "```json", "```\n{"),
    ToolFormat.MISTRAL: ("[TOOL_CALLS]",),
    ToolFormat.MISTRAL_ARGS: ("[TOOL_CALLS]",),
    ToolFormat.PHI4: ("functools[", "<|tool_call|>"),
}


def free_text(fmt: ToolFormat, text: str) -> int:
    """How much of a reply so far is text that no call can turn out to be: everything before the
    family's opening marker, less a tail that may be the marker's beginning. A Llama 3.x call is
    the whole reply: nothing is free until the reply shows it does not start with one; nor is a
    Hermes reply that starts as a bare JSON call may."""
    if fmt is ToolFormat.HERMES and text.lstrip().startswith("{") and not any(m in text for m in OPENINGS[fmt]):
        return 0
    if fmt is ToolFormat.LLAMA3:
        head = text.lstrip()
        may_call = any(m.startswith(head[: len(m)]) for m in ("{", "<|python_tag|>"))
        return 0 if not head or may_call else len(text)
    openings = OPENINGS.get(fmt, ())
    found = [i for i in (text.find(m) for m in openings) if i >= 0]
    if found:
        return min(found)
    tail = max((n for m in openings for n in range(1, len(m)) if text.endswith(m[:n])), default=0)
    return len(text) - tail


def parse(fmt: ToolFormat, text: str, tools: Sequence[Tool]) -> ToolReply:
    """The reply as text and calls. Text before the family's opening marker is content; a call that
    does not close (max_tokens) or names no offered tool leaves only that content, never half a call."""
    reader = _READERS[fmt]
    found = reader(text)
    if found is None:
        return ToolReply(text, (), complete=True)
    head, made = found
    content = head.strip() or None
    known = {t.name for t in tools}
    if made is None or not made or any(c.get("name") not in known for c in made):
        return ToolReply(content, (), complete=made is not None)
    calls = tuple(ToolCall(_own_id(fmt, c.get("id")), str(c["name"]), c["arguments"]) for c in made)
    return ToolReply(content, calls, complete=True)


def _own_id(fmt: ToolFormat, given: Any) -> str:
    return given if isinstance(given, str) and MISTRAL_ID.match(given) and fmt is ToolFormat.MISTRAL else call_id(fmt)


Found = tuple[str, list[dict[str, Any]] | None]  # (text before the calls, the calls; None if they do not parse)


def _call(value: Any, key: str) -> dict[str, Any] | None:
    """``{"name", key: {...}}`` as a call, else None."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get(key, value.get("arguments"))
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    return {"name": value["name"], "arguments": arguments, "id": value.get("id")}


def _calls(values: Any, key: str) -> list[dict[str, Any]] | None:
    items = values if isinstance(values, list) else [values]
    made = [c for c in (_call(v, key) for v in items) if c is not None]
    return made if made and len(made) == len(items) else None


def _json(text: str, *, head: bool = False) -> Any:
    """The JSON value ``text`` holds (``head``: the one it starts with, whatever follows)."""
    try:
        return json.JSONDecoder().raw_decode(text)[0] if head else json.loads(text)
    except json.JSONDecodeError:
        return None


FENCED_CALL = re.compile(r'```(?:json)?[ \t]*\n\s*(\{\s*"name"\s*:.*?)\s*(```|\Z)', re.S)


def _hermes(text: str) -> Found | None:
    start = text.find("<tool_call>")
    fenced = FENCED_CALL.search(text)
    if fenced is not None and (start < 0 or fenced.start() < start):
        return _fenced(text, fenced.start())
    if start < 0:
        return _bare(text)
    made: list[dict[str, Any]] = []
    for block in re.finditer(r"<tool_call>(.*?)(</tool_call>|\Z)", text[start:], re.S):
        call = _call(_json(block.group(1).strip()), "arguments") if block.group(2) else None
        if call is None:
            return text[:start], None
        made.append(call)
    return text[:start], made


def _bare(text: str) -> Found | None:
    """A reply that is nothing but calls as JSON objects, without tags (Qwen2.5 0.5B writes some
    this way; llama.cpp's Hermes 2 Pro parser took the opening tag as optional). Anything else in
    the reply leaves it text."""
    body, at = text.strip(), 0
    made: list[dict[str, Any]] = []
    if not re.match(r'\{\s*"name"\s*:', body):
        return None
    decoder = json.JSONDecoder()
    while at < len(body):
        try:
            value, at = decoder.raw_decode(body, at)
        except json.JSONDecodeError:
            return None
        call = _call(value, "arguments")
        if call is None:
            return None
        made.append(call)
        at = len(body) - len(body[at:].lstrip())
    return "", made


def _fenced(text: str, start: int) -> Found | None:
    """Calls written as fenced JSON blocks (```json {"name", "arguments"} ```); a fenced block that
    is not a call leaves the whole reply as text."""
    made: list[dict[str, Any]] = []
    for block in FENCED_CALL.finditer(text, start):
        if not block.group(2):  # the fence does not close: max_tokens ran out inside the call
            return text[:start], None
        call = _call(_json(block.group(1)), "arguments")
        if call is None:
            return None if not made else (text[:start], None)
        made.append(call)
    return text[:start], made


def _llama3(text: str) -> Found | None:
    body = text.strip().removeprefix("<|python_tag|>").strip()
    if not re.match(r'\{\s*"name"\s*:', body):
        return None
    whole = _json(body)
    if whole is not None:
        return "", _calls(whole, "parameters")
    parts = [_json(p) for p in body.split(";")]  # Llama 3.1 may join several calls with ";"
    return "", _calls(parts, "parameters") if len(parts) > 1 else None


def _mistral(text: str) -> Found | None:
    start = text.find("[TOOL_CALLS]")
    if start < 0:
        return None
    return text[:start], _calls(_json(text[start + len("[TOOL_CALLS]") :].strip(), head=True), "arguments")


ARGS_CALL = re.compile(r"\[TOOL_CALLS\]\s*([A-Za-z0-9_-]+)\s*(?:\[CALL_ID\]\s*([A-Za-z0-9]+)\s*)?\[ARGS\]")


def _mistral_args(text: str) -> Found | None:
    start = text.find("[TOOL_CALLS]")
    if start < 0:
        return None
    heads = list(ARGS_CALL.finditer(text, start))
    if not heads or heads[0].start() != start:
        return text[:start], None
    made = []
    for i, head in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        call = _call({"name": head.group(1), "arguments": _json(text[head.end() : end].strip())}, "arguments")
        if call is None:
            return text[:start], None
        made.append({**call, "id": head.group(2)})
    return text[:start], made


def _phi4(text: str) -> Found | None:
    start = text.find("functools[")
    if start >= 0:
        return text[:start], _calls(_json(text[start + len("functools") :], head=True), "arguments")
    start = text.find("<|tool_call|>")
    if start < 0:
        return None
    body, closed, _ = text[start + len("<|tool_call|>") :].partition("<|/tool_call|>")
    return text[:start], _calls(_json(body.strip()), "arguments") if closed else None


_READERS = {
    ToolFormat.HERMES: _hermes,
    ToolFormat.LLAMA3: _llama3,
    ToolFormat.MISTRAL: _mistral,
    ToolFormat.MISTRAL_ARGS: _mistral_args,
    ToolFormat.PHI4: _phi4,
}


_MARKERS: dict[str, frozenset[int]] = {}


def marker_tokens(tokenize: Callable[..., list[int]], fmt: str) -> frozenset[int]:
    """The family's markers that are single special tokens in this vocabulary (``tokenize``, one
    model's): their text stays in the reply (llama.cpp's preserved tokens), where ``parse`` looks
    for it. Cached per format: a runner serves one model."""
    if fmt not in _MARKERS:
        ids = [tokenize(m, add_special=False, parse_special=True) for m in FAMILIES[ToolFormat(fmt)].markers]
        _MARKERS[fmt] = frozenset(t[0] for t in ids if len(t) == 1)
    return _MARKERS[fmt]

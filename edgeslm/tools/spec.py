"""Tool definitions as clients send them, checked as hostile input: names, sizes, JSON Schemas.

Both dialects send OpenAI's shape, ``{"type": "function", "function": {"name", "description",
"parameters"}}``. A schema must be one llama.cpp's JSON-Schema-to-grammar converter expresses
(``SUPPORTED``): anything else is refused with the keywords named, before a model is touched,
and so are ``$ref`` cycles and references that leave the schema.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from ..engines.llamacpp.json_schema import BOUNDS, integer_bounds
from ..errors import InvalidParameterError

MAX_TOOLS = 128
MAX_DESCRIPTION = 65_536  # characters: Claude Code's tools have descriptions of several thousand
MAX_SCHEMA_BYTES = 64 * 1024  # one tool's parameters, as JSON
MAX_DEPTH = 32
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")  # OpenAI's rule for function names
# The keywords llama.cpp's converter (json_schema_to_grammar) turns into grammar, or that do not
# constrain the text (annotations).
SUPPORTED = frozenset({
    "type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems", "maxItems",
    "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs", "definitions", "pattern", "minLength",
    "maxLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "format",
    "description", "title", "default", "examples", "$schema", "$id", "$comment", "nullable",
})
# a length or count bound above this is not enforced (a grammar unrolls each repetition: Claude Code's
# maxLength 524,288 made 4 MB of GBNF); a strict schema with one is refused
MAX_ENFORCED_LENGTH = 4096
LENGTHS = ("minLength", "maxLength", "minItems", "maxItems")
ANNOTATIONS = frozenset({"description", "title", "default", "examples", "$schema", "$id", "$comment"})
TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})
ChoiceMode = Literal["auto", "none", "required", "function"]


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    strict: bool = False  # OpenAI's function.strict (Anthropic's tool strict): every keyword enforced or refused

    @property
    def enforced(self) -> dict[str, Any]:
        """The schema a call's grammar holds the arguments to (``enforceable``): all of a strict tool's;
        of another, what a grammar can enforce, the rest (keywords no grammar expresses, bounds on
        non-integers) left to the model as the prompt shows it, as Ollama and llama-server leave all of it."""
        enforced: dict[str, Any] = enforceable(self.parameters)
        return enforced

    def as_openai(self) -> dict[str, Any]:
        function = {"name": self.name, "description": self.description, "parameters": self.parameters}
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class ToolChoice:
    mode: ChoiceMode = "auto"
    name: str | None = None  # with mode "function"


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]


def parse_tools(raw: Any) -> tuple[Tool, ...]:
    """The request's ``tools``: at most MAX_TOOLS functions with distinct, plain names and usable schemas."""
    if not isinstance(raw, list):
        raise InvalidParameterError("tools must be a list of {type: function, function: {...}}", params="tools")
    if len(raw) > MAX_TOOLS:
        raise InvalidParameterError(f"{len(raw):,} tools; at most {MAX_TOOLS} per request", params="tools")
    tools = [_tool(i, item) for i, item in enumerate(raw)]
    names = [t.name for t in tools]
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise InvalidParameterError(f"two tools are named {twice!r}; tool names must differ", params="tools")
    return tuple(tools)


def _tool(i: int, item: Any) -> Tool:
    where = f"tools[{i}]"
    if not isinstance(item, dict) or item.get("type", "function") != "function":
        raise InvalidParameterError(f"{where}: only function tools are supported ({{type: function, ...}})")
    fn = item.get("function")
    if not isinstance(fn, dict):
        raise InvalidParameterError(f"{where}: 'function' must be an object with a name")
    name = fn.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        shown = repr(name)[:80] if isinstance(name, str) else type(name).__name__
        raise InvalidParameterError(
            f"{where}: the name {shown} is not 1 to 64 letters, digits, '_' or '-' (no spaces or control characters)"
        )
    description = fn.get("description") or ""
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
        raise InvalidParameterError(
            f"{where} ({name}): description must be text of at most {MAX_DESCRIPTION:,} characters")
    parameters = fn.get("parameters", {"type": "object", "properties": {}})
    strict = fn.get("strict") is True
    check_schema(parameters, f"{where} ({name}) parameters", strict=strict)
    return Tool(name, description, parameters, strict)


def check_schema(schema: Any, where: str, *, strict: bool = True) -> None:
    """A JSON Schema object of bounded size that llama.cpp's converter expresses, or a 400 saying why.
    Not ``strict``: keywords it cannot express, and bounds on non-integers, are let through
    (``enforceable`` takes them out of the grammar)."""
    if not isinstance(schema, dict):
        raise InvalidParameterError(f"{where}: not a JSON Schema (an object), but a JSON {_json_type(schema)}")
    try:
        size = len(json.dumps(schema))
    except (ValueError, RecursionError):
        raise InvalidParameterError(f"{where}: the schema is nested too deeply") from None
    if size > MAX_SCHEMA_BYTES:
        raise InvalidParameterError(f"{where}: the schema is {size:,} bytes; at most {MAX_SCHEMA_BYTES:,}")
    nodes = list(_nodes(schema, where))
    unknown = sorted({k for node in nodes for k in node if k not in SUPPORTED})
    if unknown and strict:
        raise InvalidParameterError(
            f"{where}: JSON Schema keyword(s) {', '.join(unknown)[:200]} cannot be enforced; supported: "
            f"{', '.join(sorted(SUPPORTED - {'$schema', '$id', '$comment'}))}"
        )
    for node in nodes:
        long = [k for k, v in node.items() if _too_long(k, v)]
        if long and strict:
            raise InvalidParameterError(
                f"{where}: {', '.join(long)} above {MAX_ENFORCED_LENGTH:,} cannot be enforced (a grammar unrolls "
                "each repetition); lower it, or leave the tool not strict")
        bounds = [b for b in BOUNDS if b in node]
        if bounds and node.get("type") != "integer":
            if not strict:
                continue
            raise InvalidParameterError(
                f"{where}: {', '.join(bounds)} can be enforced on an integer only (as llama.cpp's grammars do), "
                f"not on type {node.get('type', 'any')!r}; use an integer or an enum, or drop the bound"
            )
        if bounds and not all(_finite_number(node[b]) for b in bounds):
            raise InvalidParameterError(f"{where}: {', '.join(bounds)} must be numbers")
        low, high = integer_bounds(node) if bounds else (None, None)
        if low is not None and high is not None and low > high:
            raise InvalidParameterError(f"{where}: no integer lies within its bounds ({low} to {high})")
    _check_refs(schema, where)


def enforceable(schema: Any) -> Any:
    """``schema`` as a grammar holds it: without annotations (a node of a description alone is any
    value, which llama.cpp's converter takes only as ``{}``), keywords outside SUPPORTED and bounds on
    anything but an integer (the last two are refused in a strict schema: ``check_schema``)."""
    if isinstance(schema, list):
        return [enforceable(x) for x in schema]
    if not isinstance(schema, dict):
        return schema
    integer = schema.get("type") == "integer"
    kept = {k: v for k, v in schema.items()
            if k in SUPPORTED and k not in ANNOTATIONS and (integer or k not in BOUNDS) and not _too_long(k, v)}
    for key in ("properties", "$defs", "definitions"):
        if isinstance(kept.get(key), dict):
            kept[key] = {name: enforceable(child) for name, child in kept[key].items()}
    for key in ("anyOf", "oneOf", "allOf", "prefixItems", "items", "additionalProperties"):
        if key in kept:
            kept[key] = enforceable(kept[key])
    return kept


def _too_long(key: str, value: Any) -> bool:
    return key in LENGTHS and isinstance(value, int) and value > MAX_ENFORCED_LENGTH


def _nodes(schema: dict[str, Any], where: str, depth: int = 0) -> Iterator[dict[str, Any]]:
    """Every subschema, checked for shape on the way."""
    if depth > MAX_DEPTH:
        raise InvalidParameterError(f"{where}: the schema is nested more than {MAX_DEPTH} levels deep")
    yield schema
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind is not None else []
    if any(k not in TYPES for k in kinds):
        raise InvalidParameterError(f"{where}: type {kind!r} is not a JSON Schema type ({', '.join(sorted(TYPES))})")
    for key in ("properties", "$defs", "definitions"):
        children = schema.get(key, {})
        if not isinstance(children, dict):
            raise InvalidParameterError(f"{where}: '{key}' must be an object of schemas")
        for child in children.values():
            yield from _nodes(_schema(child, where, key), where, depth + 1)
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        children = schema.get(key, [])
        if not isinstance(children, list):
            raise InvalidParameterError(f"{where}: '{key}' must be a list of schemas")
        for child in children:
            yield from _nodes(_schema(child, where, key), where, depth + 1)
    for key in ("items", "additionalProperties"):
        child = schema.get(key)
        if isinstance(child, dict):
            yield from _nodes(child, where, depth + 1)
        elif child is not None and not isinstance(child, bool):
            raise InvalidParameterError(f"{where}: '{key}' must be a schema or a boolean")


def _schema(child: Any, where: str, key: str) -> dict[str, Any]:
    if not isinstance(child, dict):
        raise InvalidParameterError(f"{where}: an entry of '{key}' is not a schema (an object)")
    return child


def _check_refs(root: dict[str, Any], where: str) -> None:
    """Local references only (``#/$defs/X``, ``#/definitions/X``), each resolving, none in a cycle."""
    defs = {f"#/{key}/{name}": body for key in ("$defs", "definitions") for name, body in root.get(key, {}).items()}

    def refs(node: dict[str, Any]) -> set[str]:
        found = {str(n["$ref"]) for n in _nodes(node, where) if "$ref" in n}
        for ref in found:
            if ref not in defs:
                raise InvalidParameterError(f"{where}: $ref {ref[:100]!r} names no definition in this schema "
                                            "(only #/$defs/NAME and #/definitions/NAME)")
        return found

    graph = {name: refs({k: v for k, v in body.items() if k not in ("$defs", "definitions")})
             for name, body in defs.items()}
    refs({k: v for k, v in root.items() if k not in ("$defs", "definitions")})
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 1:
            loop = " -> ".join([*path[path.index(name) :], name])
            raise InvalidParameterError(f"{where}: $ref loop {loop[:200]}; recursive schemas are not supported")
        if state.get(name) == 2:
            return
        state[name] = 1
        for nxt in sorted(graph[name]):
            visit(nxt, [*path, name])
        state[name] = 2

    for name in sorted(graph):
        visit(name, [])


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) < 2**53


def _json_type(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


def parse_choice(raw: Any, tools: tuple[Tool, ...]) -> ToolChoice:
    """OpenAI's ``tool_choice``: "auto", "none", "required", or {type: function, function: {name}}."""
    if raw is None:
        return ToolChoice()
    if raw in ("auto", "none", "required"):
        return ToolChoice(raw)
    name = raw.get("function", {}).get("name") if isinstance(raw, dict) else None
    if not isinstance(name, str):
        raise InvalidParameterError(
            "tool_choice must be 'auto', 'none', 'required' or {type: function, function: {name: NAME}}",
            params="tool_choice",
        )
    if name not in {t.name for t in tools}:
        raise InvalidParameterError(f"tool_choice names {name[:64]!r}, which is not in tools", params="tool_choice")
    return ToolChoice("function", name)

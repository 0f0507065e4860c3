"""The grammar a family's calls are generated under (GBNF): the family's markers around call
objects whose arguments follow each tool's JSON Schema (llama.cpp's converter writes those rules).

The markers and the call's head accept any blank space (``tc-ws``), so whatever a lazily
triggered grammar is handed back from the free text (llama.cpp replays the tokens from the
trigger's group on) is text the grammar accepts.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from typing import Any

from ..engines.llamacpp.json_schema import schema_converter
from ..errors import EdgeslmError, InvalidParameterError
from .generic import MAX_PARALLEL
from .native import BLANK, FAMILIES, ToolFormat
from .spec import Tool, parse_tools

WS = "tc-ws"


def _lit(text: str) -> str:
    """A GBNF literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


def _repeat(one: str, parallel: bool, sep: str = WS) -> str:
    return f"{one} ( {sep} {one} ){{0,{MAX_PARALLEL - 1}}}" if parallel else one


def call_grammar(
    fmt: ToolFormat, tools: Sequence[Tool], only: str | None, parallel: bool, *, lazy: bool = False
) -> str:
    """GBNF whose ``root`` is the family's calls to ``tools`` (``only``: that one), one or (parallel) several.

    ``lazy`` (tool_choice "auto": the grammar starts at a trigger) also takes the other forms the
    family's triggers match, such as Qwen 2.5's calls fenced as JSON, each head as wide as its trigger."""
    family = FAMILIES[fmt]
    parallel = parallel and family.parallel
    converter = schema_converter()
    arguments = []
    for i, tool in enumerate(t for t in tools if only is None or t.name == only):
        schema = converter.resolve_refs(copy.deepcopy(tool.enforced), f"tool{i}")
        arguments.append((tool.name, converter.visit(schema, f"tool{i}-args")))
    rules = {WS: "[ \\t\\n]{0,4}"}  # bounded: a model cannot loop on blank space
    if fmt is ToolFormat.MISTRAL_ARGS:
        named = " | ".join(f"{_lit(name + '[ARGS]')} {rule}" for name, rule in arguments)
        rules["root"] = _repeat(f'( "[TOOL_CALLS]" ( {named} ) )', parallel)
        return _join(converter, rules)
    comma, colon = f'{WS} "," {WS}', f'{WS} ":" {WS}'
    key = _lit(json.dumps(family.arguments_key))
    named = " | ".join(f"{_lit(json.dumps(name))} {comma} {key} {colon} {rule}" for name, rule in arguments)
    own_id = f' {comma} {_lit(json.dumps("id"))} {colon} "\\"" [a-zA-Z0-9]{{9}} "\\""'
    rules["tc-call"] = f'"{{" {WS} {_lit(json.dumps("name"))} {colon} ( {named} )'
    rules["tc-call"] += f'{own_id if fmt is ToolFormat.MISTRAL else ""} {WS} "}}"'
    hermes = f'( "<tool_call>" {WS} tc-call {WS} "</tool_call>" )'
    if fmt is ToolFormat.HERMES and lazy:  # the fenced form's head takes what its trigger matched (native.BLANK)
        rules["tc-wide"] = f"[ \\t\\n]{{0,{BLANK}}}"
        wide = " | ".join(f'{_lit(json.dumps(name))} tc-wide "," tc-wide {key} tc-wide ":" tc-wide {rule}'
                          for name, rule in arguments)
        rules["tc-fenced"] = f'"{{" tc-wide {_lit(json.dumps("name"))} tc-wide ":" tc-wide ( {wide} ) tc-wide "}}"'
        hermes = f'( {hermes} | ( "```" "json"? [ \\t]{{0,4}} "\\n" tc-wide tc-fenced {WS} "```" ) )'
    listed = f'"[" {WS} {_repeat("tc-call", parallel, comma)} {WS} "]"'
    rules["root"] = {
        ToolFormat.HERMES: _repeat(hermes, parallel),
        ToolFormat.LLAMA3: "tc-call",
        ToolFormat.MISTRAL: f'"[TOOL_CALLS]" {WS} {listed}',
        ToolFormat.PHI4: f'"functools" {listed}',
    }[fmt]
    return _join(converter, rules)


def _join(converter: Any, rules: dict[str, str]) -> str:
    own = "\n".join(f"{name} ::= {rule}" for name, rule in rules.items())
    return f"{own}\n{converter.format_grammar()}"


def job_grammar(tooling: Mapping[str, Any]) -> tuple[str | None, tuple[str, ...]]:
    """A job's grammar and its triggers (none: the calls are forced) for its ``tooling``."""
    if tooling["choice"] == "none":
        return None, ()
    fmt = ToolFormat(tooling["format"])
    try:
        gbnf = call_grammar(fmt, parse_tools(tooling["tools"]), tooling.get("name"), bool(tooling["parallel"]),
                            lazy=tooling["choice"] == "auto")
    except EdgeslmError:
        raise
    except Exception as exc:  # the converter raises plain exceptions on what it cannot express (a pattern)
        raise InvalidParameterError(f"a tool's parameters cannot be made into a grammar: {str(exc)[:200]}") from None
    return gbnf, FAMILIES[fmt].triggers if tooling["choice"] == "auto" else ()


def format_grammar(spec: Any) -> str | None:
    """GBNF for Ollama's ``format`` / OpenAI's ``response_format``: "json" or a JSON schema (the
    runtime's converter, llama.cpp's, writes it); None without one."""
    if spec is None:
        return None
    from ..engines.llamacpp.engine import json_grammar

    return json_grammar(spec)

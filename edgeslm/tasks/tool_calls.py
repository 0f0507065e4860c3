"""Tool-call accuracy: a kept suite of requests (``edgeslm/data/tool_cases.json``, 150 cases in
four kinds), each sent the way ``POST /v1/chat/completions`` sends a request with tools — the
model's own tool format (Hermes for Qwen2.5) through its chat template, the runner's grammar for
that format, the reply read back by the same parser — and the calls compared with the accepted
answers: the right tools (any order for parallel calls), every listed argument with an accepted
value, every argument of its schema's type, none that the schema lacks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from importlib.resources import files
from pathlib import Path
from typing import Any

from ..errors import InputFileError, InvalidParameterError
from ..runner.messages import Job
from ..store.resolve import ResolvedModel, chat_template, stored
from ..tools.native import ToolFormat, detect
from ..tools.plan import ToolPlan, conversation, plan_tools

PROTOCOL = "edgeslm-tool-suite/1, greedy, tool_choice auto, parallel_tool_calls true, 512 tokens"
MAX_TOKENS = 512
MAX_SUITE_BYTES = 4 << 20
KINDS = ("single", "choose", "parallel", "none")
SCHEMA_KEYS = frozenset({"type", "description", "enum", "minimum", "maximum", "properties", "required"})
JSON_TYPES: Mapping[str, tuple[type, ...]] = {
    "string": (str,), "number": (int, float), "integer": (int,), "boolean": (bool,),
}


@dataclass(frozen=True)
class Case:
    id: str
    kind: str
    tools: tuple[dict[str, Any], ...]  # OpenAI's shape
    request: str
    expect: tuple[dict[str, Any], ...]  # {"name": ..., "arguments": {arg: accepted}}


def suite_path() -> Path:
    return Path(str(files("edgeslm").joinpath("data/tool_cases.json")))


def load_suite(path: Path | None = None) -> list[Case]:
    """The cases, checked: a suite that is not this shape is refused by name."""
    path = path or suite_path()
    try:
        if path.stat().st_size > MAX_SUITE_BYTES:
            raise InputFileError(f"{path}: over {MAX_SUITE_BYTES >> 20} MiB; not a tool-call suite")
        doc = json.loads(path.read_text(encoding="utf-8"))
        tools = doc["tools"]
        cases = [_case(path, item, tools) for item in doc["cases"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputFileError(f"{path}: not a tool-call suite ({type(exc).__name__}: {exc})") from None
    if not cases or len({c.id for c in cases}) != len(cases):
        raise InputFileError(f"{path}: no cases, or case ids repeated")
    return cases


def _case(path: Path, item: Mapping[str, Any], tools: Mapping[str, Any]) -> Case:
    case = Case(str(item["id"]), str(item["kind"]), tuple(tools[t] for t in item["tools"]), str(item["request"]),
                tuple(item["expect"]))
    offered = {t["function"]["name"]: t["function"]["parameters"] for t in case.tools}
    for schema in offered.values():
        _check_schema(path, case.id, schema)
    wrong = case.kind not in KINDS or (case.kind == "none") != (not case.expect)
    for call in case.expect:
        wrong = wrong or call["name"] not in offered or not set(call["arguments"]) <= set(offered[call["name"]]
                                                                                               ["properties"])
    if wrong:
        raise InputFileError(f"{path}: case {case.id}: its kind, tools and expected calls disagree")
    return case


def _check_schema(path: Path, case_id: str, schema: Mapping[str, Any]) -> None:
    """The suite's schemas keep to what ``arguments_fit`` checks: typed properties, enum, bounds."""
    props = schema.get("properties", {})
    if schema.get("type") != "object" or not isinstance(props, dict) or any(
        set(p) - SCHEMA_KEYS or p.get("type") not in JSON_TYPES for p in props.values()
    ):
        raise InputFileError(f"{path}: case {case_id}: a schema uses more than typed properties, enum and bounds")


def arguments_fit(arguments: Mapping[str, Any], schema: Mapping[str, Any]) -> str | None:
    """Why ``arguments`` do not fit ``schema`` (the suite's subset of JSON Schema), or None."""
    props, required = schema.get("properties", {}), schema.get("required", [])
    for name in required:
        if name not in arguments:
            return f"missing required argument {name}"
    for name, value in arguments.items():
        if name not in props:
            return f"argument {name} is not in the tool's schema"
        spec = props[name]
        types = JSON_TYPES[spec["type"]]
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            return f"argument {name} is {type(value).__name__}, not {spec['type']}"
        if "enum" in spec and value not in spec["enum"]:
            return f"argument {name}={value!r} is not one of {spec['enum']}"
        if "minimum" in spec and value < spec["minimum"] or "maximum" in spec and value > spec["maximum"]:
            return f"argument {name}={value!r} is out of bounds"
    return None


def _same(accepted: Any, value: Any) -> bool:
    if isinstance(accepted, str):
        if not isinstance(value, str):
            return False
        norm = value.strip().lower()
        return accepted.lower() in (norm, norm.split(",")[0].strip())  # "Paris, France" is Paris
    if isinstance(accepted, int | float) and not isinstance(accepted, bool):
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isclose(value, accepted)
    return bool(accepted == value)


def value_accepted(accepted: Any, value: Any) -> bool:
    if isinstance(accepted, Mapping):
        if accepted.get("any"):
            return True
        words = accepted.get("contains", [])
        return isinstance(value, str) and all(w.lower() in value.lower() for w in words)
    return any(_same(a, value) for a in accepted)


def _call_matches(expected: Mapping[str, Any], name: str, arguments: Mapping[str, Any]) -> bool:
    return name == expected["name"] and all(
        arg in arguments and value_accepted(accepted, arguments[arg]) for arg, accepted in expected["arguments"].items()
    )


def score(case: Case, calls: Sequence[tuple[str, Mapping[str, Any]]]) -> tuple[bool, str]:
    """Whether the calls answer the case, and why not."""
    if case.kind == "none":
        return (not calls, "ok" if not calls else f"called {calls[0][0]} where no tool fits")
    if not calls:
        return False, "no call"
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in case.tools}
    for name, arguments in calls:
        if name not in schemas:
            return False, f"called {name}, which was not offered"
        why = arguments_fit(arguments, schemas[name])
        if why:
            return False, f"{name}: {why}"
    if len(calls) != len(case.expect):
        return False, f"{len(calls)} calls where {len(case.expect)} were expected"
    left = list(case.expect)
    for name, arguments in calls:  # each call answers one expected call, in any order
        match = next((e for e in left if _call_matches(e, name, arguments)), None)
        if match is None:
            return False, f"{name}({json.dumps(arguments, ensure_ascii=False)[:200]}) answers no expected call"
        left.remove(match)
    return True, "ok"


def tool_format(model: ResolvedModel) -> ToolFormat:
    """The model's own tool format, read from its chat template (once per run, as the server caches it)."""
    return detect(chat_template(model))


def plan_for(fmt: ToolFormat, case: Case) -> ToolPlan:
    """The plan ``POST /v1/chat/completions`` makes for this request on a model of format ``fmt``."""
    return replace(plan_tools(list(case.tools), "auto", True, has_format=False), fmt=fmt)


def job_for(model: ResolvedModel, plan: ToolPlan, case: Case, sampling: Any) -> Job:
    """The runner job the OpenAI route builds: the conversation in the model's tool format,
    the stored defaults applied, the format's grammar in ``tooling``."""
    given = [{"role": "user", "content": case.request, "tool_calls": (), "tool_call_id": None}]
    messages, system = stored(model).conversation(conversation(given, plan, ids_required=True))
    if not plan.active:  # pragma: no cover - every case offers tools
        raise InvalidParameterError(f"case {case.id} offers no tools")
    return Job(messages, sampling, MAX_TOKENS, (), system=system, format=plan.format(), tooling=plan.tooling())

"""Template-native tool calling (issue 16): each family's published chat template (``data/
chat_templates``) detected, rendered with tools and a tool round trip, a canned reply parsed into
its calls; the family's grammar, lazily triggered, through the server on synthetic GGUFs that
carry those templates; and the penalties' history as llama-server keeps it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from edgeslm.chat import render_chat
from edgeslm.engines.base import LoadParams, SamplingParams, open_engine
from edgeslm.engines.llamacpp.json_schema import int_range, integer_bounds, schema_gbnf
from edgeslm.errors import InvalidParameterError
from edgeslm.tools import ToolCall, parse_tools
from edgeslm.tools.grammar import call_grammar
from edgeslm.tools.native import ToolFormat, detect, free_text, parse, prepare

from .ggufbuild import write_runnable_model

TEMPLATES = Path(__file__).parent / "data" / "chat_templates"
# Bounded arguments: a random model under the grammar then always closes its call.
CITY_DAYS = {"city": {"type": "string", "enum": ["Paris", "Rome"]}, "days": {"type": "integer", "minimum": 1,
                                                                            "maximum": 7}}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "properties": CITY_DAYS, "required": ["city", "days"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {
    "zone": {"$ref": "#/$defs/zone"}}, "required": ["zone"], "$defs": {"zone": {"enum": ["UTC", "CET"]}}}}}
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}
PARIS, ROME = {"city": "Paris", "days": 1}, {"city": "Rome", "days": 2}


@dataclass(frozen=True)
class Case:
    fmt: ToolFormat
    history_call: str  # how the template writes the earlier call
    reply: str  # a canned reply in the family's syntax
    content: str | None
    calls: tuple[dict[str, Any], ...]
    specials: dict[str, int]  # the family's markers as the model's vocabulary has them (3 control, 4 user-defined)


HERMES_SPECIALS = {"<tool_call>": 4, "</tool_call>": 4}
HERMES_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 1}}\n</tool_call>'
CASES = {
    "Qwen-Qwen2.5-7B-Instruct": Case(
        ToolFormat.HERMES, HERMES_CALL,
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 1}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome", "days": 2}}\n</tool_call>',
        "Let me check.", (PARIS, ROME), HERMES_SPECIALS),
    "Qwen-Qwen3-0.6B": Case(
        ToolFormat.HERMES, HERMES_CALL,
        '<think>\nThe user wants weather.\n</think>\n\n<tool_call>\n{"name": "get_weather", "arguments": '
        '{"city": "Paris", "days": 1}}\n</tool_call>',
        "<think>\nThe user wants weather.\n</think>", (PARIS,), HERMES_SPECIALS),
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use": Case(
        ToolFormat.HERMES, HERMES_CALL,
        '<tool_call>\n{"arguments": {"city": "Paris", "days": 1}, "name": "get_weather"}\n</tool_call>',
        None, (PARIS,), HERMES_SPECIALS),
    "meta-llama-Llama-3.1-8B-Instruct": Case(
        ToolFormat.LLAMA3, '{"name": "get_weather", "parameters": {"city": "Paris", "days": 1}}',
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "days": 1}}', None, (PARIS,),
        {"<|python_tag|>": 3, "<|eom_id|>": 3}),
    "meta-llama-Llama-3.2-3B-Instruct": Case(
        ToolFormat.LLAMA3, '{"name": "get_weather", "parameters": {"city": "Paris", "days": 1}}',
        '{"name": "get_weather", "parameters": {"city": "Paris", "days": 1}}', None, (PARIS,),
        {"<|python_tag|>": 3}),
    "mistralai-Mistral-Nemo-Instruct-2407": Case(
        ToolFormat.MISTRAL, '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "days": 1}, "id": "',
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "days": 1}, "id": "a1B2c3D4e"}, '
        '{"name": "get_weather", "arguments": {"city": "Rome", "days": 2}, "id": "z9y8x7w6v"}]',
        None, (PARIS, ROME), {"[TOOL_CALLS]": 3}),
    "Mistral-Small-3.2-24B-Instruct-2506": Case(
        ToolFormat.MISTRAL_ARGS, '[TOOL_CALLS]get_weather[CALL_ID]',
        'Checking both.[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "days": 1}'
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Rome", "days": 2}',
        "Checking both.", (PARIS, ROME), {"[TOOL_CALLS]": 3, "[ARGS]": 3, "[CALL_ID]": 3}),
    "microsoft-Phi-4-mini-instruct": Case(
        ToolFormat.PHI4, 'functools[{"name": "get_weather", "arguments": {"city": "Paris", "days": 1}}]',
        '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris", "days": 1}}]<|/tool_call|>',
        None, (PARIS,), {"<|tool_call|>": 3, "<|/tool_call|>": 3}),
}
HISTORY = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": (ToolCall("call_0123abcd", "get_weather", PARIS),)},
    {"role": "tool", "content": "18 C and sunny", "tool_call_id": "call_0123abcd"},
]


def _template(name: str) -> str:
    return (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")


def _render(name: str, messages: list[dict[str, Any]], *, offer: bool = True) -> str:
    fmt, tools = detect(_template(name)), parse_tools([WEATHER, TIME])
    listed = [t.as_openai() for t in tools] if offer and fmt is not ToolFormat.PHI4 else None
    prepared = prepare(fmt, messages, tools, offer=offer)
    return render_chat(_template(name), prepared, tools=listed, bos_token="<s>", eos_token="</s>")


def test_every_published_template_is_in_the_table() -> None:
    assert sorted(p.stem for p in TEMPLATES.glob("*.jinja")) == sorted(CASES)


@pytest.mark.parametrize("name", list(CASES))
def test_family_renders_tools_and_a_round_trip_and_parses_its_reply(name: str) -> None:
    case = CASES[name]
    assert detect(_template(name)) is case.fmt
    prompt = _render(name, HISTORY)
    assert '"name": "get_time"' in prompt and "The weather in a city" in prompt  # the tools, through the template
    assert case.history_call in prompt and "18 C and sunny" in prompt  # the earlier call and its result
    if case.fmt in (ToolFormat.MISTRAL, ToolFormat.MISTRAL_ARGS):  # its template takes nine-character ids only
        assert "call_0123abcd" not in prompt
    assert "get_time" not in _render(name, HISTORY, offer=False)  # tool_choice "none": tools not shown

    reply = parse(case.fmt, case.reply, parse_tools([WEATHER, TIME]))
    assert reply.complete and reply.content == case.content
    assert [(c.name, c.arguments) for c in reply.calls] == [("get_weather", a) for a in case.calls]
    assert len({c.id for c in reply.calls}) == len(case.calls)
    if case.fmt is ToolFormat.MISTRAL:
        assert [c.id for c in reply.calls] == ["a1B2c3D4e", "z9y8x7w6v"]  # the model's own ids are kept
    cut = parse(case.fmt, case.reply[: len(case.reply) - 12], parse_tools([WEATHER, TIME]))
    assert cut.calls == () and cut.content == case.content  # cut by max_tokens: never half a call


def test_a_call_to_a_tool_not_offered_is_text_not_a_call() -> None:
    reply = parse(ToolFormat.HERMES, '<tool_call>\n{"name": "rm_rf", "arguments": {}}\n</tool_call>',
                  parse_tools([WEATHER]))
    assert reply.calls == () and reply.complete


@pytest.mark.parametrize(
    "template",
    [
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}",  # SmolLM2's ChatML
        "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m.role }}\n{{ m.content }}<end_of_turn>\n{% endfor %}",
        "{% if tools %}<tool_call>\n<function=f>\n<parameter=x>\n{% endif %}",  # Qwen3-Coder's XML calls
        None,
    ],
)
def test_templates_without_a_known_format_use_the_generic_one(template: str | None) -> None:
    assert detect(template) is ToolFormat.GENERIC


def test_a_lazy_grammar_leaves_text_free_until_its_trigger(tmp_path: Path) -> None:
    """llama.cpp's lazy grammar: free (greedy) text up to the trigger, then only what the grammar allows."""
    engine = open_engine("llama.cpp", write_runnable_model(tmp_path / "m.gguf", seed=3), LoadParams(n_ctx=256))
    prompt = engine.tokenize("Hello there", add_special=True)

    def text(sampling: SamplingParams) -> bytes:
        out = []
        for token in islice(engine.generate_tokens(prompt, sampling), 40):
            if engine.is_end_of_generation(token):
                break
            out.append(engine.token_bytes(token))
        return b"".join(out)

    free = text(SamplingParams(temperature=0))
    at = next(i for i in range(len(free) - 1) if free[i : i + 2].isalnum() and free[i : i + 2].isascii())
    pair = free[at : at + 2].decode()
    lazy = SamplingParams(temperature=0, grammar=f'root ::= "{pair}" " done"', grammar_triggers=(f"({pair})",))
    assert text(lazy) == free[: at + 2] + b" done"


def test_a_template_without_tool_or_system_roles_gets_them_written_as_user_turns(tmp_path: Path) -> None:
    """Gemma 2's template raises on a system or a tool message: probed once, the generic format's
    system text opens the first user turn and tool results come back as a user turn in JSON (as
    minja's polyfills wrote them). A template with both roles is left alone."""
    from edgeslm.generation import load
    from edgeslm.tools import prepare as generic_prepare
    from edgeslm.tools.spec import ToolChoice

    gemma = (TEMPLATES / "generic" / "google-gemma-2-2b-it.jinja").read_text(encoding="utf-8")
    model = load(str(write_runnable_model(tmp_path / "g.gguf", chat_template=gemma)), ctx=256)
    try:
        assert not model.takes_role("tool") and not model.takes_role("system")
        history = [{**HISTORY[1]}, HISTORY[2], HISTORY[3], {**HISTORY[3], "content": "windy"}]
        prompt = model.render(generic_prepare(history, parse_tools([WEATHER]), ToolChoice("auto"), False))
    finally:
        model.close()
    turns = prompt.split("<start_of_turn>")[1:]
    assert [t.split("\n")[0] for t in turns] == ["user", "model", "user", "model"]
    assert turns[0].startswith("user\nYou can call any of the following tools") and "What is the weather" in turns[0]
    assert '{"tool_response": {"tool": "get_weather", "content": "18 C and sunny"}}' in turns[2]
    assert '"content": "windy"' in turns[2]  # two results in a row: one user turn
    chatml = (TEMPLATES / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text(encoding="utf-8")
    nemo = (TEMPLATES / "mistralai-Mistral-Nemo-Instruct-2407.jinja").read_text(encoding="utf-8")
    for i, template in enumerate((chatml, nemo)):
        other = load(str(write_runnable_model(tmp_path / f"{i}.gguf", chat_template=template)), ctx=256)
        assert other.takes_role("tool") and other.takes_role("system")
        other.close()


def _as_regex(gbnf: str) -> re.Pattern[str]:
    """The integer grammars' GBNF subset (literals, classes, groups, counts) as a Python regex."""
    return re.compile(re.sub(r'"([^"]*)"', lambda m: re.escape(m.group(1)), gbnf).replace(" ", ""))


BOUNDED = [(1, 7), (0, 9), (-5, 5), (-20, -3), (15, 1234), (99, 101), (7, None), (0, None), (-13, None), (109, None),
           (2700, None), (None, 5), (None, 0), (None, -109)]


@pytest.mark.parametrize("bounds", BOUNDED)
def test_integer_bounds_take_exactly_the_integers_within(bounds: tuple[int | None, int | None]) -> None:
    """minimum/maximum as GBNF (llama-cpp-python's converter drops them): every integer from -3,000
    to 5,000 is taken exactly when it is within, no leading zero or "-0" (minimum 109 refuses 19,
    which a port of llama.cpp's one-sided construction took)."""
    lo, hi = bounds
    pattern = _as_regex(int_range(lo, hi))
    for n in range(-3000, 5001):
        assert bool(pattern.fullmatch(str(n))) == ((lo is None or n >= lo) and (hi is None or n <= hi)), n
    assert not any(pattern.fullmatch(s) for s in ("-0", "007", "01", "1.5", ""))
    schema = {"type": "integer", "exclusiveMinimum": 0.5, "maximum": 7.9}
    assert integer_bounds(schema) == (1, 7) and "[1-7]" in schema_gbnf(schema)


def test_bounds_the_grammar_cannot_enforce_are_refused_when_strict_and_loosened_otherwise() -> None:
    """A strict tool (OpenAI's function.strict) is refused with what its grammar could not enforce; any
    other is taken, as Ollama and llama-server take it (Claude Code's tools bound numbers), its grammar
    enforcing the rest: the prompt still shows the whole schema."""
    for node in ({"type": "number", "minimum": 0}, {"type": ["integer", "null"], "maximum": 3}, {"maximum": 3}):
        function = {"name": "f", "parameters": {"type": "object", "properties": {"x": node}, "not": {"type": "null"}}}
        with pytest.raises(InvalidParameterError, match="can be enforced on an integer only|keyword.s. not cannot"):
            parse_tools([{"type": "function", "function": {**function, "strict": True}}])
        (taken,) = parse_tools([{"type": "function", "function": function}])
        assert taken.parameters == function["parameters"] and not taken.strict
        loose = {k: v for k, v in node.items() if k != "maximum" and k != "minimum"}
        assert taken.enforced == {"type": "object", "properties": {"x": loose}}
    bounded = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 7},
                                                "r": {"type": "number", "maximum": 1},
                                                "any": {"description": "any JSON value"}}}
    for strict in (False, True):  # a description alone is any value (llama.cpp's converter takes {} only)
        function = {"name": "f", "parameters": bounded if not strict else {**bounded, "properties": {
            k: v for k, v in bounded["properties"].items() if k != "r"}}, "strict": strict}
        (kept,) = parse_tools([{"type": "function", "function": function}])
        assert kept.enforced["properties"] == {"n": {"type": "integer", "minimum": 1, "maximum": 7}, "any": {},
                                               **({} if strict else {"r": {"type": "number"}})}
        assert "tool0-args" in call_grammar(ToolFormat.HERMES, [kept], None, False)
    huge = {"type": "object", "properties": {"script": {"type": "string", "maxLength": 524288}}}  # Claude Code's
    with pytest.raises(InvalidParameterError, match="maxLength above 4,096 cannot be enforced"):
        parse_tools([{"type": "function", "function": {"name": "f", "parameters": huge, "strict": True}}])
    (loose,) = parse_tools([{"type": "function", "function": {"name": "f", "parameters": huge}}])
    assert loose.enforced["properties"]["script"] == {"type": "string"}
    assert len(call_grammar(ToolFormat.HERMES, [loose], None, False)) < 10_000
    with pytest.raises(InvalidParameterError, match="no integer lies within its bounds"):
        parse_tools([{"type": "function", "function": {"name": "f", "parameters": {"type": "integer", "minimum": 3,
                                                                                 "exclusiveMaximum": 3}}}])
    with pytest.raises(InvalidParameterError, match="must be numbers"):
        parse_tools(
            [{"type": "function", "function": {"name": "f", "parameters": {"type": "integer", "minimum": "1"}}}]
        )


# -- the families' grammars through the server --------------------------------------------------


@pytest.fixture(scope="module")
def family_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from edgeslm.importing import import_model
    from edgeslm.store import Store, parse_name

    from .servekit import serving

    home = tmp_path_factory.mktemp("families-home")
    store = Store.open(home / "models")
    for i, (name, case) in enumerate(CASES.items()):
        path = write_runnable_model(home / f"{i}.gguf", seed=i, chat_template=_template(name), specials=case.specials)
        import_model(store, path, parse_name(f"family-{i}"))
    with serving(home, parallel=2, ctx=4096, prompt_cache=False) as base:  # byte tokens: long prompts
        yield base


def _valid(call: Any) -> dict[str, Any]:
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, SCHEMAS[call.function.name] | {"$defs": {"zone": {"enum": ["UTC", "CET"]}}})
    return {"name": call.function.name, "arguments": arguments}


@pytest.mark.parametrize("index", range(len(CASES)))
def test_each_familys_calls_are_forced_valid_and_stream_alike(family_url: str, index: int) -> None:
    """tool_choice "required" on a random model with the family's template: its grammar from the
    first token, so every call is in the family's syntax, parses and validates; streamed alike."""
    import openai

    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    with openai.OpenAI(base_url=f"{family_url}/v1", api_key="unused", max_retries=0) as oai:

        def create(**kw: Any) -> Any:
            return oai.chat.completions.create(model=f"family-{index}", messages=ask, tools=[WEATHER, TIME],  # type: ignore[arg-type]
                                               max_tokens=160, **kw)

        for temperature in (0.0, 0.8, 0.8):
            (choice,) = create(tool_choice="required", temperature=temperature, seed=7).choices
            assert choice.finish_reason == "tool_calls", choice.message.content
            for call in choice.message.tool_calls:
                _valid(call)
        named = create(tool_choice={"type": "function", "function": {"name": "get_time"}}, temperature=0.8)
        assert {c.function.name for c in named.choices[0].message.tool_calls} == {"get_time"}

        greedy = create(tool_choice="required", temperature=0).choices[0].message.tool_calls
        parts: dict[int, dict[str, str]] = {}
        for chunk in create(tool_choice="required", temperature=0, stream=True):
            for delta in chunk.choices[0].delta.tool_calls or ():
                part = parts.setdefault(delta.index, {"name": "", "arguments": ""})
                part["name"] += delta.function.name or ""
                part["arguments"] += delta.function.arguments or ""
        streamed = [{"name": p["name"], "arguments": json.loads(p["arguments"])} for _, p in sorted(parts.items())]
        assert streamed == [_valid(c) for c in greedy]


def test_auto_leaves_a_random_models_text_alone_and_streams_it(family_url: str) -> None:
    """With "auto" the grammar waits for the family's opening marker: a model that writes none
    answers in text (a random model never writes <tool_call>), streamed as it comes, in both dialects."""
    import ollama
    import openai

    ask = [{"role": "user", "content": "Hi"}]
    client = ollama.Client(host=family_url)
    try:
        options = {"temperature": 0, "num_predict": 24}
        reply = client.chat(model="family-0", messages=ask, tools=[WEATHER], options=options)
        parts = [p.message.content for p in client.chat(model="family-0", messages=ask, tools=[WEATHER],
                                                        options=options, stream=True)]
    finally:
        client._client.close()
    assert not reply.message.tool_calls and reply.message.content
    assert "".join(parts) == reply.message.content and len([p for p in parts if p]) > 3
    with openai.OpenAI(base_url=f"{family_url}/v1", api_key="unused", max_retries=0) as oai:
        kw: Any = {"model": "family-0", "messages": ask, "tools": [WEATHER], "temperature": 0, "max_tokens": 24}
        whole = oai.chat.completions.create(**kw).choices[0].message
        chunks = [c.choices[0].delta.content for c in oai.chat.completions.create(**kw, stream=True) if c.choices]
    assert not whole.tool_calls and "".join(c or "" for c in chunks) == whole.content
    assert len([c for c in chunks if c]) > 3


def test_tool_choice_none_leaves_the_response_format_in_force(family_url: str) -> None:
    """Tools offered but "none" chosen, with a JSON schema: the reply follows the schema, integer
    bounds included (the converter llama-cpp-python ships would let any integer through)."""
    import openai

    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 3, "maximum": 5}}, "required": ["n"]}
    fmt: Any = {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}
    with openai.OpenAI(base_url=f"{family_url}/v1", api_key="unused", max_retries=0) as oai:
        for seed in range(4):
            reply = oai.chat.completions.create(model="family-0", messages=[{"role": "user", "content": "n?"}],
                                                tools=[WEATHER], tool_choice="none", response_format=fmt,  # type: ignore[arg-type]
                                                temperature=1.0, seed=seed, max_tokens=64).choices[0]
            assert reply.finish_reason == "stop" and not reply.message.tool_calls
            jsonschema.validate(json.loads(reply.message.content or ""), schema)


@pytest.mark.parametrize(
    ("fmt", "text", "free"),
    [
        (ToolFormat.HERMES, "Let me check.", 13),
        (ToolFormat.HERMES, "Let me <tool", 7),  # "<tool" may open a call: held
        (ToolFormat.HERMES, 'Let me <tool_call>\n{"na', 7),
        (ToolFormat.HERMES, "Here:\n```", 6),  # may open a fenced call (Qwen 2.5): held
        (ToolFormat.HERMES, 'Here:\n```json\n{"name"', 6),
        (ToolFormat.HERMES, "Here:\n```python\nprint(1)", 24),
        (ToolFormat.HERMES, ' {"name": "get_we', 0),  # may be a bare call (Qwen2.5 0.5B): held
        (ToolFormat.MISTRAL_ARGS, "Sure[TOOL_C", 4),
        (ToolFormat.PHI4, "Here functools", 5),
        (ToolFormat.LLAMA3, "", 0),
        (ToolFormat.LLAMA3, "  {", 0),  # a Llama 3.x call is the whole reply
        (ToolFormat.LLAMA3, "<|pyth", 0),
        (ToolFormat.LLAMA3, "Paris is sunny", 14),
    ],
)
def test_text_streams_up_to_where_a_call_may_begin(fmt: ToolFormat, text: str, free: int) -> None:
    assert free_text(fmt, text) == free


FENCED = '```json\n{\n    "name": "get_weather",\n    "arguments": {"city": "Paris", "days": 1}\n}\n```'


@pytest.mark.parametrize(
    ("text", "content", "names"),
    [
        (FENCED, None, ["get_weather"]),
        ("I will check.\n" + FENCED, "I will check.", ["get_weather"]),
        (FENCED + "\n" + FENCED.replace("Paris", "Rome"), None, ["get_weather", "get_weather"]),
        ('Here is JSON:\n```json\n{"a": 1}\n```', 'Here is JSON:\n```json\n{"a": 1}\n```', []),
        ("Code:\n```python\nprint(1)\n```", "Code:\n```python\nprint(1)\n```", []),
        (FENCED[:40], None, []),  # cut inside the call (max_tokens): neither a call nor half of one
        # bare JSON, no tag (the opening tag optional, as llama.cpp's Hermes 2 Pro parser had it)
        ('{"name": "get_weather", "arguments": {"city": "Paris", "days": 1}}', None, ["get_weather"]),
        ('{"name": "get_weather", "arguments": {"city": "Paris"}}\n{"name": "get_weather", "arguments": '
         '{"city": "Rome"}}', None, ["get_weather", "get_weather"]),
        ('{"name": "get_weather", "arguments": {"city": "Paris"}} and more', '{"name": "get_weather", "arguments": '
         '{"city": "Paris"}} and more', []),  # not only calls: text
        ('{"name": "get_weather", "arguments": {"city": "Par', '{"name": "get_weather", "arguments": {"city": "Par',
         []),  # cut short: text, never half a call
        ('{"name": "delete_everything", "arguments": {}}', None, []),  # a tool not offered: no call
    ],
)
def test_hermes_reads_calls_fenced_as_json_as_qwen_writes_them(
    text: str, content: str | None, names: list[str]
) -> None:
    reply = parse(ToolFormat.HERMES, text, parse_tools([WEATHER]))
    assert [c.name for c in reply.calls] == names and reply.content == content
    assert all(c.arguments["city"] in ("Paris", "Rome") for c in reply.calls)


def test_every_text_a_trigger_matches_is_text_its_grammar_takes(tmp_path: Path) -> None:
    """llama.cpp replays a trigger's match into the lazy grammar and aborts the whole process when
    the grammar cannot take it: the widest text each Hermes trigger matches (BLANK blank characters
    in each place) is accepted token by token by the lazy sampler, in a child process so that an
    abort is a failure here, not the end of the test run."""
    from edgeslm.tools.native import BLANK, FAMILIES

    model = write_runnable_model(tmp_path / "m.gguf", seed=3)
    pad = " " * (BLANK - 1) + "\n"
    # each trigger's widest match, and what the grammar must take next
    fenced = f'```json\t\t\t\t\n{pad}{{{pad}"name"{pad}:'
    rest = f'{pad}"get_weather"{pad},{pad}"arguments"{pad}:{{"city": "Paris", "days": 1}}{pad}}}\n```'
    widest = [("<tool_call>", '\n{"name"'), (fenced, rest)]
    for trigger, (text, after) in zip(FAMILIES[ToolFormat.HERMES].triggers, widest, strict=True):
        assert re.fullmatch(trigger, text), trigger
        code = (
            "import sys, llama_cpp as lc\n"
            "from edgeslm.engines.base import LoadParams, open_engine\n"
            "from edgeslm.tools import parse_tools\n"
            "from edgeslm.tools.grammar import call_grammar\n"
            "from edgeslm.tools.native import ToolFormat\n"
            "engine = open_engine('llama.cpp', sys.argv[1], LoadParams(n_ctx=256))\n"
            f"tools = parse_tools([{WEATHER!r}])\n"
            "grammar = call_grammar(ToolFormat.HERMES, tools, None, False, lazy=True)\n"
            "sampler = engine._grammar_sampler(grammar, (sys.argv[2],))\n"
            "for token in engine.tokenize(sys.argv[3], add_special=False):\n"
            "    lc.llama_sampler_accept(sampler, token)\n"
            "print('taken')\n"
        )
        command = [sys.executable, "-c", code, str(model), trigger, text + after]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "taken" in done.stdout, done.stderr[-500:]

"""Tool calling (issue 16, begun): definitions checked as hostile input, the generic format's
grammar (every call parses and validates, even from a random model), and both official clients
against the builtin SmolLM2: required and auto, streaming, a full round trip, and refusals."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from itertools import islice
from pathlib import Path
from typing import Any

import jsonschema
import pydantic
import pytest

from edgeslm.engines.base import LoadParams, SamplingParams, open_engine
from edgeslm.errors import InvalidParameterError
from edgeslm.tools import ToolCall, ToolChoice, check_history, parse_choice, parse_reply, parse_tools, prepare
from edgeslm.tools.generic import reply_schema

from .ggufbuild import write_runnable_model

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {
    "zone": {"type": "string"}, "format": {"$ref": "#/$defs/fmt"}}, "required": ["zone"],
    "$defs": {"fmt": {"type": "string", "enum": ["12h", "24h"]}}}}}
ARGS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}


def _fn(name: str = "f", parameters: Any = None) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": parameters or {"type": "object"}}}


def _strict(tool: dict[str, Any]) -> dict[str, Any]:
    return {**tool, "function": {**tool["function"], "strict": True}}


def _loop() -> dict[str, Any]:
    b = {"type": "object", "properties": {"x": {"$ref": "#/$defs/a"}}}
    return {"type": "object", "properties": {"a": {"$ref": "#/$defs/a"}}, "$defs": {"a": {"$ref": "#/$defs/b"}, "b": b}}


BAD_TOOLS = {
    "not JSON Schema": ([_fn(parameters="a string")], "not a JSON Schema (an object), but a JSON string"),
    "an unknown type": ([_fn(parameters={"type": "strange"})], "type 'strange' is not a JSON Schema type"),
    "keywords no grammar enforces, strict": ([_strict(_fn(parameters={"type": "object", "if": {},
                                                                     "patternProperties": {}}))],
                                             "keyword(s) if, patternProperties cannot be enforced"),
    "a 1 MB schema": ([_fn(parameters={"type": "object", "description": "x" * 2**20})], "at most 65,536"),
    "a $ref loop": ([_fn(parameters=_loop())], "$ref loop #/$defs/a -> #/$defs/b -> #/$defs/a"),
    "a $ref to nowhere": ([_fn(parameters={"$ref": "https://example.com/s.json"})], "names no definition"),
    "1,000 tools": ([_fn(f"f{i}") for i in range(1000)], "1,000 tools; at most 128"),
    "a name with a space": ([_fn("get weather")], "the name 'get weather' is not 1 to 64 letters"),
    "a name with a control character": ([_fn("get\x00weather")], "no spaces or control characters"),
    "two tools of one name": ([_fn("f"), _fn("f")], "two tools are named 'f'"),
    "a tool that is not a function": ([{"type": "retrieval"}], "only function tools are supported"),
}


@pytest.mark.parametrize("case", list(BAD_TOOLS))
def test_hostile_tool_definitions_are_refused_by_name(case: str) -> None:
    tools, words = BAD_TOOLS[case]
    with pytest.raises(InvalidParameterError) as refused:
        parse_tools(tools)
    assert words in str(refused.value)


def test_tool_choice_and_the_history_are_checked() -> None:
    tools = parse_tools([WEATHER, TIME])
    assert parse_choice({"type": "function", "function": {"name": "get_time"}}, tools) == ToolChoice(
        "function", "get_time"
    )
    with pytest.raises(InvalidParameterError, match="tool_choice names 'nope', which is not in tools"):
        parse_choice({"type": "function", "function": {"name": "nope"}}, tools)
    call = ToolCall("call_1", "get_weather", {"city": "Paris"})
    asked = [{"role": "user", "content": "weather?"}, {"role": "assistant", "content": "", "tool_calls": (call,)}]
    with pytest.raises(InvalidParameterError, match="messages\\[2\\]: a tool message needs the tool_call_id"):
        check_history([*asked, {"role": "tool", "content": "18C"}], ids_required=True)
    with pytest.raises(InvalidParameterError, match="tool_call_id 'call_2' matches no call"):
        check_history([*asked, {"role": "tool", "content": "18C", "tool_call_id": "call_2"}], ids_required=True)
    answered = [*asked, {"role": "tool", "content": "18C", "tool_call_id": "call_1"}]
    check_history(answered, ids_required=True)
    rendered = prepare(answered, tools, ToolChoice(), parallel=False)
    assert rendered[0]["role"] == "system" and "get_time" in rendered[0]["content"]
    assert json.loads(rendered[2]["content"]) == {"tool_call": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    assert rendered[3] == {"role": "tool", "content": "18C", "name": "get_weather", "tool_call_id": "call_1"}


def test_replies_read_back_as_calls_or_text() -> None:
    (call,) = parse_reply('{"tool_call": {"name": "get_weather", "arguments": {"city": "Oslo"}}}').calls
    assert (call.name, call.arguments) == ("get_weather", {"city": "Oslo"}) and call.id.startswith("call_")
    assert (
        len(parse_reply('{"tool_calls": [{"name": "a", "arguments": {}}, {"name": "b", "arguments": {}}]}').calls) == 2
    )
    assert parse_reply('{"response": "Hi \\u00e9"}').content == "Hi é"
    cut = parse_reply('{"response": "Paris is \\u00')  # max_tokens ran out: the text so far, never a call
    assert (cut.content, cut.calls, cut.complete) == ("Paris is ", (), False)
    half = parse_reply('{"tool_call": {"name": "get_weather", "arguments": {"ci')
    assert (
        half.calls == ()
        and not half.complete
        and half.content == '{"tool_call": {"name": "get_weather", "arguments": {"ci'
    )


@pytest.mark.parametrize(
    ("choice", "parallel"), [(ToolChoice("required"), False), (ToolChoice("function", "get_time"), True),
                             (ToolChoice(), False)])
def test_the_grammar_makes_every_call_valid_even_from_a_random_model(
    tmp_path: Path, choice: ToolChoice, parallel: bool
) -> None:
    from edgeslm.engines.llamacpp.engine import json_grammar

    # A random model's free strings rarely end, and its bytes are not always UTF-8 Python accepts:
    # the arguments' strings are enums here, so that replies complete and read back as text.
    listed = json.dumps([WEATHER, TIME]).replace('{"type": "string"}', '{"type": "string", "enum": ["Oslo", "UTC"]}')
    tools = parse_tools(json.loads(listed))
    args = {t.name: t.parameters for t in tools}
    schema = reply_schema(tools, choice, parallel)
    engine = open_engine("llama.cpp", write_runnable_model(tmp_path / "m.gguf"), LoadParams(n_ctx=1024))
    prompt = engine.tokenize("tools", add_special=True)
    sampling = SamplingParams(temperature=1.0, grammar=json_grammar(schema))
    complete = 0
    for seed in range(20):
        ids = list(islice(engine.generate_tokens(prompt, replace(sampling, seed=seed)), 800))
        text = b"".join(engine.token_bytes(t) for t in ids).decode("utf-8", errors="replace")
        reply = parse_reply(text)
        if not reply.complete:
            continue  # 800 tokens ran out inside a reply: read as text, never as a call
        complete += 1
        jsonschema.validate(json.loads(text), schema)
        for c in reply.calls:
            jsonschema.validate(c.arguments, args[c.name])
            assert choice.mode != "function" or c.name == choice.name
        assert reply.calls or choice.mode == "auto"
    assert complete >= 5


# -- both official clients against SmolLM2 -------------------------------------------------------

MODEL = "smollm2-135m-instruct"
ASK = [{"role": "user", "content": "What is the weather like in Paris?"}]


@pytest.fixture(scope="module")
def url(builtin_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import shutil

    from .servekit import serving

    home = tmp_path_factory.mktemp("tools-home")
    shutil.copytree(builtin_home, home, dirs_exist_ok=True)
    with serving(home, parallel=4, ctx=1024, prompt_cache=False) as base:
        yield base


@pytest.mark.real_model
def test_openai_tool_calls_required_streamed_and_round_trip(url: str) -> None:
    import openai

    with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as oai:

        def ask(**kw: Any) -> Any:
            return oai.chat.completions.create(model=MODEL, tools=[WEATHER, TIME], max_tokens=96, **kw)  # type: ignore[arg-type]

        greedy = ask(messages=ASK, tool_choice="required", temperature=0)
        (choice,) = greedy.choices
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        (call,) = choice.message.tool_calls or []
        assert call.id.startswith("call_") and call.type == "function" and call.function.name == "get_weather"
        jsonschema.validate(json.loads(call.function.arguments), ARGS["get_weather"])
        sampled = [c for _ in range(5) for c in ask(messages=ASK, tool_choice="required", temperature=0.8, n=4).choices]
        assert len(sampled) == 20 and all(c.finish_reason == "tool_calls" for c in sampled)
        for c in sampled:
            for made in c.message.tool_calls or []:
                jsonschema.validate(json.loads(made.function.arguments), ARGS[made.function.name])
        stream = ask(messages=ASK, tool_choice="required", temperature=0, stream=True)
        deltas = [d for chunk in stream for d in chunk.choices]
        (streamed,) = [tc for d in deltas for tc in d.delta.tool_calls or []]
        assert (streamed.function.name, streamed.function.arguments) == (call.function.name, call.function.arguments)
        assert deltas[-1].finish_reason == "tool_calls"
        named = ask(messages=ASK, tool_choice={"type": "function", "function": {"name": "get_time"}}, temperature=0)
        assert [c.function.name for c in named.choices[0].message.tool_calls or []] == ["get_time"]

        # the round trip, with the weather tool alone: call -> result -> an answer in text
        def weather(messages: list[Any], choice: str = "auto") -> Any:
            return oai.chat.completions.create(model=MODEL, tools=[WEATHER], max_tokens=48, messages=messages,  # type: ignore[arg-type]
                                               tool_choice=choice, temperature=0).choices[0]

        first = weather(ASK, "required")
        (asked,) = first.message.tool_calls or []
        result = {"role": "tool", "tool_call_id": asked.id, "content": json.dumps({"celsius": 18, "sky": "sunny"})}
        final = weather([*ASK, first.message.model_dump(exclude_none=True), result])
        assert final.message.content and not final.message.tool_calls
        text = ask(messages=[{"role": "user", "content": "Write a haiku about the sea."}], tool_choice="auto",
                   temperature=0)
        assert text.choices[0].message.content and not text.choices[0].message.tool_calls


@pytest.mark.real_model
def test_ollama_tool_calls_with_arguments_as_objects(url: str) -> None:
    import ollama

    oll = ollama.Client(host=url)
    try:
        options = {"temperature": 0, "num_predict": 96}
        reply = oll.chat(model=MODEL, messages=ASK, tools=[WEATHER], options=options)
        (call,) = reply.message.tool_calls or []
        assert call.function.name == "get_weather" and isinstance(call.function.arguments, dict)
        jsonschema.validate(dict(call.function.arguments), ARGS["get_weather"])
        parts = list(oll.chat(model=MODEL, messages=ASK, tools=[WEATHER], options=options, stream=True))
        streamed = [tc for p in parts for tc in p.message.tool_calls or []]
        assert [(c.function.name, dict(c.function.arguments)) for c in streamed] == [
            (call.function.name, dict(call.function.arguments))
        ] and parts[-1].done
        history = [*ASK, reply.message, {"role": "tool", "content": "18 C and sunny", "tool_name": "get_weather"}]
        final = oll.chat(model=MODEL, messages=history, tools=[WEATHER], options=options)
        assert final.message.content and not final.message.tool_calls
    finally:
        oll._client.close()


BAD_REQUESTS = {
    "a schema that is not JSON Schema": ({"tools": [_fn(parameters=[1, 2])]}, "not a JSON Schema"),
    "a 1 MB schema": ({"tools": [_fn(parameters={"type": "object", "description": "x" * 2**20})]}, "at most 65,536"),
    "a $ref loop": ({"tools": [_fn(parameters=_loop())]}, "$ref loop"),
    "1,000 tools": ({"tools": [_fn(f"f{i}") for i in range(1000)]}, "at most 128"),
    "a name with spaces": ({"tools": [_fn("a b")]}, "no spaces or control characters"),
    "a tool_choice not in tools": ({"tools": [WEATHER], "tool_choice": {"type": "function",
                                   "function": {"name": "get_time"}}}, "which is not in tools"),
    "a tool message without an id": ({"messages": [*ASK, {"role": "tool", "content": "18"}]}, "needs the tool_call_id"),
    "a tool message answering nothing": ({"messages": [*ASK, {"role": "tool", "content": "18", "tool_call_id": "x"}]},
                                         "matches no call"),
    "tools with a response format": ({"tools": [WEATHER], "response_format": {"type": "json_object"}},
                                     "a response format and tools together"),
}


@pytest.mark.real_model
def test_bad_tool_requests_get_a_400_and_the_server_keeps_serving(url: str) -> None:
    import httpx

    for case, (extra, words) in BAD_REQUESTS.items():
        body = {"model": MODEL, "messages": ASK, "max_tokens": 4, **extra}
        r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 400 and words in r.json()["error"]["message"], (case, r.text[:300])
    cut = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
        "model": MODEL, "messages": ASK, "tools": [WEATHER], "tool_choice": "required", "max_tokens": 6,
        "temperature": 0})
    (choice,) = cut.json()["choices"]
    assert choice["finish_reason"] == "length" and "tool_calls" not in choice["message"]  # never half a call
    ok = httpx.post(f"{url}/api/chat", timeout=120, json={"model": MODEL, "messages": ASK, "stream": False,
                                                           "options": {"num_predict": 4}})
    assert ok.status_code == 200 and ok.json()["done"]


@pytest.mark.real_model
def test_the_responses_api_answers_the_official_client(url: str) -> None:
    import openai

    question, rule = "What is the capital of France?", "Answer in one word."
    fn = {"type": "function", **{k: WEATHER["function"][k] for k in ("name", "description", "parameters")}}
    with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as oai:
        r = oai.responses.create(model=MODEL, input=question, instructions=rule, max_output_tokens=12, temperature=0)
        chat = oai.chat.completions.create(model=MODEL, max_tokens=12, temperature=0, messages=[
            {"role": "system", "content": rule}, {"role": "user", "content": question}])
        assert r.output_text and r.output_text == chat.choices[0].message.content  # the same turn, the same text
        assert r.usage is not None and r.usage.input_tokens == (chat.usage.prompt_tokens if chat.usage else -1)
        events = list(oai.responses.create(model=MODEL, input=question, instructions=rule, max_output_tokens=12,
                                           temperature=0, stream=True))
        assert (
            "".join(getattr(e, "delta", "") for e in events if e.type == "response.output_text.delta") == r.output_text
        )
        assert events[0].type == "response.created" and events[-1].type in ("response.completed", "response.incomplete")
        assert [e.sequence_number for e in events] == list(range(len(events)))
        called = oai.responses.create(model=MODEL, input=ASK[0]["content"], tools=[fn], tool_choice="required",  # type: ignore[arg-type]
                                      temperature=0, max_output_tokens=96)
        (call,) = [o for o in called.output if o.type == "function_call"]
        assert call.name == "get_weather" and call.call_id.startswith("call_")
        jsonschema.validate(json.loads(call.arguments), ARGS["get_weather"])
        streamed = list(oai.responses.create(model=MODEL, input=ASK[0]["content"], tools=[fn], tool_choice="required",  # type: ignore[arg-type]
                                             temperature=0, max_output_tokens=96, stream=True))
        done = [e for e in streamed if e.type == "response.function_call_arguments.done"]
        assert [(e.name, e.arguments) for e in done] == [(call.name, call.arguments)]
        history = [{"role": "user", "content": ASK[0]["content"]},
                   {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
                   {"type": "function_call_output", "call_id": call.call_id, "output": '{"celsius": 18}'}]
        final = oai.responses.create(model=MODEL, input=history, tools=[fn], temperature=0, max_output_tokens=48)  # type: ignore[arg-type]
        assert final.output_text and not [o for o in final.output if o.type == "function_call"]
        # text.format through the client's own helper: a grammar holds the reply to the schema
        class City(pydantic.BaseModel):
            name: str
            country: str

        parsed = oai.responses.parse(model=MODEL, input="Name a city in France.", text_format=City, temperature=0,
                                     max_output_tokens=64)
        assert isinstance(parsed.output_parsed, City) and parsed.output_parsed.name
        assert parsed.text is not None and parsed.text.format is not None and parsed.text.format.type == "json_schema"
        cut = oai.responses.create(model=MODEL, input=question, max_output_tokens=2, temperature=0)
        assert cut.status == "incomplete" and [o.status for o in cut.output if o.type == "message"] == ["incomplete"]
        # kept responses: previous_response_id continues one, as the whole conversation sent again would
        intro = "My name is Ada. Reply with OK."
        first = oai.responses.create(model=MODEL, input=intro, max_output_tokens=8, temperature=0)
        assert oai.responses.retrieve(first.id).output_text == first.output_text
        (item,) = oai.responses.input_items.list(first.id).data
        assert item.type == "message" and item.role == "user"
        second = oai.responses.create(model=MODEL, input="What is my name?", previous_response_id=first.id,
                                      max_output_tokens=12, temperature=0)
        whole = oai.responses.create(model=MODEL, store=False, max_output_tokens=12, temperature=0, input=[
            {"role": "user", "content": intro}, {"role": "assistant", "content": first.output_text},
            {"role": "user", "content": "What is my name?"}])
        assert second.output_text == whole.output_text and second.previous_response_id == first.id
        with pytest.raises(openai.NotFoundError):
            oai.responses.retrieve(whole.id)  # store=False: not kept
        # a chain that outgrows the context: refused naming both lengths, never cut silently
        link = oai.responses.create(model=MODEL, input="alpha " * 300 + "Reply OK.", max_output_tokens=4,
                                    previous_response_id=first.id, temperature=0)
        link = oai.responses.create(model=MODEL, input="beta " * 300 + "Reply OK.", max_output_tokens=4,
                                    previous_response_id=link.id, temperature=0)
        alone = oai.responses.create(model=MODEL, input="gamma " * 500, temperature=0, max_output_tokens=4)
        assert alone.usage and alone.usage.input_tokens < 1024  # it fits alone; after the chain it cannot
        with pytest.raises(openai.BadRequestError, match="context holds"):
            oai.responses.create(model=MODEL, input="gamma " * 500, previous_response_id=link.id, temperature=0,
                                 max_output_tokens=4)
        oai.responses.delete(first.id)
        for gone in (first.id, "resp_1", "resp_" + "0" * 32):
            with pytest.raises(openai.NotFoundError, match="not found"):
                oai.responses.create(model=MODEL, input="hi", previous_response_id=gone)
        with pytest.raises(openai.BadRequestError, match="matches no call"):
            oai.responses.create(model=MODEL, input=[{"type": "function_call_output", "call_id": "x", "output": "1"}])  # type: ignore[list-item]

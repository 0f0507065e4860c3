"""The client libraries people build on, against ``edgeslm serve`` with the 0.5B Qwen (tools matter):
litellm (its ``ollama_chat/`` and ``openai/`` providers, streaming and tools), LangChain
(``ChatOpenAI``, ``ChatOllama``, ``bind_tools``, ``with_structured_output``, both embeddings
classes), instructor (JSON and tools modes), and Claude Code's request shape on the Messages API.
Each client's version is pinned in the ``dev`` extra; ``tool_choice`` is left at auto throughout."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from pydantic import BaseModel

from .conftest import QWEN_SMALL
from .test_tools import ARGS, WEATHER

# litellm leaves an event loop and its cached HTTP clients open, LangChain's embedding classes their
# HTTP clients (none offers a close): their ResourceWarnings are theirs, ignored in this module and
# collected at its end, not in whichever later test the garbage collector happens to run
pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")
ASK = [{"role": "user", "content": "What is the weather like in Paris right now?"}]
EXTRACT = "Alice is 31 years old. Extract the person."


class Person(BaseModel):
    name: str
    age: int


def get_weather(city: str) -> str:
    """Get the current weather in a city"""
    return "18 C, sunny"


@pytest.fixture(scope="module", autouse=True)
def _their_leaks_collected_here() -> Iterator[None]:
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
        for loop in [o for o in gc.get_objects() if issubclass(type(o), asyncio.AbstractEventLoop)]:
            if not loop.is_running() and not loop.is_closed():  # litellm's, which it still holds
                loop.close()


@pytest.fixture(scope="module")
def url(qwen_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from .servekit import serving

    home = tmp_path_factory.mktemp("qwen-clients")
    shutil.copytree(qwen_home, home, dirs_exist_ok=True)
    with serving(home, parallel=2, ctx=2048, prompt_cache=False) as base:
        yield base


@pytest.fixture(scope="module")
def litellm() -> Any:
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # its price list from the package, not the network
    import litellm

    return litellm


def _weather_call(calls: Any) -> dict[str, Any]:
    (call,) = calls or []
    function = call.function if hasattr(call, "function") else call
    assert function.name == "get_weather"
    arguments = json.loads(function.arguments) if isinstance(function.arguments, str) else function.arguments
    jsonschema.validate(arguments, ARGS["get_weather"])
    assert "paris" in arguments["city"].lower()
    return dict(arguments)


def test_litellm_through_both_providers_with_tools_and_streaming(url: str, litellm: Any) -> None:
    ollama_side = {"model": f"ollama_chat/{QWEN_SMALL}", "api_base": url}
    openai_side = {"model": f"openai/{QWEN_SMALL}", "api_base": f"{url}/v1", "api_key": "unused"}
    for side in (ollama_side, openai_side):
        reply = litellm.completion(**side, messages=ASK, tools=[WEATHER], temperature=0, max_tokens=96)
        assert reply.choices[0].finish_reason == "tool_calls", reply.choices[0].message.content
        _weather_call(reply.choices[0].message.tool_calls)
        text = "".join(c.choices[0].delta.content or "" for c in litellm.completion(
            **side, messages=[{"role": "user", "content": "Say hello."}], stream=True, temperature=0, max_tokens=16))
        whole = litellm.completion(**side, messages=[{"role": "user", "content": "Say hello."}], temperature=0,
                                   max_tokens=16)
        assert text and text == whole.choices[0].message.content
    streamed = [d for c in litellm.completion(**openai_side, messages=ASK, tools=[WEATHER], stream=True,
                                              temperature=0, max_tokens=96)
                for d in c.choices[0].delta.tool_calls or []]
    assert "".join(d.function.name or "" for d in streamed) == "get_weather"
    assert "paris" in json.loads("".join(d.function.arguments or "" for d in streamed))["city"].lower()


def test_langchain_chat_models_call_tools_and_fill_schemas(url: str) -> None:
    """``bind_tools`` with auto, ``with_structured_output`` in each method the classes offer (ChatOllama's
    function_calling returned None when the call was not recognised)."""
    from langchain_ollama import ChatOllama
    from langchain_openai import ChatOpenAI

    oai = ChatOpenAI(base_url=f"{url}/v1", api_key="unused", model=QWEN_SMALL, temperature=0,  # type: ignore[arg-type]
                     max_tokens=96, max_retries=0)  # type: ignore[call-arg]
    oll = ChatOllama(base_url=url, model=QWEN_SMALL, temperature=0, num_predict=96)
    for chat in (oai, oll):
        called = chat.bind_tools([get_weather]).invoke(ASK[0]["content"])
        (call,) = called.tool_calls
        assert call["name"] == "get_weather" and "paris" in call["args"]["city"].lower(), called
        for method in ("function_calling", "json_schema"):
            person = chat.with_structured_output(Person, method=method).invoke(EXTRACT)  # type: ignore[arg-type]
            assert person == Person(name="Alice", age=31), (chat, method, person)


def test_langchain_embeddings_are_the_servers_own(url: str) -> None:
    """``OllamaEmbeddings`` and ``OpenAIEmbeddings`` give the vectors ``/v1/embeddings`` gives. LangChain's
    OpenAI class tokenizes with tiktoken by default (another model's ids): ``check_embedding_ctx_length=False``
    sends the text, as docs/serve.md says."""
    from langchain_ollama import OllamaEmbeddings
    from langchain_openai import OpenAIEmbeddings

    texts = ["def add(a, b): return a + b", "The weather in Paris is sunny."]
    direct = httpx.post(f"{url}/v1/embeddings", json={"model": QWEN_SMALL, "input": texts}, timeout=300).json()
    want = [d["embedding"] for d in direct["data"]]
    by_ollama = OllamaEmbeddings(base_url=url, model=QWEN_SMALL).embed_documents(texts)
    by_openai = OpenAIEmbeddings(base_url=f"{url}/v1", api_key="unused", model=QWEN_SMALL,  # type: ignore[arg-type]
                                 check_embedding_ctx_length=False).embed_documents(texts)
    for got in (by_ollama, by_openai):
        pairs = [(a, b) for g, w in zip(got, want, strict=True) for a, b in zip(g, w, strict=True)]
        assert len(got) == 2 and all(abs(a - b) < 1e-5 for a, b in pairs)
    assert want[0] != want[1]


def test_instructor_extracts_in_json_and_tools_modes(url: str) -> None:
    import instructor
    import openai

    with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300) as raw:
        for mode in (instructor.Mode.JSON, instructor.Mode.TOOLS):
            client = instructor.from_openai(raw, mode=mode)
            person = client.chat.completions.create(model=QWEN_SMALL, response_model=Person, max_retries=0,
                                                    temperature=0, messages=[{"role": "user", "content": EXTRACT}])
            assert (person.name, person.age) == ("Alice", 31), mode  # a subclass of Person, carrying the reply


# Claude Code's request, as its documented API use and its own requests show it (2.1.332's, recorded
# here): a system prompt as text blocks with cache_control, reminders as extra text blocks, a system
# turn at the end of messages, tools with $schema, additionalProperties, bounds on numbers, a
# property of a description alone (any value), a maxLength of 524,288 and descriptions of thousands
# of characters, tool_choice auto, metadata.user_id, thinking adaptive, output_config.effort,
# context_management, and 32,000 max_tokens. Each of the tool shapes was a 400 before.
CLAUDE_CODE_HEADERS = {"x-api-key": "unused", "anthropic-version": "2023-06-01", "user-agent": "claude-cli/2.0.0",
                       "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14"}
BASH = {"name": "Bash", "description": "Executes a given bash command and returns its output", "input_schema": {
    "type": "object", "properties": {"command": {"type": "string", "description": "The command to execute"},
                                     "timeout": {"type": "number", "maximum": 600000}},
    "required": ["command"], "additionalProperties": False, "$schema": "http://json-schema.org/draft-07/schema#"}}


WORKFLOW = {"name": "Workflow", "description": "Runs a workflow script. " + "Explains itself at length. " * 200,
            "input_schema": {"type": "object", "$schema": "https://json-schema.org/draft/2020-12/schema",
                             "properties": {"script": {"type": "string", "maxLength": 524288},
                                            "args": {"description": "any input value, verbatim"}}}}


def _claude_code(messages: list[dict[str, Any]], *, stream: bool) -> dict[str, Any]:
    return {
        "model": QWEN_SMALL, "max_tokens": 32000, "temperature": 0, "stream": stream,
        "metadata": {"user_id": json.dumps({"device_id": "0" * 64, "session_id": "s"})},
        "thinking": {"type": "adaptive"}, "output_config": {"effort": "high"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "system": [{"type": "text", "text": "You are a coding agent in a terminal.",
                    "cache_control": {"type": "ephemeral"}},
                   {"type": "text", "text": "Use the Bash tool to run shell commands.",
                    "cache_control": {"type": "ephemeral"}}],
        "messages": [*messages, {"role": "system", "content": [{"type": "text", "text": "Be concise."}]}],
        "tools": [{**BASH, "cache_control": {"type": "ephemeral"}}, WORKFLOW], "tool_choice": {"type": "auto"},
    }


def test_claude_code_request_shapes_pass(url: str) -> None:
    """Streaming, as Claude Code always asks: a tool_use for the shell, its result sent back, a text
    answer; max_tokens 32,000 is held to the slot's context rather than refused."""
    import anthropic

    ask = [{"role": "user", "content": [
        {"type": "text", "text": "<system-reminder>\nThe folder is a git checkout.\n</system-reminder>"},
        {"type": "text", "text": "Run the shell command `ls` to list the files in this folder.",
         "cache_control": {"type": "ephemeral"}}]}]
    with httpx.stream("POST", f"{url}/v1/messages?beta=true", json=_claude_code(ask, stream=True),
                      headers=CLAUDE_CODE_HEADERS, timeout=300) as r:
        assert r.status_code == 200, r.read()
        events = [json.loads(line[5:]) for line in r.iter_lines() if line.startswith("data:")]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    (started,) = [e["content_block"] for e in events if e["type"] == "content_block_start"
                  and e["content_block"]["type"] == "tool_use"]
    arguments = json.loads("".join(e["delta"]["partial_json"] for e in events if e["type"] == "content_block_delta"
                                   and e["delta"]["type"] == "input_json_delta"))
    (stopped,) = [e for e in events if e["type"] == "message_delta"]
    assert started["name"] == "Bash" and stopped["delta"]["stop_reason"] == "tool_use"
    jsonschema.validate(arguments, BASH["input_schema"])
    assert arguments["command"].strip().startswith("ls")
    history = [*ask, {"role": "assistant", "content": [{"type": "tool_use", "id": started["id"], "name": "Bash",
                                                         "input": arguments}]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": started["id"],
                                             "content": [{"type": "text", "text": "README.md\nsetup.py\nsrc"}]}]}]
    client = anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0, timeout=300)
    body = _claude_code(history, stream=False)
    body["max_tokens"] = 128  # a reply in text may run to the end of the context: not in a test's time
    outside = ("temperature", "stream", "context_management")  # body fields the SDK does not name
    answered = client.messages.create(**{k: v for k, v in body.items() if k not in outside},
                                      extra_body={k: body[k] for k in outside if k != "stream"},
                                      extra_headers=CLAUDE_CODE_HEADERS)
    assert answered.stop_reason in ("end_turn", "tool_use", "max_tokens")
    assert answered.content and answered.usage.input_tokens > 0
    client.close()


def test_anthropic_structured_output_through_messages_parse(url: str) -> None:
    """``output_config.format`` (json_schema): the reply's text held to the schema by a grammar, as chat's
    ``response_format``; the SDK's ``messages.parse`` reads it into the model class."""
    import anthropic

    client = anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0, timeout=300)
    try:
        parsed = client.messages.parse(model=QWEN_SMALL, max_tokens=64, extra_body={"temperature": 0},
                                       messages=[{"role": "user", "content": EXTRACT}], output_format=Person)
        assert parsed.parsed_output == Person(name="Alice", age=31), parsed.content
        with pytest.raises(anthropic.BadRequestError, match="output_config"):
            client.messages.create(model=QWEN_SMALL, max_tokens=8, messages=[{"role": "user", "content": "hi"}],
                                   output_config={"format": {"type": "xml", "schema": {}}})  # type: ignore[typeddict-item]
    finally:
        client.close()


def test_openai_responses_stream_helper_and_a_tool_round_trip_with_auto(url: str) -> None:
    """The openai SDK's ``responses.stream`` helper (it checks the event sequence), and on Qwen with
    tool_choice auto: a function_call item, its function_call_output sent back, an answer in text."""
    import openai

    with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300) as oai:
        with oai.responses.stream(model=QWEN_SMALL, input="Say hello.", max_output_tokens=12,
                                  temperature=0) as stream:
            deltas = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
            final = stream.get_final_response()
        assert deltas and deltas == final.output_text and final.status in ("completed", "incomplete")
        tool = {"type": "function", "name": "get_weather", "description": WEATHER["function"]["description"],
                "parameters": ARGS["get_weather"]}
        called = oai.responses.create(model=QWEN_SMALL, input=ASK[0]["content"], tools=[tool],  # type: ignore[list-item]
                                      temperature=0, max_output_tokens=96)
        (call,) = [item for item in called.output if item.type == "function_call"]
        assert call.name == "get_weather" and "paris" in json.loads(call.arguments)["city"].lower()
        answered = oai.responses.create(model=QWEN_SMALL, previous_response_id=called.id, tools=[tool],  # type: ignore[list-item]
                                        input=[{"type": "function_call_output", "call_id": call.call_id,
                                                "output": get_weather("Paris")}],
                                        temperature=0, max_output_tokens=48)
        assert answered.output_text and not [i for i in answered.output if i.type == "function_call"]

"""Tool calls of a real model through ``edgeslm serve``, both official clients: does every returned
call parse and validate against its tool's schema, in the model's own format?

Serves the model (default qwen2.5-coder:1.5b, Hermes format in its template) from the benchmark
home, then asks each request of REQUESTS through the OpenAI client (tool_choice auto, then
required) and the Ollama client, greedy. Per dialect and choice: replies with calls, calls that
parse and validate, calls naming the expected tool, and plain-text replies where no tool fits.
Native llama-server (``--jinja``, same file, same requests, OpenAI endpoint) beside it.

    .venv/bin/python benchmarks/tool_calls.py [--model qwen2.5-coder:1.5b] [--native-bin DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import jsonschema  # noqa: E402
from edgeslm_cli import native_bin  # noqa: E402
from parity import BENCH_HOME, pinned_file  # noqa: E402
from serve_throughput import running  # noqa: E402


def _tool(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    parameters = {"type": "object", "properties": properties, "required": required}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


TOOLS = [
    _tool(
        "get_weather",
        "Get the current weather in a city",
        {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        ["city"],
    ),
    _tool("get_time", "Get the current time in a time zone", {"zone": {"type": "string"}}, ["zone"]),
    _tool(
        "run_tests",
        "Run a project's test suite",
        {"path": {"type": "string"}, "verbose": {"type": "boolean"}},
        ["path"],
    ),
    _tool(
        "search_code",
        "Search a repository for a regular expression",
        {"pattern": {"type": "string"}, "max_results": {"type": "integer", "minimum": 1, "maximum": 100}},
        ["pattern"],
    ),
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
# (request, the tool that fits, or None where none does)
REQUESTS: list[tuple[str, str | None]] = [
    ("What is the weather like in Paris right now?", "get_weather"),
    ("Is it cold in Oslo today? Answer in fahrenheit.", "get_weather"),
    ("What time is it in Tokyo?", "get_time"),
    ("Tell me the current time in the Europe/Berlin time zone.", "get_time"),
    ("Run the tests in ./services/api and show me everything.", "run_tests"),
    ("Please run the test suite of the project at /home/me/app.", "run_tests"),
    ("Find every place where 'TODO' appears in the repository, at most 20 results.", "search_code"),
    ("Search the code for calls to parse_line.", "search_code"),
    ("Write a Python function that reverses a string.", None),
    ("What does the acronym HTTP stand for?", None),
]


def check(calls: list[tuple[str, dict[str, Any] | str]], expected: str | None) -> dict[str, int]:
    """Counts for one reply: calls made, calls valid against their schema, the right tool named."""
    valid = 0
    for name, arguments in calls:
        try:
            args = json.loads(arguments) if isinstance(arguments, str) else arguments
            jsonschema.validate(args, SCHEMAS[name])
            valid += 1
        except (KeyError, ValueError, jsonschema.ValidationError):
            pass
    right = int(bool(calls) and all(n == expected for n, _ in calls)) if expected else int(not calls)
    return {"replies": 1, "with_calls": int(bool(calls)), "calls": len(calls), "valid": valid, "right": right}


def add(total: dict[str, int], one: dict[str, int]) -> None:
    for k, v in one.items():
        total[k] = total.get(k, 0) + v


def openai_round(url: str, model: str, choice: str) -> dict[str, int]:
    import openai

    total: dict[str, int] = {}
    with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600) as oai:
        for text, expected in REQUESTS:
            if choice == "required" and expected is None:
                continue
            reply = oai.chat.completions.create(model=model, messages=[{"role": "user", "content": text}],
                                                tools=TOOLS, tool_choice=choice, temperature=0,  # type: ignore[arg-type]
                                                max_tokens=160)
            calls = [(c.function.name, c.function.arguments) for c in reply.choices[0].message.tool_calls or []]
            add(total, check(calls, expected))
    return total


def ollama_round(url: str, model: str) -> dict[str, int]:
    import ollama

    client = ollama.Client(host=url, timeout=600)
    total: dict[str, int] = {}
    try:
        for text, expected in REQUESTS:
            reply = client.chat(model=model, messages=[{"role": "user", "content": text}], tools=TOOLS,
                                options={"temperature": 0, "num_predict": 160})
            calls = [(c.function.name, dict(c.function.arguments)) for c in reply.message.tool_calls or []]
            add(total, check(calls, expected))
    finally:
        client._client.close()
    return total


def row(label: str, t: dict[str, int]) -> str:
    return (f"| {label} | {t['replies']} | {t['with_calls']} | {t['calls']} | {t['valid']}/{t['calls']} | "
            f"{t['right']}/{t['replies']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder:1.5b")
    parser.add_argument("--native-bin", type=Path)
    parser.add_argument("--port", type=int, default=8495)
    args = parser.parse_args()
    path = pinned_file(args.model)
    url = f"http://127.0.0.1:{args.port}"
    print(f"{args.model}: {len(REQUESTS)} requests ({sum(e is None for _, e in REQUESTS)} where no tool fits), "
          f"{len(TOOLS)} tools, greedy\n")
    print("| server, dialect, tool_choice | replies | with calls | calls | parse and validate | right tool or none |")
    print("|---|---:|---:|---:|---:|---:|")
    serve = [sys.executable, "-m", "edgeslm", "--home", str(BENCH_HOME), "serve", "--port", str(args.port),
             "--parallel", "1", "--ctx", "4096"]
    with running(serve, url, "/api/version"):
        print(row("edgeslm, OpenAI, auto", openai_round(url, args.model, "auto")))
        print(row("edgeslm, OpenAI, required", openai_round(url, args.model, "required")))
        print(row("edgeslm, Ollama", ollama_round(url, args.model)))
    bin_dir = native_bin(args.native_bin)
    native = [str(bin_dir / "llama-server"), "-m", str(path), "--port", str(args.port), "--jinja", "-c", "4096",
              "-np", "1", "--alias", args.model]
    with running(native, url, "/health"):
        print(row("llama-server --jinja, OpenAI, auto", openai_round(url, args.model, "auto")))
        print(row("llama-server --jinja, OpenAI, required", openai_round(url, args.model, "required")))


if __name__ == "__main__":
    main()

"""qwen2.5-coder:0.5b, a real model at the scale people deploy, through the verbs a user runs:
pulled by its pinned catalogue entry (the upstream bytes), shown with its provenance, greedy
decoding equal to llama.cpp's own, a coding question answered, a quantization that runs, and
tool calls in its native Hermes format through both official clients."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import jsonschema
import pytest

from edgeslm.config import resolve_settings
from edgeslm.engines.base import SamplingParams
from edgeslm.generation import Model, generate, load
from edgeslm.sources.pinned import pinned_models
from edgeslm.store import Store, parse_name
from edgeslm.tasks import humaneval
from edgeslm.tasks.sandbox import run_python

from .conftest import QWEN_SMALL, CliResult
from .test_llamacpp import reference_greedy
from .test_tools import ARGS, TIME, WEATHER

Cli = Callable[..., CliResult]
GREEDY_BODY = {"temperature": 0}  # Anthropic's body field, which its SDK no longer names
PINNED = pinned_models()[QWEN_SMALL]


@pytest.fixture(scope="module")
def qwen(qwen_home: Path) -> Iterator[Model]:
    loaded = load(QWEN_SMALL, ctx=1024, threads=2, settings=resolve_settings(home=qwen_home, offline=True))
    yield loaded
    loaded.close()


def test_the_store_holds_the_upstream_bytes(qwen_home: Path, cli: Cli) -> None:
    store = Store.open(qwen_home / "models")
    manifest = store.get(parse_name(QWEN_SMALL))
    assert manifest.digest == f"sha256-{PINNED.upstream.sha256}" and manifest.size == PINNED.upstream.size
    assert manifest.info.architecture == "qwen2" and manifest.info.size_class.value == "micro"
    shown = cli("--home", str(qwen_home), "show", QWEN_SMALL, "--json")
    assert shown.code == 0, shown.err
    source = json.loads(shown.out)["source"]
    assert source["upstream"] == "hf.co/Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF"
    assert source["revision"] == PINNED.upstream.revision and source["licence"] == "apache-2.0"
    text = cli("--home", str(qwen_home), "show", QWEN_SMALL)
    assert "Qwen2.5-Coder-0.5B-Instruct-GGUF" in text.out and "apache-2.0" in text.out


def test_greedy_tokens_match_llama_cpp(qwen: Model) -> None:
    for prompt in ("def fibonacci(n):", "# Sort a list of tuples by their second item\n"):
        ref_prompt, ref_out = reference_greedy(qwen.path, prompt, 12)
        assert qwen.prompt_tokens(prompt) == ref_prompt
        ours = generate(qwen, prompt, max_tokens=len(ref_out), sampling=SamplingParams(temperature=0))
        assert list(ours.tokens) == ref_out, prompt


def test_a_coding_question_gets_code(qwen_home: Path, cli: Cli) -> None:
    asked = cli(
        "--home", str(qwen_home), "run", QWEN_SMALL,
        "Write a Python function is_prime(n) that returns True when n is a prime number.",
        "--temperature", "0", "--max-tokens", "160",
    )
    assert asked.code == 0, asked.err
    code = asked.out.split("```python", 1)[-1].split("```", 1)[0]
    check = "\nassert [n for n in range(30) if is_prime(n)] == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]\n"
    ran = run_python(code + check)  # model-written code runs only in the sandbox
    assert ran.passed, ran.stderr


def test_quantize_q4_0_runs(qwen_home: Path, tmp_path: Path, cli: Cli) -> None:
    home = tmp_path / "home"
    shutil.copytree(qwen_home, home)
    made = cli("--home", str(home), "quantize", QWEN_SMALL, "--type", "q4_0", "--allow-requantize", "--json")
    assert made.code == 0, made.err
    store = Store.open(home / "models")
    variant = store.get(parse_name("qwen2.5-coder:0.5b-q4_0"))
    assert variant.info.file_type == "Q4_0" and variant.size < PINNED.upstream.size
    ran = cli("--home", str(home), "run", "qwen2.5-coder:0.5b-q4_0", "def add(a, b):", "--temperature", "0",
              "--max-tokens", "8")
    assert ran.code == 0 and ran.out.strip(), ran.err


@pytest.fixture(scope="module")
def url(qwen_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from .servekit import serving

    home = tmp_path_factory.mktemp("qwen-tools")
    shutil.copytree(qwen_home, home, dirs_exist_ok=True)
    with serving(home, parallel=2, ctx=2048, prompt_cache=False) as base:
        yield base


ASK = [{"role": "user", "content": "What is the weather like in Paris right now?"}]


def test_hermes_tool_calls_through_both_clients(url: str) -> None:
    import ollama
    import openai

    with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300) as oai:
        reply = oai.chat.completions.create(model=QWEN_SMALL, messages=ASK, tools=[WEATHER, TIME],  # type: ignore[arg-type]
                                            max_tokens=96, temperature=0)
        (choice,) = reply.choices
        assert choice.finish_reason == "tool_calls", choice.message.content
        (call,) = choice.message.tool_calls or []
        assert call.function.name == "get_weather"
        arguments = json.loads(call.function.arguments)
        jsonschema.validate(arguments, ARGS["get_weather"])
        assert "paris" in arguments["city"].lower()
    oll = ollama.Client(host=url, timeout=300)
    try:
        answer = oll.chat(
            model=QWEN_SMALL, messages=ASK, tools=[WEATHER], options={"temperature": 0, "num_predict": 96}
        )
        (made,) = answer.message.tool_calls or []
        assert made.function.name == "get_weather"
        jsonschema.validate(dict(made.function.arguments), ARGS["get_weather"])
    finally:
        oll._client.close()


def test_show_says_what_ollama_clients_look_for_and_num_ctx_holds(url: str) -> None:
    """capabilities as Ollama reports them (its template writes Hermes tool calls: "tools"), the context a
    request gets here (not the 32,768 it was trained for), and a smaller num_ctx enforced per request."""
    import ollama

    oll = ollama.Client(host=url, timeout=300)
    try:
        shown = oll.show(QWEN_SMALL)
        assert shown.capabilities == ["completion", "tools", "insert"]  # insert: its FIM tokens
        info = dict(shown.modelinfo or {})
        assert info["qwen2.context_length"] == 2048 and info["edgeslm.trained_context_length"] == 32768
        long = "Write it out in full. " * 40  # more than 64 tokens
        with pytest.raises(ollama.ResponseError, match=r"context holds 64 per request.*a larger num_ctx"):
            oll.generate(model=QWEN_SMALL, prompt=long, options={"num_ctx": 64})
        reply = oll.generate(model=QWEN_SMALL, prompt="Count from 1 to 100.", options={"num_ctx": 64, "temperature": 0})
        assert reply.done_reason == "length" and (reply.prompt_eval_count or 0) + (reply.eval_count or 0) == 64
        assert next(m for m in oll.ps().models if m.model == QWEN_SMALL).context_length == 2048
    finally:
        oll._client.close()


def test_its_tokenizer_exports_as_llama_cpp_splits_it(qwen: Model, tmp_path: Path) -> None:
    """export/convert/finetune write the GGUF's tokenizer as tokenizer.json (the qwen2 pre-tokenizer):
    the tokenizers library then gives llama.cpp's ids on code, digits, CRLF, CJK, Cyrillic and emoji."""
    import gguf
    from tokenizers import Tokenizer

    from edgeslm.export import _value, _write_tokenizer

    reader = gguf.GGUFReader(qwen.path)
    meta = {k: _value(f) for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.") or "_id" in k
            or k in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.add_bos_token")}
    _write_tokenizer(tmp_path, reader, meta)
    exported = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    for text in ("def f(n):\n    return n if n < 2 else f(n-1)+f(n-2)\n", "I've 12345 apples, 3.14\r\n\ttab  x",
                 "我想在apple工作1314151天～ нещо на Български 🦙🦙 ''''```"):
        ours = list(qwen.engine.tokenize(text, add_special=False))
        assert exported.encode(text, add_special_tokens=False).ids == ours


def test_the_humaneval_chat_is_the_authors_chatml_token_for_token(qwen: Model) -> None:
    """The template's rendering plus the assistant prefill equals the string the Qwen2.5-Coder
    authors' eval_plus code writes by hand, so edgeslm's prompt is theirs to the token."""
    problem = humaneval.load_problems()[0]
    literal = (
        f"<|im_start|>system\n{humaneval.SYSTEM}<|im_end|>\n<|im_start|>user\n"
        f"{humaneval.USER.format(prompt=problem.prompt.strip())}<|im_end|>\n<|im_start|>assistant\n```python\n"
    )
    assert qwen.prompt_tokens(humaneval.messages(problem)) == qwen.engine.tokenize(
        literal, add_special=False, parse_special=True
    )


def test_eval_task_humaneval_scores_real_answers(qwen_home: Path, cli: Cli) -> None:
    """Three problems through the batching runner and the sandbox; the first three are ones the
    0.5B solves greedily (HumanEval/0 and /2 at least), so a broken harness shows as a low score."""
    done = cli("--home", str(qwen_home), "eval", QWEN_SMALL, "--task", "humaneval", "--limit", "3", "--force",
               "--slots", "3", "--json")
    assert done.code == 0, done.err
    (result,) = json.loads(done.out)
    assert result["problems"] == 3 and result["passed"] >= 2 and result["protocol"] == humaneval.PROTOCOL
    assert result["model_digest"] == f"sha256-{PINNED.upstream.sha256}" and "rlimits" in result["isolation"]


def test_a_deterministic_request_is_the_same_whatever_runs_beside_it(qwen_home: Path) -> None:
    """Greedy on the 0.5B (Q4_K_M): beside three requests that are generating when it arrives, its
    log-probabilities move (llama.cpp's batched kernels sum in another order: the control); asked to be
    deterministic, they are those of the request alone, to the last bit."""
    import asyncio

    from edgeslm.runner import Chunk, Job, Runner

    runner = Runner(QWEN_SMALL, slots=4, ctx_per_slot=512, home=str(qwen_home))
    greedy, exact = SamplingParams(temperature=0), SamplingParams(temperature=0, deterministic=True)
    ask_for = [{"role": "user", "content": "Write a Python function that checks whether a number is prime."}]

    async def ask(prompt: object, sampling: SamplingParams, n: int = 24) -> list[tuple[int | None, float | None]]:
        return [(ev.token, ev.logprob) async for ev in runner.agenerate(Job(prompt, sampling, n, logprobs=1))
                if isinstance(ev, Chunk)]

    async def beside(sampling: SamplingParams) -> list[tuple[int | None, float | None]]:
        busy = [asyncio.create_task(ask(p, greedy, 48)) for p in ("Once upon a time", "def f(x):", "Water boils at")]
        await asyncio.sleep(1.0)  # they are generating
        mine = await ask(ask_for, sampling)
        await asyncio.gather(*busy)
        return mine

    try:
        alone = asyncio.run(ask(ask_for, greedy))
        assert len(alone) == 24 and asyncio.run(ask(ask_for, exact)) == alone  # alone, the same sums either way
        assert asyncio.run(beside(greedy)) != alone
        assert asyncio.run(beside(exact)) == alone
    finally:
        runner.close()


def test_the_anthropic_sdk_talks_to_the_messages_api(url: str) -> None:
    """Anthropic's Messages API through its own client on the 0.5B: text (the same turn as chat
    completions), streaming events, a tool call in the model's Hermes format, the tool result back, a
    system role inside messages (as Claude Code sends it), stop sequences, and refusals in its shape."""
    import anthropic
    import httpx
    import openai

    ant = anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0, timeout=300)
    # the SDK (2.x) has no sampling parameters any more: they go in the body, as Claude Code leaves them out
    question = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    reply = ant.messages.create(model=QWEN_SMALL, max_tokens=32, extra_body=GREEDY_BODY, system="Be brief.",
                                messages=question)  # type: ignore[arg-type]
    text = "".join(b.text for b in reply.content if b.type == "text")
    with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300) as oai:
        chat = oai.chat.completions.create(model=QWEN_SMALL, max_tokens=32, temperature=0, messages=[
            {"role": "system", "content": "Be brief."}, *question])  # type: ignore[list-item]
    assert text and text == chat.choices[0].message.content and reply.stop_reason in ("end_turn", "max_tokens")
    assert reply.usage.input_tokens == (chat.usage.prompt_tokens if chat.usage else -1)
    counted = ant.messages.count_tokens(model=QWEN_SMALL, system="Be brief.", messages=question)  # type: ignore[arg-type]
    assert counted.input_tokens == reply.usage.input_tokens  # rendered as /v1/messages renders it
    with ant.messages.stream(model=QWEN_SMALL, max_tokens=32, extra_body=GREEDY_BODY, system="Be brief.",
                             messages=question) as stream:  # type: ignore[arg-type]
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == text and final.stop_reason == reply.stop_reason
    tool = {"name": "get_weather", "description": WEATHER["function"]["description"],  # type: ignore[index]
            "input_schema": ARGS["get_weather"]}
    ask = [{"role": "user", "content": "What is the weather like in Paris right now?"}]
    called = ant.messages.create(model=QWEN_SMALL, max_tokens=96, extra_body=GREEDY_BODY, tools=[tool],  # type: ignore[list-item]
                                 messages=ask)  # type: ignore[arg-type]
    (use,) = [b for b in called.content if b.type == "tool_use"]
    assert called.stop_reason == "tool_use" and use.name == "get_weather" and use.id.startswith("toolu_")
    jsonschema.validate(use.input, ARGS["get_weather"])
    with ant.messages.stream(model=QWEN_SMALL, max_tokens=96, extra_body=GREEDY_BODY, tools=[tool],  # type: ignore[list-item]
                             messages=ask) as stream:  # type: ignore[arg-type]
        again = stream.get_final_message()
    assert [(b.name, b.input) for b in again.content if b.type == "tool_use"] == [(use.name, use.input)]
    history = [*ask, {"role": "assistant", "content": [{"type": "tool_use", "id": use.id, "name": use.name,
                                                         "input": use.input}]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18 C, sunny"}]}]
    answered = ant.messages.create(model=QWEN_SMALL, max_tokens=48, extra_body=GREEDY_BODY, tools=[tool],  # type: ignore[list-item]
                                   messages=history)  # type: ignore[arg-type]
    assert answered.stop_reason != "tool_use" and any(b.type == "text" and b.text for b in answered.content)
    inside = ant.messages.create(model=QWEN_SMALL, max_tokens=8, extra_body=GREEDY_BODY, messages=[  # type: ignore[arg-type]
        {"role": "system", "content": "Be brief."}, *question])  # as Claude Code sends a system prompt
    assert inside.content and inside.content[0].type == "text"
    stopped = ant.messages.create(model=QWEN_SMALL, max_tokens=64, extra_body=GREEDY_BODY, stop_sequences=["Paris"],
                                  messages=question)  # type: ignore[arg-type]
    assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", "Paris")
    with pytest.raises(anthropic.BadRequestError, match="images are not supported"):
        ant.messages.create(model=QWEN_SMALL, max_tokens=8, messages=[{"role": "user", "content": [  # type: ignore[list-item]
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]}])
    with pytest.raises(anthropic.BadRequestError, match="matches no call"):
        ant.messages.create(model=QWEN_SMALL, max_tokens=8, messages=[{"role": "user", "content": [  # type: ignore[list-item]
            {"type": "tool_result", "tool_use_id": "toolu_never", "content": "1"}]}])
    missing = httpx.post(f"{url}/v1/messages", json={"model": QWEN_SMALL, "messages": question}, timeout=60)
    error = missing.json()
    assert missing.status_code == 400 and error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error" and "max_tokens" in error["error"]["message"]
    gone = httpx.post(f"{url}/v1/messages", json={"model": "no-such", "max_tokens": 4, "messages": question})
    assert gone.status_code == 404 and gone.json()["error"]["type"] == "not_found_error"
    ant.close()


def test_fill_in_the_middle_on_every_api(url: str) -> None:
    """Code completion between a prefix and a suffix, on Qwen's FIM tokens: Ollama's ``suffix`` and
    OpenAI's in the plain pattern (token for token), llama-server's ``/infill`` in its repository
    pattern; code that spells a FIM token stays text; a model without FIM tokens is refused by name."""
    import httpx
    import ollama
    import openai

    def tokens(text: str, special: bool) -> list[int]:
        got = httpx.post(f"{url}/tokenize", json={"model": QWEN_SMALL, "content": text, "parse_special": special},
                         timeout=300)
        return list(got.json()["tokens"])

    prefix, suffix = "def add(a, b):\n    return ", "\n\n\nprint(add(3, 4))\n"
    pre, suf, mid = (tokens(t, True)[0] for t in ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"))
    plain = [pre, *tokens(prefix, False), suf, *tokens(suffix, False), mid]
    oll = ollama.Client(host=url, timeout=300)
    try:
        made = oll.generate(model=QWEN_SMALL, prompt=prefix, suffix=suffix, options={"temperature": 0,
                                                                                    "num_predict": 12})
        assert list(made.context or [])[: made.prompt_eval_count] == plain
        assert made.response.strip().startswith("a + b"), made.response
        # raw: the client wrote the pattern itself, its special tokens parse as such (llama.cpp's parse_special)
        raw = oll.generate(model=QWEN_SMALL, prompt=f"<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>",
                           raw=True, options={"temperature": 0, "num_predict": 12})
        assert list(raw.context or [])[: raw.prompt_eval_count] == plain and raw.response == made.response
        sneaky = oll.generate(model=QWEN_SMALL, prompt="s = '<|fim_middle|>'\n", suffix="\n",
                              options={"temperature": 0, "num_predict": 1})
        assert list(sneaky.context or [])[: sneaky.prompt_eval_count].count(mid) == 1  # only the pattern's own
        with pytest.raises(ollama.ResponseError, match="no fill-in-the-middle tokens"):
            oll.generate(model="smollm2-135m-instruct", prompt=prefix, suffix=suffix)
    finally:
        oll._client.close()
    with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300) as oai:
        done = oai.completions.create(model=QWEN_SMALL, prompt=prefix, suffix=suffix, max_tokens=12, temperature=0)
        assert done.choices[0].text == made.response and done.usage and done.usage.prompt_tokens == len(plain)
    # llama-server's repository pattern, of which it keeps what the slot holds beyond its 2,048-token batch
    # (its own n_predict, -1, counts twice): 2,048 - 2,048 + 2 tokens here, the current file's name
    repo = tokens("<|repo_name|>myproject\n<|file_sep|>filename\n", True)
    infilled = httpx.post(f"{url}/infill", json={"model": QWEN_SMALL, "input_prefix": prefix, "input_suffix": suffix,
                                                 "n_predict": 12, "temperature": 0}, timeout=300).json()
    assert infilled["tokens_evaluated"] == len(repo[-2:]) + len(plain) and infilled["stop"] is True
    assert infilled["content"].strip().startswith("a + b"), infilled
    extra = [{"filename": "util.py", "text": "def mul(a, b):\n    return a * b\n"}]
    more = httpx.post(f"{url}/infill", json={"model": QWEN_SMALL, "input_prefix": prefix, "input_suffix": suffix,
                                             "input_extra": extra, "n_predict": 4, "temperature": 0, "stream": True},
                      timeout=300)
    lines = [json.loads(x[5:]) for x in more.text.splitlines() if x.startswith("data:")]
    assert lines[-1]["stop"] and lines[-1]["tokens_evaluated"] == infilled["tokens_evaluated"]
    assert "".join(x["content"] for x in lines) == infilled["content"][: len("".join(x["content"] for x in lines))]
    bad = httpx.post(f"{url}/infill", json={"model": QWEN_SMALL, "input_prefix": prefix}, timeout=60)
    assert bad.status_code == 400 and "input_suffix" in bad.text
    # a 100,000-character file: refused unless truncation is asked, then cut from its far end, the FIM tokens kept
    huge = "x = 1\n" * 16_000 + prefix
    asked = {"model": QWEN_SMALL, "prompt": huge, "suffix": suffix, "stream": False,
             "options": {"temperature": 0, "num_predict": 8}}
    refused = httpx.post(f"{url}/api/generate", json=asked, timeout=300)
    assert refused.status_code == 400 and "nothing was cut" in refused.text
    cut = httpx.post(f"{url}/api/generate", json={**asked, "truncate": True}, timeout=600).json()
    kept = cut["context"][: cut["prompt_eval_count"]]
    tail = plain[1 + len(tokens(prefix, False)):]  # fim_suffix, the suffix, fim_middle
    assert kept[0] == pre and kept[-len(tail):] == tail
    assert cut["prompt_eval_count"] == 2048 - 8 and cut["response"].strip().startswith("a + b")

"""``edgeslm serve`` end to end over a real socket with the official ``openai`` and ``ollama``
clients, against the builtin SmolLM2 in real runners."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from .servekit import CLIENT_TIMEOUT, Served, serve_process

pytestmark = pytest.mark.real_model
MODEL = "smollm2-135m-instruct"
ASK = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0, "num_predict": 24}


@pytest.fixture(scope="module")
def server(builtin_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("serve-home")
    shutil.copytree(builtin_home, home, dirs_exist_ok=True)
    # Without the prompt cache, so that greedy replies to the same prompt are the same bits
    # (with it, a cached prefix's logits come from another batch size: a near-tie may flip).
    with serve_process(home, "--parallel", "2", "--ctx", "512", "--preload", MODEL, "--no-prompt-cache") as served:
        yield served


@pytest.fixture
def oll(server: Served) -> Iterator[ollama.Client]:
    client = ollama.Client(host=server.url)
    yield client
    client._client.close()


@pytest.fixture
def oai(server: Served) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.url + "/v1", api_key="not-needed-on-loopback", max_retries=0) as client:
        yield client


def test_ollama_chat_and_generate_stream_the_same_text_as_they_return(oll: ollama.Client) -> None:
    whole = oll.chat(model=MODEL, messages=ASK, options=GREEDY)
    streamed = list(oll.chat(model=MODEL, messages=ASK, options=GREEDY, stream=True))
    assert whole.message.content and "Paris" in whole.message.content
    assert "".join(p.message.content or "" for p in streamed) == whole.message.content
    assert streamed[-1].done and streamed[-1].eval_count == whole.eval_count and whole.done_reason == "length"
    gen = oll.generate(model=MODEL, prompt="What is the capital of France?", options=GREEDY)
    assert gen.response == whole.message.content  # the same turn through the model's template
    assert gen.context and gen.prompt_eval_count and gen.eval_count == 24
    more = oll.generate(model=MODEL, prompt="And of Italy?", context=gen.context, options=GREEDY)
    assert more.prompt_eval_count and more.prompt_eval_count > len(gen.context)


def test_ollama_embed_list_show_ps(oll: ollama.Client) -> None:
    emb = oll.embed(model=MODEL, input=["the sea", "the ocean", "a tax form"])
    sea, ocean, tax = (sum(a * b for a, b in zip(emb.embeddings[0], v, strict=True)) for v in emb.embeddings)
    assert len(emb.embeddings[0]) == 576 and sea == pytest.approx(1.0) and ocean > tax
    assert oll.embeddings(model=MODEL, prompt="the sea").embedding == pytest.approx(emb.embeddings[0], abs=1e-5)
    assert {m.model for m in oll.list().models} >= {f"{MODEL}:latest", "gemma3-270m:latest"}
    shown = oll.show(MODEL)
    assert shown.details and shown.details.quantization_level == "Q4_1" and "im_start" in (shown.template or "")
    assert shown.modelinfo and shown.modelinfo["general.architecture"] == "llama"
    running = oll.ps().models
    assert [m.model for m in running] == [f"{MODEL}:latest"] and (running[0].size or 0) > 98_000_000


def test_ollama_pull_copy_create_delete(oll: ollama.Client) -> None:
    assert [p.status for p in oll.pull(MODEL, stream=True)][-1] == "success"
    oll.copy(MODEL, "smol-copy")
    created = list(
        oll.create(
            model="smol-q8",
            from_=MODEL,
            quantize="q8_0",
            system="Reply in French.",
            parameters={"temperature": 0},
            stream=True,
        )
    )
    assert created[-1].status == "success"
    shown = oll.show("smol-q8")
    assert shown.details and shown.details.quantization_level == "Q8_0" and "temperature 0" in (shown.parameters or "")
    reply = oll.chat(model="smol-q8", messages=[{"role": "user", "content": "Hello!"}], options={"num_predict": 16})
    assert reply.message.content
    for name in ("smol-copy", "smol-q8"):
        oll.delete(name)
    assert not {"smol-copy:latest", "smol-q8:latest"} & {m.model for m in oll.list().models}
    with pytest.raises(ollama.ResponseError) as info:
        oll.delete("smol-copy")
    assert info.value.status_code == 404


def test_openai_chat_completions_embeddings_models(oai: openai.OpenAI, server: Served) -> None:
    args = {"model": MODEL, "messages": ASK, "temperature": 0, "max_tokens": 24}
    whole = oai.chat.completions.create(**args)  # type: ignore[call-overload]
    text = whole.choices[0].message.content
    chunks = list(oai.chat.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    assert "".join((c.choices[0].delta.content or "") for c in chunks if c.choices) == text
    assert whole.usage and chunks[-1].usage and chunks[-1].usage.total_tokens == whole.usage.total_tokens
    assert whole.choices[0].finish_reason == "length"
    assert text
    word = text.split()[3]
    stopped = oai.chat.completions.create(**{**args, "stop": [word]})  # type: ignore[call-overload]
    assert stopped.choices[0].message.content == text[: text.index(word)] and stopped.choices[0].finish_reason == "stop"
    lp = oai.chat.completions.create(**args, logprobs=True, top_logprobs=3)  # type: ignore[call-overload]
    first = lp.choices[0].logprobs.content[0]
    assert first.logprob == pytest.approx(first.top_logprobs[0].logprob) and len(first.top_logprobs) == 3
    comp = oai.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0)
    assert comp.choices[0].text and comp.usage and comp.usage.completion_tokens <= 8
    emb = oai.embeddings.create(model=MODEL, input=["hello", "world"])  # base64 on the wire
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 576
    # token ids of the model's own vocabulary (OpenAI's token arrays; LangChain sends them by default): the
    # same vector as the text they spell
    ids = httpx.post(server.url + "/tokenize", json={"model": MODEL, "content": "hello"}).json()["tokens"]
    by_ids = oai.embeddings.create(model=MODEL, input=[ids, ids]).data
    assert by_ids[0].embedding == pytest.approx(emb.data[0].embedding, abs=1e-5) and len(by_ids) == 2
    one = oai.embeddings.create(model=MODEL, input=ids).data
    assert len(one) == 1 and one[0].embedding == pytest.approx(emb.data[0].embedding, abs=1e-5)
    with pytest.raises(openai.BadRequestError, match="outside this model's vocabulary"):
        oai.embeddings.create(model=MODEL, input=[[1, 49152]])
    assert f"{MODEL}:latest" in {m.id for m in oai.models.list()}
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="no-such-model", messages=ASK)


def test_tokenize_and_detokenize_as_llama_server_answers(server: Served, builtin_home: Path) -> None:
    """llama-server's shapes (plus a model name): ids as llama.cpp's tokenizer gives them, special tokens
    parsed unless asked not to, pieces, the way back, and refusals in its (OpenAI's) error shape."""
    from edgeslm.config import resolve_settings
    from edgeslm.generation import load

    text = "<|im_start|>user\nHello, naïve world!"
    model = load(MODEL, ctx=64, settings=resolve_settings(home=builtin_home, offline=True))
    try:
        expected = model.engine.tokenize(text, add_special=False)
        plain = model.engine.tokenize(text, add_special=False, parse_special=False)
    finally:
        model.close()

    def post(path: str, **body: object) -> httpx.Response:
        return httpx.post(server.url + path, json={"model": MODEL, **body}, timeout=CLIENT_TIMEOUT)

    ids = post("/tokenize", content=text).json()["tokens"]
    assert ids == expected and len(plain) > len(ids)  # "<|im_start|>" is one token, unless parse_special is off
    assert post("/tokenize", content=text, parse_special=False).json()["tokens"] == plain
    pieces = post("/tokenize", content=text, with_pieces=True).json()["tokens"]
    assert [p["id"] for p in pieces] == ids and "".join(p["piece"] for p in pieces if isinstance(p["piece"], str))
    assert post("/detokenize", tokens=ids).json() == {"content": text}
    bad = post("/detokenize", tokens=[1, 10**9])
    assert bad.status_code == 400 and "outside this model's vocabulary" in bad.json()["error"]["message"]
    huge = httpx.post(server.url + "/tokenize", content=b'{"model": "x", "content": "' + b"a" * (10 * 2**20) + b'"}',
                      headers={"content-type": "application/json"}, timeout=CLIENT_TIMEOUT)
    assert huge.status_code == 413
    missing = post("/tokenize", content="hi", model="no-such-model")
    assert missing.status_code == 404


def test_json_format_constrains_the_output(oll: ollama.Client) -> None:
    out = oll.generate(
        model=MODEL,
        prompt="Describe a cat as JSON with keys name and color.",
        format="json",
        options={"temperature": 0, "num_predict": 64},
    )
    if out.done_reason == "stop":
        assert isinstance(json.loads(out.response), dict)
    else:
        assert out.response.lstrip().startswith("{")


def test_token_ids_outside_the_vocabulary_and_overlong_prompts(server: Served) -> None:
    bad = httpx.post(
        server.url + "/v1/completions", json={"model": MODEL, "prompt": [1, 2, 10**6]}, timeout=CLIENT_TIMEOUT
    )
    assert bad.status_code == 400 and "outside the vocabulary" in bad.json()["error"]["message"]
    long = httpx.post(
        server.url + "/api/generate", json={"model": MODEL, "prompt": "word " * 2000}, timeout=CLIENT_TIMEOUT
    )
    assert long.status_code == 400 and "context holds 512" in long.json()["error"]
    ok = httpx.post(
        server.url + "/v1/completions",
        json={"model": MODEL, "prompt": [1, 2, 3], "max_tokens": 4},
        timeout=CLIENT_TIMEOUT,
    )
    assert ok.status_code == 200 and ok.json()["usage"]["prompt_tokens"] == 3


def test_kill_9_of_a_runner_fails_only_its_requests_and_the_next_reloads_it(server: Served) -> None:
    pids = server.runner_pids()
    assert len(pids) == 1, pids
    errors: list[str] = []
    streaming = threading.Event()

    def stream() -> None:
        body = {"model": MODEL, "prompt": "Tell me a long story.", "options": {"num_predict": 400}}
        with httpx.stream("POST", server.url + "/api/generate", json=body, timeout=60) as r:
            for line in r.iter_lines():
                streaming.set()
                errors.append(json.loads(line).get("error", ""))

    t = threading.Thread(target=stream)
    t.start()
    assert streaming.wait(30)
    time.sleep(0.2)
    os.kill(pids[0], signal.SIGKILL)
    t.join(timeout=60)
    assert any("stopped" in e and "next request" in e for e in errors), errors[-3:]
    after = httpx.post(
        server.url + "/api/chat", json={"model": MODEL, "messages": ASK, "stream": False, "options": GREEDY}, timeout=60
    )
    assert after.status_code == 200 and "Paris" in after.json()["message"]["content"]
    assert server.runner_pids() and pids[0] not in server.runner_pids()


def test_a_client_leaving_mid_stream_frees_its_slot_in_the_runner(server: Served) -> None:
    body = {"model": MODEL, "prompt": "Tell me a very long story.", "options": {"num_predict": 400}}
    with httpx.stream("POST", server.url + "/api/generate", json=body, timeout=60) as r:
        lines = r.iter_lines()
        assert json.loads(next(lines))["done"] is False
    deadline = time.monotonic() + 10
    while True:
        metrics = httpx.get(server.url + "/metrics", timeout=CLIENT_TIMEOUT).text
        if f'edgeslm_slots_busy{{model="{MODEL}:latest"}} 0.0' in metrics:
            break
        assert time.monotonic() < deadline, "the slot was not freed"
        time.sleep(0.05)
    after = httpx.post(server.url + "/api/generate", json={**body, "stream": False, "options": GREEDY}, timeout=60)
    assert after.status_code == 200 and after.json()["eval_count"] == 24

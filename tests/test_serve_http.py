"""The server's handlers over a real socket, with fake runners: dialects, streaming, limits, metrics."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeslm.access.audit import verify

from .fake_runner import REPLY_WORDS, FakeRunner
from .ggufbuild import write_runnable_model
from .servekit import audit_text, serving

WORDS = "".join(f" w{i}" for i in range(REPLY_WORDS))


@pytest.fixture
def models(cli: Any, tmp_path: Path, home: Path) -> Path:
    for i, name in enumerate(("tiny", "other")):
        assert cli("import", str(write_runnable_model(tmp_path / f"{name}.gguf", seed=i)), "--name", name).code == 0
    FakeRunner.reset()
    return home


@pytest.fixture
def url(models: Path, tmp_path: Path) -> Iterator[str]:
    with serving(models, FakeRunner, parallel=2, ctx=256, queue=4, audit_log=tmp_path / "audit.jsonl") as base:
        yield base


def ndjson(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.text.splitlines() if line]


def sse(response: httpx.Response) -> list[Any]:
    events = [line[len("data: ") :] for line in response.text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_ollama_generate_streams_the_same_text_as_it_returns_whole(url: str) -> None:
    body = {"model": "tiny", "prompt": "hello there", "options": {"temperature": 0}}
    whole = httpx.post(url + "/api/generate", json={**body, "stream": False}).json()
    lines = ndjson(httpx.post(url + "/api/generate", json=body))
    assert whole["response"] == "".join(line["response"] for line in lines) == WORDS
    assert all(not line["done"] for line in lines[:-1]) and lines[-1]["done"] is True
    for final in (whole, lines[-1]):
        assert final["model"] == "tiny:latest" and final["done_reason"] == "stop"
        assert final["eval_count"] == REPLY_WORDS and final["prompt_eval_count"] == 2
        assert final["total_duration"] > 0 and final["eval_duration"] == 20_000_000 and "load_duration" in final
        assert final["context"] == [0, 1, *range(100, 100 + REPLY_WORDS)]
    job = FakeRunner.jobs[-1]
    assert job.template is True and job.sampling.temperature == 0 and job.sampling.repeat_penalty == 1.1


def test_ollama_options_and_raw(url: str) -> None:
    body = {
        "model": "tiny",
        "prompt": "x",
        "raw": True,
        "stream": False,
        "format": "json",
        "options": {"num_predict": 3, "top_k": 5, "seed": 7, "stop": ["\n"], "mirostat": 2},
    }
    out = httpx.post(url + "/api/generate", json=body).json()
    assert out["response"] == " w0 w1 w2" and out["done_reason"] == "length"
    job = FakeRunner.jobs[-1]
    assert (job.template, job.max_tokens, job.sampling.top_k, job.sampling.seed) == (False, 3, 5, 7)
    assert job.stop == ("\n",) and job.format == "json"


def test_ollama_chat_and_load_unload(url: str) -> None:
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    lines = ndjson(httpx.post(url + "/api/chat", json={"model": "tiny", "messages": msgs}))
    assert "".join(line["message"]["content"] for line in lines) == WORDS
    assert lines[-1]["done_reason"] == "stop" and lines[-1]["message"]["role"] == "assistant"
    assert FakeRunner.jobs[-1].prompt == msgs
    loaded = httpx.post(url + "/api/generate", json={"model": "other"}).json()
    assert loaded["done_reason"] == "load" and {m["name"] for m in httpx.get(url + "/api/ps").json()["models"]} == {
        "tiny:latest",
        "other:latest",
    }
    gone = httpx.post(url + "/api/chat", json={"model": "other", "messages": [], "keep_alive": 0}).json()
    assert gone["done_reason"] == "unload"
    assert [m["name"] for m in httpx.get(url + "/api/ps").json()["models"]] == ["tiny:latest"]


def test_openai_chat_streams_sse_ending_in_done_with_usage(url: str) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    whole = httpx.post(url + "/v1/chat/completions", json=body).json()
    assert whole["object"] == "chat.completion" and whole["choices"][0]["message"]["content"] == WORDS
    assert whole["usage"] == {"prompt_tokens": 1, "completion_tokens": REPLY_WORDS, "total_tokens": 1 + REPLY_WORDS}
    events = sse(
        httpx.post(
            url + "/v1/chat/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}}
        )
    )
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text == WORDS and events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [e["choices"][0]["finish_reason"] for e in events if e["choices"]][-1] == "stop"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == REPLY_WORDS


def test_openai_completions_logprobs_and_embeddings(url: str) -> None:
    out = httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": "a b", "logprobs": 1}).json()
    choice = out["choices"][0]
    assert choice["text"] == WORDS and choice["logprobs"]["token_logprobs"] == [-0.5] * REPLY_WORDS
    assert FakeRunner.jobs[-1].max_tokens == 16 and FakeRunner.jobs[-1].logprobs == 1
    emb = httpx.post(url + "/v1/embeddings", json={"model": "tiny", "input": ["a", "b c"]}).json()
    assert [d["index"] for d in emb["data"]] == [0, 1] and emb["usage"]["prompt_tokens"] == 3
    b64 = httpx.post(url + "/v1/embeddings", json={"model": "tiny", "input": "a", "encoding_format": "base64"}).json()
    import base64

    import numpy as np

    assert np.frombuffer(base64.b64decode(b64["data"][0]["embedding"]), "<f4").tolist() == pytest.approx(
        emb["data"][0]["embedding"]
    )
    ids = [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]]
    assert sorted(ids) == ["other:latest", "tiny:latest"]
    assert httpx.get(url + "/v1/models/tiny:latest").json()["id"] == "tiny:latest"
    missing = httpx.get(url + "/v1/models/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_ollama_store_verbs(url: str, models: Path) -> None:
    tags = httpx.get(url + "/api/tags").json()["models"]
    assert {t["name"] for t in tags} == {"tiny:latest", "other:latest"} and tags[0]["details"]["format"] == "gguf"
    assert httpx.post(url + "/api/copy", json={"source": "tiny", "destination": "tiny2"}).status_code == 200
    create = {
        "model": "brief",
        "from": "tiny",
        "system": "Answer in one word.",
        "parameters": {"temperature": 0.1, "num_predict": 2},
    }
    lines = ndjson(httpx.post(url + "/api/create", json=create))
    assert lines[-1] == {"status": "success"}
    shown = httpx.post(url + "/api/show", json={"model": "brief"}).json()
    assert shown["system"] == "Answer in one word." and "temperature 0.1" in shown["parameters"]
    assert shown["details"]["family"] == "llama" and "general.architecture" in shown["model_info"]
    out = httpx.post(
        url + "/api/chat", json={"model": "brief", "stream": False, "messages": [{"role": "user", "content": "hi"}]}
    ).json()
    assert out["message"]["content"] == " w0 w1" and FakeRunner.jobs[-1].system == "Answer in one word."
    assert FakeRunner.jobs[-1].sampling.temperature == 0.1
    openai_chat = {"model": "brief", "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(url + "/v1/chat/completions", json=openai_chat).status_code == 200
    job = FakeRunner.jobs[-1]  # OpenAI's API too: the stored parameters fill what the request leaves unset
    assert (job.sampling.temperature, job.max_tokens, job.system) == (0.1, 2, "Answer in one word.")
    assert httpx.post(url + "/v1/chat/completions", json={**openai_chat, "temperature": 0.5}).status_code == 200
    assert FakeRunner.jobs[-1].sampling.temperature == 0.5
    assert httpx.request("DELETE", url + "/api/delete", json={"model": "tiny2"}).status_code == 200
    again = httpx.request("DELETE", url + "/api/delete", json={"model": "tiny2"})
    assert again.status_code == 404 and "not found" in again.json()["error"]
    missing = httpx.post(url + "/api/show", json={"model": "no-such-model"})  # the advice keeps its route
    assert missing.status_code == 404 and "'GET /api/tags' lists the models" in missing.json()["error"]
    builtin = httpx.post(url + "/api/show", json={"model": "gemma3-270m"})  # describing never pulls: says how
    assert builtin.status_code == 404 and "pulled from its installed package by the first request that runs it" \
        in builtin.json()["error"]
    pulled = ndjson(httpx.post(url + "/api/pull", json={"model": "smollm2-135m-instruct"}))
    assert pulled[0]["status"] == "pulling manifest" and pulled[-1]["status"] == "success"
    assert any(p.get("total") == 98_362_432 for p in pulled)
    templated = {**create, "model": "templ", "template": "{{ if .System }}[{{ .System }}]{{ end }}{{ .Prompt }}>"}
    assert ndjson(httpx.post(url + "/api/create", json=templated))[-1] == {"status": "success"}
    assert httpx.post(url + "/api/show", json={"model": "templ"}).json()["template"] == templated["template"]
    escape = "{{ ().__class__.__base__.__subclasses__() }}"
    for bad, why in (("{{ json .Tools }}", "outside the subset"), (escape, "unsafe")):
        refused = httpx.post(url + "/api/create", json={**create, "template": bad})
        assert refused.status_code == 400 and why in refused.json()["error"], refused.text
    assert httpx.post(url + "/api/show", json={"model": "brief"}).json()["template"] != bad


def test_the_queue_is_bounded_and_overflow_gets_fast_503s(url: str) -> None:
    FakeRunner.delay = 0.05  # 6 tokens: 0.3 s per request; 2 slots + 4 queued may be in flight
    results: list[int] = []
    lock = threading.Lock()

    def ask() -> None:
        r = httpx.post(url + "/api/generate", json={"model": "tiny", "prompt": "p", "stream": False}, timeout=60)
        with lock:
            results.append(r.status_code)
            if r.status_code == 503:
                assert "retry shortly" in r.json()["error"] and r.headers["retry-after"] == "1"

    threads = [threading.Thread(target=ask) for _ in range(200)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 200 and set(results) <= {200, 503}
    assert results.count(503) >= 150 and results.count(200) >= 6, results
    assert time.monotonic() - start < 30
    FakeRunner.delay = 0
    assert httpx.post(url + "/api/generate", json={"model": "tiny", "prompt": "p", "stream": False}).status_code == 200


def test_a_model_larger_than_the_servers_memory_gets_507_with_its_plan(models: Path) -> None:
    """--max-memory below the model's plan: refused before loading, both dialects, the server stays up."""
    with serving(models, FakeRunner, parallel=2, ctx=256, memory=1_000_000) as base:
        ollama = httpx.post(base + "/api/generate", json={"model": "tiny", "prompt": "p", "stream": False}, timeout=60)
        openai = httpx.post(base + "/v1/chat/completions", timeout=60,
                            json={"model": "tiny", "messages": [{"role": "user", "content": "p"}]})
        assert ollama.status_code == 507 and openai.status_code == 507
        message = ollama.json()["error"]
        assert "tiny:latest needs" in message and "(--max-memory) 1 MiB" in message
        assert "KV cache" in message and "2 slot(s) × 256 tokens" in message and "edgeslm plan tiny:latest" in message
        assert openai.json()["error"]["message"] == message and FakeRunner.started == []
        assert httpx.get(base + "/api/tags", timeout=60).status_code == 200


def test_a_client_that_disconnects_mid_stream_frees_its_slot(url: str) -> None:
    FakeRunner.delay = 0.2
    with httpx.stream("POST", url + "/api/generate", json={"model": "tiny", "prompt": "leaving early"}) as r:
        first = next(r.iter_lines())
        assert json.loads(first)["response"] == " w0"
    deadline = time.monotonic() + 5
    while "leaving early" not in FakeRunner.cancelled:
        assert time.monotonic() < deadline, "the request was not cancelled"
        time.sleep(0.02)
    ps = httpx.get(url + "/api/ps").json()["models"]
    assert ps[0]["in_flight"] == 0


def test_a_client_that_leaves_while_its_texts_are_embedded_cancels_the_embedding(url: str) -> None:
    FakeRunner.embed_delay = 3600  # a runner that takes its time: only the client's leaving ends the wait
    for route, body in (("/api/embed", {"input": "left early"}), ("/v1/embeddings", {"input": "gone too"})):
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + route, json={"model": "tiny", **body}, timeout=httpx.Timeout(30, read=0.5))
        deadline = time.monotonic() + 30
        while body["input"] not in FakeRunner.embeds_cancelled:
            assert time.monotonic() < deadline, f"{route}: the embedding was not cancelled"
            time.sleep(0.02)
    deadline = time.monotonic() + 30
    while httpx.get(url + "/api/ps").json()["models"][0]["in_flight"]:
        assert time.monotonic() < deadline, "the embedding's lease was not released"
        time.sleep(0.02)


def test_a_runner_failing_mid_stream_ends_the_stream_with_an_error_line(url: str) -> None:
    lines = ndjson(httpx.post(url + "/api/generate", json={"model": "tiny", "prompt": "CRASH"}))
    assert [line.get("response") for line in lines[:2]] == [" w0", " w1"] and "stopped" in lines[-1]["error"]
    events = httpx.post(
        url + "/v1/chat/completions",
        json={"model": "tiny", "stream": True, "messages": [{"role": "user", "content": "CRASH"}]},
    )
    assert "stopped" in sse(events)[-1]["error"]["message"]
    whole = httpx.post(url + "/api/generate", json={"model": "tiny", "prompt": "CRASH", "stream": False})
    assert whole.status_code == 500 and "stopped" in whole.json()["error"]
    assert httpx.post(url + "/api/generate", json={"model": "tiny", "prompt": "ok", "stream": False}).status_code == 200


def test_metrics_count_requests_tokens_and_latency(url: str) -> None:
    FakeRunner.delay = 0.01
    httpx.post(url + "/api/generate", json={"model": "tiny", "prompt": "one two", "stream": False})
    httpx.post(url + "/api/generate", json={"model": "nope", "prompt": "x"})
    text = httpx.get(url + "/metrics").text
    assert 'edgeslm_requests_total{route="/api/generate",status="200"} 1.0' in text
    assert 'edgeslm_requests_total{route="/api/generate",status="404"} 1.0' in text
    assert 'edgeslm_prompt_tokens_total{model="tiny:latest"} 2.0' in text
    assert f'edgeslm_generated_tokens_total{{model="tiny:latest"}} {REPLY_WORDS}.0' in text
    assert 'edgeslm_time_to_first_token_seconds_count{model="tiny:latest"} 1.0' in text
    assert f'edgeslm_inter_token_latency_seconds_count{{model="tiny:latest"}} {REPLY_WORDS - 1}.0' in text
    assert "edgeslm_models_loaded 1.0" in text and 'edgeslm_slots{model="tiny:latest"} 2.0' in text
    assert 'edgeslm_queue_depth{model="tiny:latest"} 0.0' in text and "edgeslm_model_memory_bytes" in text


def test_every_request_is_audited_in_an_intact_chain(url: str, tmp_path: Path) -> None:
    httpx.post(url + "/api/generate", json={"model": "tiny", "prompt": "secret words", "stream": False})
    httpx.get(url + "/api/tags")
    httpx.post(url + "/api/generate", content=b"not json", headers={"Content-Type": "application/json"})
    lines = [json.loads(line) for line in audit_text(tmp_path / "audit.jsonl", 3).splitlines()]
    assert [(r["route"], r["status"]) for r in lines] == [
        ("/api/generate", 200),
        ("/api/tags", 200),
        ("/api/generate", 400),
    ]
    assert lines[0]["model"] == "tiny:latest" and (lines[0]["tokens_in"], lines[0]["tokens_out"]) == (2, REPLY_WORDS)
    assert "secret" not in (tmp_path / "audit.jsonl").read_text()
    assert verify(tmp_path / "audit.jsonl").ok


def test_the_ps_command_shows_what_a_running_server_has_loaded(url: str, cli: Any) -> None:
    httpx.post(url + "/api/generate", json={"model": "tiny"})
    result = cli("ps", "--server", url.removeprefix("http://"))
    assert result.code == 0 and "tiny:latest" in result.out and "0/2" in result.out
    as_json = json.loads(cli("ps", "--server", url, "--json").out)
    assert as_json["models"][0]["name"] == "tiny:latest"
    gone = cli("ps", "--server", "127.0.0.1:9")
    assert gone.code == 69 and "start one with 'edgeslm serve'" in gone.err


def test_serve_refuses_to_listen_beyond_loopback_without_keys(cli: Any) -> None:
    result = cli("serve", "--host", "0.0.0.0", "--preload", "")
    assert result.code == 2 and "loopback only" in result.err and "--api-keys" in result.err


def test_a_hung_runner_fails_its_requests_and_the_server_keeps_serving(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgeslm.serve import replies as service

    monkeypatch.setattr(service, "REPLY_SILENCE", 0.3)
    FakeRunner.delay = 5.0  # a runner that goes silent
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    whole = httpx.post(url + "/v1/chat/completions", json=body, timeout=10)
    assert whole.status_code == 503 and "seems hung" in whole.json()["error"]["message"]
    several = httpx.post(url + "/v1/chat/completions", json={**body, "n": 2, "stream": True}, timeout=10)
    assert "seems hung" in several.text  # streamed: the failure is an event, then [DONE]
    FakeRunner.delay = 0
    assert httpx.post(url + "/v1/chat/completions", json=body, timeout=10).status_code == 200


def test_create_from_uploaded_files_with_the_ollama_client(url: str, models: Path, tmp_path: Path) -> None:
    """Ollama's flow: upload each file (POST /api/blobs/sha256:…), then create naming their digests."""
    import ollama

    from .ggufbuild import write_lora

    model = write_runnable_model(tmp_path / "up.gguf", seed=5)
    lora = write_lora(tmp_path / "up-lora.gguf", model)
    client = ollama.Client(host=url)
    try:
        digests = {p.name: client.create_blob(p) for p in (model, lora)}
        files, adapters = {"up.gguf": digests["up.gguf"]}, {"up-lora.gguf": digests["up-lora.gguf"]}
        done = list(client.create(model="uploaded", files=files, adapters=adapters, system="Be brief.", stream=True))
    finally:
        client._client.close()
    assert httpx.head(url + f"/api/blobs/{digests['up.gguf']}").status_code == 200
    assert httpx.head(url + "/api/blobs/sha256:" + "0" * 64).status_code == 404
    assert done[-1].status == "success"
    shown = httpx.post(url + "/api/show", json={"model": "uploaded"}).json()
    assert shown["system"] == "Be brief." and [a["name"] for a in shown["adapters"]] == ["up-lora.gguf"]
    assert shown["adapters"][0]["digest"] == digests["up-lora.gguf"]
    tags = {t["name"]: t["digest"] for t in httpx.get(url + "/api/tags").json()["models"]}
    assert tags["uploaded:latest"] == digests["up.gguf"].removeprefix("sha256:")
    # a body that does not hash to its digest is not kept; an unknown digest is named; no server paths
    wrong = httpx.post(url + "/api/blobs/sha256:" + "1" * 64, content=b"not this")
    assert wrong.status_code == 500 and "nothing was kept" in wrong.json()["error"]
    assert not list((models / "models" / "uploads").glob("sha256-1111*"))
    missing = httpx.post(url + "/api/create", json={"model": "x", "files": {"a.gguf": "sha256:" + "2" * 64}})
    assert missing.status_code == 400 and "is not on this server; upload it first" in missing.json()["error"]
    for modelfile in (f"FROM {model}\n", "FROM tiny\nADAPTER /etc/passwd\n", "FROM ../../etc\n"):
        refused = httpx.post(url + "/api/create", json={"model": "x", "modelfile": modelfile, "stream": False})
        assert refused.status_code in (400, 404) and "x:latest" not in httpx.get(url + "/api/tags").text, refused.text


def test_a_peft_adapter_uploaded_as_its_files(url: str, models: Path, tmp_path: Path) -> None:
    """As 'ollama create' sends an ADAPTER folder: its files uploaded, named together in 'adapters'."""
    import numpy as np
    from safetensors.numpy import save_file

    from edgeslm.formats.gguf_header import read_gguf_header

    from .ggufbuild import write_runnable_model

    base = write_runnable_model(tmp_path / "b.gguf", seed=0)
    q = next(t for t in read_gguf_header(base).tensors if t.name == "blk.0.attn_q.weight")
    peft = tmp_path / "peft"
    peft.mkdir()
    (peft / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4}))
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    pair = {f"{prefix}.lora_A.weight": np.ones((2, q.shape[0]), np.float32),
            f"{prefix}.lora_B.weight": np.ones((q.shape[1], 2), np.float32)}
    save_file(pair, peft / "adapter_model.safetensors")
    digests = {}
    for f in peft.iterdir():
        digest = "sha256:" + hashlib.sha256(f.read_bytes()).hexdigest()
        assert httpx.post(url + f"/api/blobs/{digest}", content=f.read_bytes()).status_code == 201
        digests[f.name] = digest
    body = {"model": "peft-tuned", "from": "tiny", "adapters": digests, "stream": False}
    done = httpx.post(url + "/api/create", json=body)
    assert done.status_code == 200 and done.json() == {"status": "success"}, done.text
    shown = httpx.post(url + "/api/show", json={"model": "peft-tuned"}).json()
    assert [a["name"] for a in shown["adapters"]] == ["peft-adapter"]
    assert not [p for p in (models / "models" / "tmp").iterdir() if p.name.startswith("peft-")]  # the links went


def test_a_stalled_upload_is_dropped(url: str, models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import edgeslm.serve.bodies as service

    monkeypatch.setattr(service, "UPLOAD_SILENCE", 0.3)

    def slow() -> Iterator[bytes]:
        yield b"a"
        time.sleep(1.0)
        yield b"b"

    digest = "sha256:" + hashlib.sha256(b"ab").hexdigest()
    stalled = httpx.post(url + f"/api/blobs/{digest}", content=slow(), timeout=30)
    assert stalled.status_code == 503 and "the upload stalled for 0.3 s" in stalled.json()["error"]
    assert httpx.head(url + f"/api/blobs/{digest}").status_code == 404
    assert httpx.post(url + f"/api/blobs/{digest}", content=b"ab").status_code == 201

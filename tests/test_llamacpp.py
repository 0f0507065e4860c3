"""The llama.cpp engine on the builtin models: parity with llama.cpp, chat, embed, bench, failures."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from edgeslm.config import resolve_settings
from edgeslm.engines.base import SamplingParams
from edgeslm.errors import ChatTemplateError, ContextOverflowError, EngineError
from edgeslm.generation import Model, generate, load

from .conftest import CliResult, edgeslm_command
from .ggufbuild import ARCH, gguf_bytes, tensor_info, write, write_tiny_model

pytestmark = pytest.mark.real_model
Cli = Callable[..., CliResult]
MODELS = ["smollm2-135m-instruct", "gemma3-270m"]
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a land far away,"]


@pytest.fixture(scope="module", params=MODELS)
def model(request: pytest.FixtureRequest, builtin_home: Path) -> Iterator[Model]:
    loaded = load(request.param, ctx=512, threads=2, settings=resolve_settings(home=builtin_home, offline=True))
    yield loaded
    loaded.close()


def reference_greedy(path: Path, prompt: str, n: int) -> tuple[list[int], list[int]]:
    """llama.cpp's own greedy decode, through llama-cpp-python's high-level Llama API."""
    from llama_cpp import Llama

    # flash_attn=True: llama.cpp's own default ("auto") enables it on the CPU; the binding's default is off.
    llm = Llama(model_path=str(path), n_ctx=512, n_threads=2, flash_attn=True, verbose=False)
    try:
        tokens = llm.tokenize(prompt.encode(), add_bos=True, special=False)
        out = []
        for token in llm.generate(tokens, temp=0.0, top_k=1, repeat_penalty=1.0):
            if llm.token_eos() == token or len(out) >= n:
                break
            out.append(token)
        return tokens, out
    finally:
        llm.close()


def test_greedy_tokens_match_llama_cpp(model: Model) -> None:
    # The reference copies every step's logits into Python: Gemma's 262k vocabulary makes it slow.
    n = 32 if model.engine.n_vocab < 100_000 else 12
    for prompt in PROMPTS:
        ref_prompt, ref_out = reference_greedy(model.path, prompt, n)
        assert model.prompt_tokens(prompt) == ref_prompt
        ours = generate(model, prompt, max_tokens=len(ref_out), sampling=SamplingParams(temperature=0))
        assert list(ours.tokens) == ref_out, prompt


def test_logits_agree_with_generation(model: Model) -> None:
    tokens = model.prompt_tokens(PROMPTS[0])
    logits = model.engine.eval_logits(tokens)
    assert logits.shape == (len(tokens), model.engine.n_vocab) and np.isfinite(logits).all()
    first = generate(model, PROMPTS[0], max_tokens=1, sampling=SamplingParams(temperature=0)).tokens[0]
    assert int(logits[-1].argmax()) == first


def test_seeded_sampling_is_reproducible(model: Model) -> None:
    s = SamplingParams(temperature=0.9, seed=1234)
    a, b = (generate(model, PROMPTS[2], max_tokens=24, sampling=s).tokens for _ in range(2))
    assert a == b
    c = generate(model, PROMPTS[2], max_tokens=24, sampling=SamplingParams(temperature=0.9, seed=99)).tokens
    assert c != a


def test_embeddings(model: Model) -> None:
    a, b, c = (model.engine.embed(t) for t in ("The cat sat on the mat.", "The cat sat on the mat.", "Quarterly tax"))
    assert a == b and abs(np.linalg.norm(a) - 1) < 1e-6 and len(a) == model.info.embedding_length
    assert a != c


def test_prompt_longer_than_the_context(model: Model) -> None:
    with pytest.raises(ContextOverflowError, match="but the context holds 512"):
        generate(model, "word " * 600)


def test_chat_on_the_instruct_model_and_refusal_on_the_base_model(model: Model) -> None:
    messages = [{"role": "user", "content": "Say hello."}]
    if not model.has_chat_template:  # gemma3-270m is a base model
        with pytest.raises(ChatTemplateError, match="has no chat template"):
            generate(model, messages)
        return
    reply = generate(model, messages, max_tokens=48, sampling=SamplingParams(temperature=0))
    assert reply.text.strip() and reply.finish_reason in ("stop", "length")
    assert model.prompt_tokens([{"role": "user", "content": "x"}])[:1] == model.engine.tokenize("<|im_start|>")


@pytest.fixture
def real_cli(builtin_home: Path, home: Path, cli: Cli) -> Cli:
    shutil.copytree(builtin_home, home)
    return cli


def test_run_both_builtins_from_the_cli(real_cli: Cli) -> None:
    chat = real_cli("run", "Write a haiku about the sea", "--temperature", "0", "--max-tokens", "16")
    assert chat.code == 0 and len(chat.out.strip()) > 10, chat.err
    base = real_cli("run", "gemma3-270m", "The capital of France is", "--temperature", "0", "--max-tokens", "24")
    assert base.code == 0 and ("Paris" in base.out or "France" in base.out), base.out
    assert "has no chat template: running as plain completion" in base.err


def test_embed_from_the_cli(real_cli: Cli) -> None:
    vector = json.loads(real_cli("embed", "smollm2-135m-instruct", "some text").out)
    assert len(vector) == 576 and abs(sum(x * x for x in vector) - 1) < 1e-6


def test_bench_both_builtins(real_cli: Cli) -> None:
    result = real_cli("bench", *MODELS, "-p", "64", "-n", "16", "-r", "2", "--json")
    assert result.code == 0, result.err
    report = {r["model"]: r for r in json.loads(result.out)}
    assert set(report) == {f"{m}:latest" for m in MODELS}
    for r in report.values():
        assert [t["test"] for t in r["tests"]] == ["pp64", "tg16"]
        assert all(t["mean_tps"] > 1 and len(t["samples_tps"]) == 2 for t in r["tests"])
        assert r["peak_rss"] > r["file_size"] * 0.5 and r["load_seconds"] > 0
    for r in report.values():  # each test's share of the machine's ceilings, as device_speed computes it
        limits = r["ceilings"]
        pp, tg = r["tests"]
        assert r["of_limit"][0] == pytest.approx(pp["mean_tps"] * 2 * r["n_params"] / limits["matmul_flops"])
        assert r["of_limit"][1] == pytest.approx(tg["mean_tps"] * r["decode_bytes"] / limits["read_bytes_per_s"])
        assert r["file_size"] * 0.8 < r["decode_bytes"] <= r["file_size"]  # both builtins tie their embeddings
    assert "pp64" in real_cli("bench", MODELS[0], "-p", "64", "-n", "0", "-r", "1", "--markdown").out
    assert real_cli("bench", MODELS[0], "-p", "0", "-n", "8", "-r", "1", "--csv").out.startswith("model,")
    tuned = real_cli("bench", MODELS[0], "-p", "64", "-n", "4", "-r", "1", "-ub", "16", "-fa", "off", "--json")
    assert tuned.code == 0 and json.loads(tuned.out)[0]["tests"][0]["mean_tps"] > 1, tuned.err
    assert "-ub 0 is out of range" in real_cli("bench", MODELS[0], "-ub", "0").err


def test_a_file_llama_cpp_refuses_is_a_clear_error(tmp_path: Path, home: Path) -> None:
    # Valid GGUF, known architecture, but none of the tensors a llama model needs.
    broken = write(tmp_path / "broken.gguf", gguf_bytes([ARCH], [tensor_info("w", [64])], b"\0" * 256))
    with pytest.raises(EngineError, match="llama.cpp could not load broken.gguf"):
        load(str(broken), settings=resolve_settings(home=home))
    unknown = write_tiny_model(tmp_path / "alien.gguf", arch="alien")
    with pytest.raises(EngineError, match="could not load alien.gguf"):
        load(str(unknown), settings=resolve_settings(home=home))
    assert os.getpid() > 0  # still here


def test_ctrl_c_stops_the_reply_not_the_chat(builtin_home: Path, tmp_path: Path) -> None:
    import signal
    import subprocess
    import time

    home = tmp_path / "h"
    shutil.copytree(builtin_home, home)
    cmd = edgeslm_command(
        home,
        "run",
        "smollm2-135m-instruct",
        "-i",
        *("--max-tokens", "4000", "--temperature", "0.8", "--seed", "1"),
        interruptible=True,
    )
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("Tell me a very long story about the sea.\n")
    proc.stdin.flush()
    assert proc.stdout.read(20)  # the reply is streaming
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.stdin.write("/bye\n")
    proc.stdin.flush()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "[generation stopped]" in err


def test_close_releases_every_handle(tmp_path: Path) -> None:
    """A closed engine holds no llama.cpp context or model: optimize opens hundreds (one per
    sensitivity probe); the generation context once went unfreed, 0.3 GB a probe on the 1.5B."""
    from edgeslm.engines.base import LoadParams, open_engine

    from .ggufbuild import write_runnable_model

    engine = open_engine("llama.cpp", write_runnable_model(tmp_path / "m.gguf"), LoadParams(n_ctx=64))
    engine.embed("abc")  # the embedding context too
    handles = ("ctx", "_model")
    embedder = engine._embedder
    assert all(getattr(engine, h) for h in handles) and embedder is not None and embedder.ctx
    engine.close()
    assert [h for h in handles if getattr(engine, h) is not None] == [] and embedder.ctx is None
    assert engine._embedder is None
    engine.close()  # twice is harmless

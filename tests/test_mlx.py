"""MLX as a third runtime: conversion through mlx-lm, the folder check, the engine against mlx-lm's
own generation and against the GGUF it came from, serving, optimize, recommend and export, and
hostile MLX folders. Tiny models."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from itertools import islice
from pathlib import Path

import numpy as np
import pytest

from edgeslm.convert.to_mlx import MlxRecipe, convert_to_mlx, parse_recipes
from edgeslm.engines.base import LoadParams, SamplingParams, open_engine
from edgeslm.errors import InvalidModelFileError, InvalidParameterError
from edgeslm.evaluate.core import EvalSettings, evaluate, load_text
from edgeslm.formats.model_format import ModelFormat
from edgeslm.store import Store, parse_name
from tests.conftest import CliResult, snapshot
from tests.onnxbuild import GGUF_NAME, build_store, copy_folder, private_home

pytest.importorskip("mlx_lm", reason="the mlx extra is part of the README's install")

FP32, Q4 = "tiny-llama:mlx-fp32", "tiny-llama:mlx-4bit-g32-fp32"
PROMPTS = ["Hello world", "The quick brown fox", "1 2 3 4", "<|im_start|>user\nhi<|im_end|>", "naïve café"]


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mlx-home")
    store = build_store(root)
    convert_to_mlx(store, parse_name(GGUF_NAME), MlxRecipe(dtype="float32"))
    convert_to_mlx(store, parse_name(GGUF_NAME), MlxRecipe(dtype="float32", bits=4, group_size=32))
    return root


@pytest.fixture
def mlx_home(built: Path, home: Path) -> Path:
    return private_home(built, home)


@pytest.fixture
def mlx_store(mlx_home: Path) -> Store:
    return Store.open(mlx_home / "models")


def test_conversions_are_stored_with_lineage(mlx_store: Store, cli: Callable[..., CliResult]) -> None:
    fp32, q4 = mlx_store.get(parse_name(FP32)), mlx_store.get(parse_name(Q4))
    assert fp32.format is q4.format is ModelFormat.MLX
    assert fp32.info.n_params == q4.info.n_params == mlx_store.get(parse_name(GGUF_NAME)).info.n_params
    assert q4.info.main_type == "Q4G32" and q4.size < fp32.size
    assert json.loads(q4.source["options"])["q_bits"] == 4 and q4.source["made_with"].startswith("mlx-lm")
    assert "README.md" not in {x.path for x in q4.layers}
    assert cli("verify").code == 0


def test_greedy_tokens_equal_mlx_lms_own_generation(mlx_store: Store) -> None:
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.generate import generate_step

    folder = mlx_store.model_path(mlx_store.get(parse_name(Q4)))
    engine = open_engine("mlx", folder, LoadParams(n_ctx=128))
    model, tokenizer = load(str(folder))
    for prompt in PROMPTS:
        ids = engine.tokenize(prompt, add_special=True, parse_special=True)
        assert ids == tokenizer.encode(prompt)
        theirs = [int(t) for t, _ in islice(generate_step(mx.array(ids), model, max_tokens=16), 16)]
        ours = list(islice(engine.generate_tokens(ids, SamplingParams(temperature=0)), 16))
        assert ours == theirs, prompt


def test_fp32_mlx_matches_the_gguf_it_was_built_from(mlx_store: Store) -> None:
    params = LoadParams(n_ctx=128, n_threads=2)
    gguf = open_engine("llama.cpp", mlx_store.model_path(mlx_store.get(parse_name(GGUF_NAME))), params)
    mlx = open_engine("mlx", mlx_store.model_path(mlx_store.get(parse_name(FP32))), params)
    ids = range(gguf.n_vocab)
    assert [mlx.token_bytes(t) for t in ids] == [gguf.token_bytes(t) for t in ids]
    tokens = gguf.tokenize(" ".join(PROMPTS), add_special=False, parse_special=True)
    a, b = gguf.eval_logits(tokens), mlx.eval_logits(tokens)
    assert float(np.abs(a - b).max()) < 5e-3 * max(1.0, float(np.abs(a).max()))
    assert (a.argmax(-1) == b.argmax(-1)).all()
    vec = mlx.embed("Hello world")
    assert len(vec) == 64 and abs(sum(x * x for x in vec) - 1) < 1e-4
    with pytest.raises(InvalidParameterError, match="grammar"):
        next(mlx.generate_tokens(tokens, SamplingParams(grammar='root ::= "a"')))


def test_eval_and_run_an_mlx_variant(mlx_store: Store, cli: Callable[..., CliResult]) -> None:
    settings = EvalSettings(ctx=64, chunks=1, speed=False)
    exact = evaluate(mlx_store, parse_name(FP32), parse_name(GGUF_NAME), load_text(None), settings)
    q4 = evaluate(mlx_store, parse_name(Q4), parse_name(GGUF_NAME), load_text(None), settings)
    assert exact.runtime == "mlx" and exact.kld_mean is not None and q4.kld_mean is not None
    assert exact.kld_mean < 1e-4 < q4.kld_mean
    ran = cli("run", Q4, "Hello", "--temperature", "0", "--max-tokens", "6")
    assert ran.code == 0, ran.err


def test_slots_step_two_generations_as_one_at_a_time(mlx_store: Store) -> None:
    from edgeslm.engines.base import open_batch

    engine = open_engine("mlx", mlx_store.model_path(mlx_store.get(parse_name(Q4))), LoadParams(n_ctx=128))
    greedy = SamplingParams(temperature=0)
    prompts = [engine.tokenize(p) for p in PROMPTS[:2]]
    alone = [list(islice(engine.generate_tokens(p, greedy), 8)) for p in prompts]
    slots = open_batch(engine, 2, 128)
    for i, p in enumerate(prompts):
        slots.add(str(i), p, greedy, 8)
    got: dict[str, list[int]] = {"0": [], "1": []}
    while slots.free_slots() < 2:
        for ev in slots.step():
            if ev.finish != "stop":
                got[ev.request].append(ev.token)
    assert [got["0"], got["1"]] == [a[: len(got[str(i)])] for i, a in enumerate(alone)]
    assert all(got.values())


def test_plan_predicts_an_mlx_runner_and_plan_ram_weighs_it(mlx_home: Path, cli: Callable[..., CliResult]) -> None:
    """The MLX plan: the weights read in whole, each slot's cache of its whole context in the model's
    type, a prefill step's attention scores; constants fitted on SmolLM2 on one machine. For a tiny
    model the base is nearly all of it, and the base is the machine's (mlx's kernels and threads for
    its CPU: a peak of 287 MB on a 2-core EPYC, 348 MB on CI's machine), so within a quarter."""
    from edgeslm.config import resolve_settings
    from edgeslm.generation import resolve_model
    from edgeslm.tune import measured_peak

    shown = {slots: json.loads(cli("plan", Q4, "--ctx", "256", "--parallel", str(slots), "--json").out)
             for slots in (1, 2)}
    one, two = shown[1], shown[2]
    assert one["runtime"] == "mlx" and one["kv_type"] == "f32" and one["repacked"] == 0 and one["compute"] > 0
    assert two["kv_cache"] == 2 * one["kv_cache"] > 0 and one["mapped"] == two["mapped"] > 0
    peak = measured_peak(resolve_model(Q4, resolve_settings(home=mlx_home, offline=True)), str(mlx_home), 2, 256,
                         None, requests=2)
    assert abs(two["total"] / peak - 1) < 0.25, (two, peak)
    refused = cli("plan", Q4, "--ctx", "256", "--kv-type", "q8_0")
    assert refused.code != 0 and "runs on mlx, which keeps its KV cache in the model's own type (f32)" in refused.err
    # plan --ram searches MLX folders too: the only variant with a measured KLD is the chat choice
    assert cli("eval", Q4, "--reference", GGUF_NAME, "--ctx", "64", "--chunks", "1", "--no-speed").code == 0
    chosen = json.loads(cli("plan", Q4, "--ram", "4GB", "--ctx", "256", "--json").out)["chosen"]
    assert (chosen["name"], chosen["runtime"], chosen["kv"], chosen["memory"]) == (Q4, "mlx", "f32", one["total"])


def test_a_served_mlx_model_holds_its_whole_context(tmp_path: Path) -> None:
    """The server's runner gives an MLX model the context it was asked for (it held 512 tokens, the
    size llama.cpp's runners load their unused model context with)."""
    import asyncio

    from edgeslm.config import resolve_settings
    from edgeslm.convert import convert
    from edgeslm.generation import resolve_model
    from edgeslm.runner.messages import Done, Job
    from edgeslm.runner.process import Runner
    from tests.hfbuild import write_model, write_tokenizer

    store = Store.open(tmp_path / "models")
    vocab = write_tokenizer(tmp_path / "hf")
    write_model(tmp_path / "hf", "llama", vocab, max_position_embeddings=1024)
    convert(store, tmp_path / "hf", outtype="f32", name="long-llama:f32")
    convert_to_mlx(store, parse_name("long-llama:f32"), MlxRecipe(dtype="float32"))
    model = resolve_model("long-llama:mlx-fp32", resolve_settings(home=tmp_path, offline=True))
    runner = Runner(model, slots=1, ctx_per_slot=1024, home=str(tmp_path), kv=None)
    try:
        async def ask() -> list[object]:
            return [ev async for ev in runner.agenerate(Job([5 + i % 300 for i in range(700)],
                                                            SamplingParams(temperature=0), 4))]

        done = asyncio.run(ask())[-1]
        assert isinstance(done, Done) and (done.prompt_tokens, done.completion_tokens) == (700, 4), done
    finally:
        runner.close()


# -- hostile folders -------------------------------------------------------------------------------


def _lie_about_a_shape(folder: Path) -> None:
    path = folder / "model.safetensors"
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    name = next(k for k in header if k.endswith("q_proj.weight"))
    header[name]["shape"] = [header[name]["shape"][0], 1]  # fewer values than its bytes hold
    text = json.dumps(header, separators=(",", ":")).encode().ljust(n)  # padded with spaces, as safetensors allows
    assert len(text) == n
    path.write_bytes(raw[:8] + text[:n] + raw[8 + n :])


def _edit_config(change: dict[str, object]) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        config.update(change)
        (folder / "config.json").write_text(json.dumps(config))

    return edit


def _pickles_only(folder: Path) -> None:
    for path in folder.glob("*.safetensors*"):
        path.unlink()
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")  # a pickle: never to be loaded


HOSTILE = {
    "a header that lies about a shape": (_lie_about_a_shape, "truncated or corrupt"),
    "an unknown model_type": (_edit_config({"model_type": "not-a-model"}), "model_type 'not-a-model'"),
    "bits mlx cannot honour": (
        _edit_config({"quantization": {"bits": 3, "group_size": 48}}),
        "mlx quantizes",
    ),
    "settings that do not describe the weights": (
        _edit_config({"quantization": {"bits": 3, "group_size": 32}}),
        "do not describe these weights",
    ),
    "pickled weights only": (_pickles_only, "pickled weights only"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_mlx_folder_is_refused_and_nothing_is_stored(
    case: str, mlx_home: Path, tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    damage, words = HOSTILE[case]
    folder = copy_folder(Store.open(mlx_home / "models"), Q4, tmp_path / "bad")
    damage(folder)
    before = snapshot(mlx_home / "models")
    result = cli("import", str(folder), "--name", "bad")
    assert result.code == 65 and words in result.err, result.err
    assert snapshot(mlx_home / "models") == before


def test_convert_options_and_architectures_are_checked(
    mlx_home: Path, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    from tests.ggufbuild import write_tiny_model

    assert "--q-bits 7 is not one mlx quantizes" in cli("convert", GGUF_NAME, "--to", "mlx", "--q-bits", "7").err
    assert "--dtype 'float8'" in cli("convert", GGUF_NAME, "--to", "mlx", "--dtype", "float8").err
    store = Store.open(mlx_home / "models")
    store.add_file(write_tiny_model(tmp_path / "g.gguf", arch="gemma3"), parse_name("g"), source={})
    before = snapshot(store.root)
    with pytest.raises(InvalidModelFileError, match="convert --to mlx supports llama, qwen2, qwen3"):
        convert_to_mlx(store, parse_name("g"), MlxRecipe(bits=4))
    assert snapshot(store.root) == before
    assert os.environ.get("HF_HUB_OFFLINE") is None  # the converter's offline switch stays in its child


def test_the_official_clients_chat_with_an_mlx_model(mlx_home: Path) -> None:
    import ollama
    import openai

    from edgeslm.generation import generate, load
    from tests.servekit import serving

    messages = [{"role": "user", "content": "Tell me about the sea"}]
    model = load(Q4, ctx=256)
    try:
        expected = generate(model, messages, max_tokens=8, sampling=SamplingParams(temperature=0))
    finally:
        model.close()
    with (
        serving(mlx_home, parallel=2, ctx=256) as url,
        openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as oai,
    ):
        reply = oai.chat.completions.create(model=Q4, messages=messages, max_tokens=8, temperature=0)  # type: ignore[arg-type]
        assert reply.choices[0].message.content == expected.text
        stream = oai.chat.completions.create(model=Q4, messages=messages, max_tokens=8, temperature=0, stream=True)  # type: ignore[arg-type]
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == expected.text
        with pytest.raises(openai.BadRequestError, match="log-probabilities"):
            oai.chat.completions.create(model=Q4, messages=messages, max_tokens=4, logprobs=True)  # type: ignore[arg-type]
        with pytest.raises(openai.BadRequestError, match="grammar"):
            oai.chat.completions.create(
                model=Q4, messages=messages, max_tokens=4, response_format={"type": "json_object"}
            )  # type: ignore[arg-type]
        assert oai.models.retrieve(Q4).id == Q4  # the runner lives on
        oll = ollama.Client(host=url)
        try:
            options = {"num_predict": 8, "temperature": 0}
            parts = list(oll.chat(model=Q4, messages=messages, options=options, stream=True))
            assert "".join(p.message.content or "" for p in parts) == expected.text and parts[-1].done
            shown = oll.show(Q4)
            assert shown.details is not None and shown.details.format == "mlx" and "im_start" in (shown.template or "")
            listed = {m.model: m.details.format for m in oll.list().models if m.details is not None}
            assert listed[Q4] == "mlx" and listed[GGUF_NAME] == "gguf"
        finally:
            oll._client.close()


# -- choosing and handing over ---------------------------------------------------------------------


def test_optimize_weighs_mlx_variants_and_recommend_keeps_them_for_apple_silicon(mlx_store: Store) -> None:
    from edgeslm.device import describe, detect
    from edgeslm.formats.model_format import Runtime
    from edgeslm.formats.quant_types import parse_quant_types
    from edgeslm.optimize.core import OptimizeParams, optimize
    from edgeslm.recommend import recommend

    params = OptimizeParams(
        types=tuple(parse_quant_types("q8_0")), eval=EvalSettings(ctx=64, chunks=1, speed=False), mixed=False,
        runtimes=(Runtime.LLAMA_CPP, Runtime.MLX), mlx=parse_recipes("4bit-g32-fp32"), tag=None,
    )
    before = mlx_store.get(parse_name(Q4)).digest
    result = optimize(mlx_store, parse_name(GGUF_NAME), load_text(None), params)
    runtimes = {c.name: (c.kind, c.result.runtime) for c in result.candidates}
    assert runtimes == {GGUF_NAME: ("reference", "llama.cpp"), "tiny-llama:q8_0": ("uniform", "llama.cpp"),
                        Q4: ("mlx", "mlx")}
    assert mlx_store.get(parse_name(Q4)).digest == before  # the stored build of these bytes was reused
    assert result.candidate(Q4).command.endswith("--to mlx --q-bits 4 --q-group-size 32 --dtype float32")
    here = recommend(detect(), use_case="completion", quality="max-compression", store=mlx_store)
    assert not any(p.measured and p.measured["runtime"] == "mlx" for p in here.local)  # never picked off a Mac
    apple_only = next(p for p in here.local if p.name.startswith("(mlx: "))
    assert Q4 in apple_only.why and "for Apple silicon" in apple_only.why
    mac = describe(kind="laptop", ram=16 << 30, cores=8, simd=None, os_name="darwin", arch="arm64")
    on_mac = recommend(mac, use_case="completion", quality="max-compression", store=mlx_store)
    measured = {p.name: p.measured for p in on_mac.local if p.measured}
    assert measured[Q4]["runtime"] == "mlx"  # the smallest measured variant, on its runtime


def test_export_hands_over_a_folder_mlx_lm_opens(mlx_home: Path, cli: Callable[..., CliResult], tmp_path: Path) -> None:
    import mlx.core as mx
    from mlx_lm import load

    store = Store.open(mlx_home / "models")
    copied = cli("export", Q4, "--format", "mlx", str(tmp_path / "q4"))
    assert copied.code == 0 and "as stored" in copied.err, copied.err
    model, tokenizer = load(str(tmp_path / "q4"))
    engine = open_engine("mlx", store.model_path(store.get(parse_name(Q4))), LoadParams(n_ctx=64))
    ids = tokenizer.encode(PROMPTS[1])
    assert np.allclose(np.array(model(mx.array(ids)[None])[0]), engine.eval_logits(ids), atol=1e-5)
    # a GGUF model is converted first, tagged after it, and reused the next time
    store.copy(parse_name(GGUF_NAME), parse_name("tiny-llama:best"))
    args = ("--format", "mlx", "--q-bits", "8", "--dtype", "float32")
    built = cli("export", "tiny-llama:best", *args, str(tmp_path / "best"))
    assert built.code == 0 and "built for this export" in built.err, built.err
    made = store.get(parse_name("tiny-llama:best-mlx-8bit-fp32"))
    assert made.source["parent"] == store.get(parse_name(GGUF_NAME)).digest
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == sorted(x.path for x in made.layers)
    again = cli("export", "tiny-llama:best", *args, str(tmp_path / "again"))
    assert again.code == 0 and "reusing it" in again.err and store.get(made.name).digest == made.digest


def test_export_refusals_leave_no_folder_and_the_store_unchanged(
    mlx_home: Path, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    store = Store.open(mlx_home / "models")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("mine")
    before = snapshot(mlx_home / "models")
    refused = cli("export", Q4, "--format", "mlx", str(tmp_path / "full"))
    assert refused.code != 0 and "is not an empty folder" in refused.err
    assert (tmp_path / "full" / "x").read_text() == "mine"
    other = cli("export", Q4, "--format", "onnx", str(tmp_path / "onnx"))
    assert other.code == 2 and f"it cannot become onnx; export its GGUF source, {GGUF_NAME}" in other.err, other.err
    assert not (tmp_path / "onnx").exists()
    blob = store.blob_path(store.get(parse_name(Q4)).layers[0].digest)
    data = blob.read_bytes()
    os.chmod(blob, 0o644)
    blob.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # a damaged store file is never handed over
    try:
        broken = cli("export", Q4, "--format", "mlx", str(tmp_path / "broken"))
        assert broken.code != 0 and "does not match its manifest" in broken.err, broken.err
        assert not (tmp_path / "broken").exists() and not list(tmp_path.glob(".broken.*"))
    finally:
        blob.write_bytes(data)
    assert snapshot(mlx_home / "models") == before


def test_mlx_variants_parse_as_their_tags_spell_them() -> None:
    recipes = parse_recipes("4bit, 8bit-g32, mixed_3_6-fp32, 4bit-fp16, bf16", dtype="float32")
    assert [r.tag for r in recipes] == ["mlx-4bit-fp32", "mlx-8bit-g32-fp32", "mlx-mixed_3_6-fp32", "mlx-4bit",
                                        "mlx-bf16"]
    assert parse_recipes("4bit-fp16")[0] == MlxRecipe(dtype="float16", bits=4)
    for bad, words in (("4bitx", "MLX variant '4bitx' is unknown"), ("7bit", "not one mlx quantizes"), ("", "no MLX")):
        with pytest.raises(InvalidParameterError, match=words):
            parse_recipes(bad)


@pytest.mark.parametrize(("system", "machine", "words"), [
    ("Linux", "aarch64", "no build for this platform (linux arm64): its wheels are for linux x86_64, darwin arm64"),
    ("Windows", "AMD64", "mlx has no build for this platform (windows amd64)"),
    ("Linux", "x86_64", "pip install 'edgeslm[mlx]'"),
])
def test_mlx_verbs_say_when_a_platform_has_no_mlx(
    mlx_home: Path, cli: Callable[..., CliResult], monkeypatch: pytest.MonkeyPatch, system: str, machine: str,
    words: str,
) -> None:
    import importlib.util
    import platform

    real_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, p=None: None if n.startswith("mlx") else real_spec(n, p))
    monkeypatch.setattr(platform, "system", lambda: system)
    monkeypatch.setattr(platform, "machine", lambda: machine)
    before = snapshot(mlx_home / "models")
    result = cli("convert", GGUF_NAME, "--to", "mlx", "--q-bits", "4")
    assert result.code == 69 and words in result.err, result.err
    assert snapshot(mlx_home / "models") == before

"""ONNX Runtime as a second runtime: folder models in the store, the build path, the engine,
evaluation across runtimes, and hostile ONNX folders. Tiny models built here (``onnxbuild``)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeslm.convert.to_onnx import Method, Precision
from edgeslm.engines.base import Engine, LoadParams, SamplingParams, open_engine
from edgeslm.errors import InvalidModelFileError, InvalidParameterError, MissingExtraError
from edgeslm.evaluate.core import EvalSettings, evaluate, load_text
from edgeslm.formats.model_format import ModelFormat
from edgeslm.store import Store, parse_name
from edgeslm.store.verify import verify_store
from tests.conftest import CliResult, snapshot
from tests.onnxbuild import GGUF_NAME, build_store, copy_folder, edit_json, private_home

pytest.importorskip("onnxruntime_genai", reason="the onnx extra is part of the README's install")

FP32, INT4 = "tiny-llama:onnx-fp32", "tiny-llama:onnx-int4"


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home with the tiny Llama as f32 GGUF and as ONNX fp32 and int4 (built once; copy to change)."""
    root = tmp_path_factory.mktemp("onnx-home")
    build_store(root, (Precision.FP32, Method.BUILDER), (Precision.INT4, Method.BUILDER))
    return root


@pytest.fixture
def onnx_home(built: Path, home: Path) -> Path:
    """A private copy of the built home as this test's EDGESLM_HOME."""
    return private_home(built, home)


@pytest.fixture
def onnx_store(onnx_home: Path) -> Store:
    return Store.open(onnx_home / "models")


# -- the store -----------------------------------------------------------------------------------


def test_folder_model_is_listed_shown_and_verified(onnx_home: Path, cli: Callable[..., CliResult]) -> None:
    listed = cli("list", "--json")
    rows = {m["name"]: m for m in json.loads(listed.out)}
    assert rows[INT4]["format"] == "onnx" and rows[INT4]["runtime"] == "onnxruntime"
    assert {"genai_config.json", "model.onnx", "model.onnx.data", "tokenizer.json"} <= set(rows[INT4]["files"])
    assert rows[INT4]["size"] == sum(rows[INT4]["files"].values())
    assert rows[GGUF_NAME]["format"] == "gguf" and rows[GGUF_NAME]["files"] is None
    assert rows[INT4]["n_params"] == rows[GGUF_NAME]["n_params"]  # the source's count, not the packed graph's
    assert (rows[INT4]["kv_bytes_per_element"], rows[GGUF_NAME]["kv_bytes_per_element"]) == (4, 2)  # F32 on ORT's CPU
    shown = cli("show", INT4)
    assert (
        shown.code == 0
        and f"built from {GGUF_NAME} (lineage below)" in shown.out
        and "onnx int4 (builder)" in shown.out
    )
    assert "onnxruntime-genai" in shown.out  # lineage: made with
    assert cli("verify").code == 0


def test_files_shared_between_folders_are_stored_once_and_freed_last(onnx_store: Store) -> None:
    fp32, int4 = onnx_store.get(parse_name(FP32)), onnx_store.get(parse_name(INT4))
    shared = set(fp32.blob_sizes()) & set(int4.blob_sizes())
    assert shared, "the tokenizer files of two builds of one model are the same bytes"
    plan = onnx_store.plan_remove([int4.name])
    assert not shared & set(plan.blobs) and plan.freed_bytes < int4.size
    onnx_store.execute_remove(plan)
    assert all(onnx_store.blob_path(d).exists() for d in fp32.blob_sizes())
    assert not any(onnx_store.blob_path(d).exists() for d in plan.blobs)
    assert verify_store(onnx_store).ok


def test_copy_then_remove_keeps_the_copy_whole(onnx_store: Store) -> None:
    onnx_store.copy(parse_name(INT4), parse_name("mine:v1"))
    onnx_store.execute_remove(onnx_store.plan_remove([parse_name(INT4)]))
    copy = onnx_store.get(parse_name("mine:v1"))
    assert copy.format is ModelFormat.ONNX and (onnx_store.model_path(copy) / "model.onnx").is_file()
    assert verify_store(onnx_store).ok


def test_view_is_rebuilt_when_damaged_and_removed_with_its_model(onnx_store: Store) -> None:
    manifest = onnx_store.get(parse_name(INT4))
    view = onnx_store.model_path(manifest)
    graph = next(x for x in manifest.layers if x.path == "model.onnx")
    assert os.path.samefile(view / "model.onnx", onnx_store.blob_path(graph.digest))  # a hard link, not a copy
    (view / "tokenizer.json").unlink()
    assert (onnx_store.model_path(manifest) / "tokenizer.json").is_file()
    onnx_store.execute_remove(onnx_store.plan_remove([manifest.name]))
    assert not view.exists()


def test_a_missing_blob_is_reported_by_verify_and_load(onnx_store: Store) -> None:
    manifest = onnx_store.get(parse_name(INT4))
    data = next(x for x in manifest.layers if x.path == "model.onnx.data")
    shutil.rmtree(onnx_store.views_dir)
    onnx_store.blob_path(data.digest).unlink()
    report = verify_store(onnx_store)
    assert any("missing" in p.detail and p.subject == INT4 for p in report.problems)
    with pytest.raises(Exception, match="missing from the store"):
        onnx_store.model_path(manifest)


@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/passwd", "a/../../b", "", "x\\y"])
def test_a_manifest_with_a_hostile_layer_path_is_unreadable(onnx_store: Store, path: str) -> None:
    file = onnx_store.manifest_path(parse_name(INT4))
    data = json.loads(file.read_bytes())
    data["layers"][0]["path"] = path
    file.write_text(json.dumps(data))
    report = verify_store(onnx_store)
    assert any("unreadable manifest" in p.detail for p in report.problems)


# -- the engine ------------------------------------------------------------------------------------


def _engines(store: Store) -> tuple[Engine, Engine]:
    params = LoadParams(n_ctx=128, n_threads=2)
    gguf = open_engine("llama.cpp", store.model_path(store.get(parse_name(GGUF_NAME))), params)
    onnx = open_engine("onnxruntime", store.model_path(store.get(parse_name(FP32))), params)
    return gguf, onnx


def test_fp32_onnx_matches_the_gguf_it_was_built_from(onnx_store: Store) -> None:
    gguf, onnx = _engines(onnx_store)
    text = "The quick brown fox, 2024: naïve café — 東京 🙂 <|im_start|>"
    tokens = gguf.tokenize(text, add_special=False, parse_special=True)
    assert onnx.tokenize(text, add_special=False, parse_special=True) == tokens
    ids = range(gguf.n_vocab)
    assert [onnx.token_bytes(t) for t in ids] == [gguf.token_bytes(t) for t in ids]
    a = gguf.eval_logits(tokens)
    b = onnx.eval_logits(tokens)
    assert a.shape == b.shape
    assert float(np.abs(a - b).max()) < 5e-3 * max(1.0, float(np.abs(a).max()))  # f32 both; kernels differ
    assert (a.argmax(-1) == b.argmax(-1)).all()
    greedy = SamplingParams(temperature=0)
    steps = list(islice(onnx.generate_tokens(tokens, greedy), 12))
    expected = list(islice(gguf.generate_tokens(tokens, greedy), 12))
    assert steps == expected


def test_a_prompt_prefilled_in_chunks_answers_as_in_one_pass(onnx_store: Store,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Prefill in chunks (what bounds the graph's all-position logits) gives the one-pass answer."""
    from edgeslm.engines.onnxruntime import engine as onnx_engine

    _, onnx = _engines(onnx_store)
    prompt = [(7 * i) % 200 + 5 for i in range(100)]
    greedy = SamplingParams(temperature=0)
    whole = list(islice(onnx.generate_tokens(prompt, greedy), 12))
    calls: list[int] = []
    real = onnx_engine.append_chunked

    def counted(generator: Any, tokens: Any, chunk: int | None = None) -> None:
        calls.append(len(tokens))
        real(generator, tokens, 16)  # 7 forward passes of at most 16 tokens

    monkeypatch.setattr(onnx_engine, "append_chunked", counted)
    assert list(islice(onnx.generate_tokens(prompt, greedy), 12)) == whole and calls == [100]


def test_sampling_is_seeded_and_respects_the_context(onnx_store: Store) -> None:
    _, onnx = _engines(onnx_store)
    sampled = SamplingParams(temperature=1.0, seed=7)
    runs = [list(islice(onnx.generate_tokens([5, 6, 7], sampled), 20)) for _ in range(2)]
    assert runs[0] == runs[1]
    assert len(list(onnx.generate_tokens([5] * 100, SamplingParams(temperature=0)))) == 128 - 100
    with pytest.raises(Exception, match="context holds"):
        list(onnx.generate_tokens([5] * 200, sampled))
    with pytest.raises(InvalidParameterError, match="grammar"):
        next(onnx.generate_tokens([5], SamplingParams(grammar='root ::= "a"')))


def test_run_and_bench_through_the_cli(onnx_home: Path, cli: Callable[..., CliResult]) -> None:
    ran = cli("run", INT4, "Hello", "--temperature", "0", "--max-tokens", "8")
    assert ran.code == 0, ran.err
    benched = cli("bench", INT4, GGUF_NAME, "-p", "16", "-n", "8", "-r", "1", "--json")
    assert benched.code == 0, benched.err
    results = {r["model"]: r for r in json.loads(benched.out)}
    assert results[INT4]["runtime"] == "onnxruntime" and results[GGUF_NAME]["runtime"] == "llama.cpp"
    assert all(t["mean_tps"] > 0 for r in results.values() for t in r["tests"])
    refused = cli("bench", INT4, "-p", "16", "-n", "8", "-r", "1", "--draft", "lookup")
    assert refused.code != 0 and "bench --draft: drafts are verified by llama.cpp; this model runs on" in refused.err


def test_plan_predicts_an_onnx_runner_with_every_slot_busy(onnx_home: Path, cli: Callable[..., CliResult]) -> None:
    """The ONNX plan: each busy slot its own F32 cache of the whole context and its buffers. Its
    constants are fitted on real models (``benchmarks/memory_plan.py --onnx``), whose fit puts part of
    what scales with a model into its base: for a tiny model the plan is an upper bound."""
    from edgeslm.config import resolve_settings
    from edgeslm.generation import resolve_model
    from edgeslm.tune import measured_peak

    shown = {slots: json.loads(cli("plan", INT4, "--ctx", "256", "--parallel", str(slots), "--json").out)
             for slots in (1, 3)}
    one, three = shown[1], shown[3]
    assert one["runtime"] == "onnxruntime" and one["kv_type"] == "f32" and one["repacked"] == 0
    assert three["kv_cache"] == 3 * one["kv_cache"] > 0 and three["compute"] == 3 * one["compute"] > 0
    model = resolve_model(INT4, resolve_settings(home=onnx_home, offline=True))
    peak = measured_peak(model, str(onnx_home), 3, 256, None, requests=3)
    assert peak <= three["total"] < peak + 200 * 2**20, (three, peak)
    refused = cli("plan", INT4, "--ctx", "256", "--kv-type", "q8_0")
    assert refused.code != 0 and "keeps its KV cache in the model's own type (f32)" in refused.err


def test_plan_ram_weighs_onnx_variants_with_the_graphs_cache(onnx_home: Path, cli: Callable[..., CliResult]) -> None:
    """plan --ram searches ONNX folders beside GGUF files: one KV choice (the graph's F32), the ONNX
    plan's memory, the KLD eval measured, and a serve command and Modelfile without a KV type."""
    for name in (INT4, FP32):
        assert cli("eval", name, "--reference", GGUF_NAME, "--ctx", "64", "--chunks", "2", "--no-speed").code == 0

    def plan(*args: str) -> dict[str, Any]:
        out = cli("plan", "--json", "--ctx", "256", *args)
        assert out.code == 0, out.err
        found: dict[str, Any] = json.loads(out.out)
        return found

    roomy = plan(INT4, "--ram", "4GB")  # a variant's name plans over its model's variants
    chosen = roomy["chosen"]  # chat: the lowest measured KLD, the fp32 build (the GGUF's own is not measured)
    assert chosen["name"] == FP32 and chosen["runtime"] == "onnxruntime" and chosen["kv"] == "f32"
    assert (FP32, "onnxruntime", "f32") in {(c["name"], c["runtime"], c["kv"]) for c in roomy["pareto"]}
    tight = plan(INT4, "--ram", str(chosen["memory"] - 1))["chosen"]
    assert tight["name"] == INT4 and tight["kld"] > chosen["kld"] and tight["kv"] == "f32"
    shown = json.loads(cli("plan", INT4, "--ctx", "256", "--json").out)
    assert tight["memory"] == shown["total"]  # the same plan as 'plan MODEL'
    assert "--kv-type" not in roomy["serve"] and "kv_type" not in roomy["modelfile"]
    over = cli("plan", INT4, "--ram", "4GB", "--ctx", "1000000")
    assert over.code != 0 and "is longer than any of these models was trained for; the longest is" in over.err


# -- evaluation across runtimes --------------------------------------------------------------------


def test_eval_an_onnx_variant_against_the_gguf_reference(onnx_store: Store) -> None:
    text, settings = load_text(None), EvalSettings(ctx=64, chunks=2, speed=False)
    exact = evaluate(onnx_store, parse_name(FP32), parse_name(GGUF_NAME), text, settings)
    int4 = evaluate(onnx_store, parse_name(INT4), parse_name(GGUF_NAME), text, settings)
    assert exact.kld_mean is not None and int4.kld_mean is not None and exact.same_top is not None
    assert exact.runtime == "onnxruntime" and exact.reference == GGUF_NAME
    assert exact.kld_mean < 1e-4 and exact.same_top > 0.99
    assert int4.kld_mean > exact.kld_mean * 10


def test_eval_refuses_a_tokenizer_whose_ids_disagree(onnx_store: Store, tmp_path: Path) -> None:
    folder = copy_folder(onnx_store, FP32, tmp_path / "swapped")
    spec = json.loads((folder / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    special = {t["content"] for t in spec["added_tokens"]}
    (a, ia), (b, ib) = [(k, v) for k, v in vocab.items() if len(k) > 2 and k not in special][:2]
    vocab[a], vocab[b] = ib, ia
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    from edgeslm.importing import import_model

    import_model(onnx_store, folder, parse_name("swapped"))
    before = snapshot(onnx_store.root / "manifests")
    with pytest.raises(InvalidParameterError, match="map 2 token ids to different bytes"):
        evaluate(
            onnx_store,
            parse_name("swapped"),
            parse_name(GGUF_NAME),
            load_text(None),
            EvalSettings(ctx=64, chunks=1, speed=False),
        )
    assert snapshot(onnx_store.root / "manifests") == before


# -- hostile folders -------------------------------------------------------------------------------


def test_the_known_domains_are_onnxruntimes() -> None:
    from onnxruntime.capi import _pybind_state

    from edgeslm.formats.onnx_folder import KNOWN_DOMAINS

    assert {kernel.domain for kernel in _pybind_state.get_all_opkernel_def()} <= KNOWN_DOMAINS


def _damage_graph_domain(folder: Path) -> None:
    import onnx

    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    model.graph.node[0].domain = "com.example.custom"
    onnx.save(model, str(folder / "model.onnx"))


def _huge_shape(folder: Path) -> None:
    import onnx

    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    model.graph.initializer[0].dims[:] = [1 << 20, 1 << 20]
    onnx.save(model, str(folder / "model.onnx"))


def _truncate(folder: Path) -> None:
    data = folder / "model.onnx.data"
    os.truncate(data, data.stat().st_size // 2)


def _symlink_out(folder: Path) -> None:
    (folder / "tokenizer_config.json").unlink()
    (folder / "tokenizer_config.json").symlink_to("/etc/passwd")


HOSTILE = {
    "no genai_config": (lambda f: (f / "genai_config.json").unlink(), "no genai_config.json"),
    "config names a parent path": (
        lambda f: edit_json(f / "genai_config.json", {"model.decoder.filename": "../../etc/passwd"}),
        "a path outside the folder",
    ),
    "config names an absolute path": (
        lambda f: edit_json(f / "genai_config.json", {"model.decoder.filename": "/etc/passwd"}),
        "a path outside the folder",
    ),
    "a symlink out": (_symlink_out, "symbolic link"),
    "missing external data": (lambda f: (f / "model.onnx.data").unlink(), "not a file inside the folder"),
    "truncated external data": (_truncate, "truncated"),
    "graph is not protobuf": (lambda f: (f / "model.onnx").write_bytes(os.urandom(4096)), "not an ONNX model"),
    "custom-op domain": (_damage_graph_domain, "com.example.custom"),
    "2^40 elements": (_huge_shape, "1,099,511,627,776 elements"),
    "config is not JSON": (lambda f: (f / "genai_config.json").write_text("{nope"), "not valid JSON"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_folder_is_refused_and_nothing_is_stored(
    case: str, onnx_home: Path, tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    damage, words = HOSTILE[case]
    store = Store.open(onnx_home / "models")
    folder = copy_folder(store, INT4, tmp_path / "bad")
    damage(folder)
    before = snapshot(onnx_home / "models")
    result = cli("import", str(folder), "--name", "bad")
    assert result.code == 65 and words in result.err, result.err
    assert snapshot(onnx_home / "models") == before


# -- the build path --------------------------------------------------------------------------------


def test_convert_refuses_an_architecture_it_cannot_build(store: Store, tmp_path: Path) -> None:
    from edgeslm.convert.to_onnx import convert_to_onnx
    from tests.ggufbuild import write_tiny_model

    store.add_file(write_tiny_model(tmp_path / "g.gguf", arch="gemma3"), parse_name("g"), source={})
    before = snapshot(store.root)
    with pytest.raises(InvalidModelFileError, match="supports llama, qwen2, qwen3"):
        convert_to_onnx(store, parse_name("g"), precision=Precision.INT4)
    assert snapshot(store.root) == before


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--precision", "int3"), "--precision 'int3' is unknown; valid: fp32, int8, int4"),
        (("--method", "olive"), "--method 'olive' is unknown"),
        (("--precision", "int4", "--method", "dynamic"), "--method dynamic makes int8 only"),
    ],
)
def test_convert_options_are_checked(
    onnx_home: Path, cli: Callable[..., CliResult], args: tuple[str, ...], words: str
) -> None:
    result = cli("convert", GGUF_NAME, "--to", "onnx", *args)
    assert result.code == 2 and words in result.err, result.err


def test_without_the_extra_onnx_verbs_say_how_to_install_it(
    onnx_home: Path, cli: Callable[..., CliResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib
    import importlib.util

    real = importlib.import_module

    def missing(name: str, package: str | None = None) -> object:
        if name.startswith("onnxruntime_genai"):
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)
        return real(name, package)

    real_spec = importlib.util.find_spec

    def no_spec(name: str, package: str | None = None) -> object:
        return None if name.startswith("onnxruntime_genai") else real_spec(name, package)

    monkeypatch.setattr(importlib, "import_module", missing)
    monkeypatch.setattr(importlib.util, "find_spec", no_spec)
    monkeypatch.setattr("edgeslm.engines.onnxruntime.engine._og", {})
    for args in (("convert", GGUF_NAME, "--to", "onnx"), ("run", INT4, "hi")):
        result = cli(*args)
        assert result.code == 69 and "pip install 'edgeslm[onnx]'" in result.err, result.err
    with pytest.raises(MissingExtraError):
        open_engine("onnxruntime", Path("."), LoadParams())


@pytest.mark.slow
def test_olive_style_variants_build_and_evaluate(onnx_store: Store) -> None:
    from edgeslm.convert.to_onnx import convert_to_onnx

    text, settings = load_text(None), EvalSettings(ctx=64, chunks=2, speed=False)
    for method in (Method.DYNAMIC, Method.STATIC):
        result = convert_to_onnx(onnx_store, parse_name(GGUF_NAME), precision=Precision.INT8, method=method)
        m = result.manifest
        assert m.name.tag == f"onnx-int8-{method.value}" and "I8" in {t.ggml_type for t in m.info.type_mix}
        assert json.loads(m.source["options"])["quantizer"].startswith(f"quantize_{method.value}")
        scored = evaluate(onnx_store, m.name, parse_name(GGUF_NAME), text, settings)
        assert 0 < scored.kld_mean < 1.0
    assert verify_store(onnx_store).ok


@pytest.mark.slow
def test_kill_9_during_a_build_publishes_nothing(onnx_home: Path) -> None:
    import signal
    import subprocess
    import time

    from edgeslm.store.atomic import is_stale
    from tests.conftest import edgeslm_command

    store = Store.open(onnx_home / "models")
    names = {str(m.name) for m in store.manifests()}
    proc = subprocess.Popen(edgeslm_command(onnx_home, "convert", GGUF_NAME, "--to", "onnx", "--precision", "int8"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(store.tmp_dir.glob("onnx-*.partial/out")):  # the builder is writing
        assert proc.poll() is None and time.monotonic() < deadline, "the build ended before it could be killed"
        time.sleep(0.01)
    work = next(store.tmp_dir.glob("onnx-*.partial"))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert {str(m.name) for m in Store.open(onnx_home / "models").manifests()} == names
    while not is_stale(work):  # the builder child holds the folder's lock until it ends
        assert time.monotonic() < deadline, "the builder child outlived its parent by minutes"
        time.sleep(0.1)
    report = verify_store(Store.open(onnx_home / "models"))
    assert report.ok and not work.exists()
    assert {str(m.name) for m in store.manifests()} == names


# -- serving ---------------------------------------------------------------------------------------


def test_the_official_clients_chat_with_an_onnx_model(onnx_home: Path) -> None:
    import concurrent.futures

    import ollama
    import openai

    from edgeslm.generation import generate, load
    from tests.servekit import serving

    messages = [{"role": "user", "content": "Tell me about the sea"}]
    model = load(FP32, ctx=256)
    try:
        expected = generate(model, messages, max_tokens=12, sampling=SamplingParams(temperature=0))
    finally:
        model.close()
    with (
        serving(onnx_home, parallel=2, ctx=256) as url,
        openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as oai,
    ):

        def ask(_: int) -> str:
            r = oai.chat.completions.create(model=FP32, messages=messages, max_tokens=12, temperature=0)  # type: ignore[arg-type]
            return r.choices[0].message.content or ""

        with concurrent.futures.ThreadPoolExecutor(2) as pool:  # both slots at once
            replies = list(pool.map(ask, range(2)))
        assert replies == [expected.text, expected.text]
        stream = oai.chat.completions.create(model=FP32, messages=messages, max_tokens=12, temperature=0, stream=True)  # type: ignore[arg-type]
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == expected.text
        oll = ollama.Client(host=url)
        try:
            reply = oll.chat(model=INT4, messages=messages, options={"num_predict": 8, "temperature": 0})
            assert reply["eval_count"] >= 1 and reply["done"]
            with pytest.raises(ollama.ResponseError, match="grammar") as refused:
                oll.chat(model=INT4, messages=messages, format="json", options={"num_predict": 4})
            assert refused.value.status_code == 400
            assert oll.chat(model=INT4, messages=messages, options={"num_predict": 4})["done"]  # the runner lives on
            shown = oll.show(INT4)
            assert shown.details is not None and shown.details.format == "onnx" and "im_start" in (shown.template or "")
            listed = {m.model: m.details.format for m in oll.list().models if m.details is not None}
            assert listed[INT4] == "onnx" and listed[GGUF_NAME] == "gguf"
        finally:
            oll._client.close()


# -- choosing --------------------------------------------------------------------------------------


def test_optimize_and_recommend_weigh_both_runtimes(onnx_store: Store, tmp_path: Path) -> None:
    from edgeslm.device import detect
    from edgeslm.formats.model_format import Runtime
    from edgeslm.formats.quant_types import parse_quant_types
    from edgeslm.optimize.core import OptimizeParams, optimize
    from edgeslm.optimize.report import write_report
    from edgeslm.recommend import recommend

    params = OptimizeParams(
        types=tuple(parse_quant_types("q8_0")), eval=EvalSettings(ctx=64, chunks=2, speed=False), mixed=False,
        runtimes=(Runtime.LLAMA_CPP, Runtime.ONNXRUNTIME), onnx=((Precision.INT4, Method.BUILDER),), tag=None,
    )
    before = onnx_store.get(parse_name(INT4)).digest
    result = optimize(onnx_store, parse_name(GGUF_NAME), load_text(None), params)
    runtimes = {c.name: c.result.runtime for c in result.candidates}
    assert runtimes == {GGUF_NAME: "llama.cpp", "tiny-llama:q8_0": "llama.cpp", INT4: "onnxruntime"}
    assert onnx_store.get(parse_name(INT4)).digest == before  # the stored build of these bytes was reused
    assert {c.kind for c in result.candidates} == {"reference", "uniform", "onnx"}
    paths = write_report(result, tmp_path / "report")
    assert "onnxruntime" in (tmp_path / "report" / "report.md").read_text() and any(p.suffix == ".png" for p in paths)
    advice = recommend(detect(), use_case="completion", quality="max-compression", store=onnx_store)
    measured = {p.name: p.measured for p in advice.local if p.measured}
    assert measured[INT4]["runtime"] == "onnxruntime"  # the smallest measured variant, on its runtime
    assert "on onnxruntime" in next(p.why for p in advice.local if p.name == INT4)


@pytest.mark.parametrize(
    "args",
    [
        ("quantize", INT4, "--type", "q4_0"),
        ("export", INT4, "--format", "hf", "OUT"),
        ("optimize", INT4, "--types", "q8_0", "--no-tag"),
    ],
)
def test_gguf_verbs_refuse_a_folder_model_naming_its_source(
    onnx_home: Path, cli: Callable[..., CliResult], tmp_path: Path, args: tuple[str, ...]
) -> None:
    before = snapshot(onnx_home / "models")
    result = cli(*(str(tmp_path / "out") if a == "OUT" else a for a in args))
    assert result.code == 2, result.err
    assert f"{INT4} is an onnx model and {args[0]} works on GGUF models; {args[0]} its GGUF source, {GGUF_NAME}" in (
        result.err
    )
    assert snapshot(onnx_home / "models") == before

"""LoRA adapters: PEFT folders converted to llama.cpp's GGUF LoRA, stored with a model built on
their base, and equal to transformers + peft logit for logit; adapters for another base refused."""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeslm.config import resolve_settings
from edgeslm.convert import convert
from edgeslm.engines.base import LoadParams
from edgeslm.engines.llamacpp.engine import LlamaCppEngine
from edgeslm.formats.kv_cache import KVCache
from edgeslm.generation import resolve_model
from edgeslm.store import Store, parse_name

from .conftest import CliResult, snapshot
from .hfbuild import write_model, write_tokenizer
from .servekit import CLIENT_TIMEOUT

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
Cli = Callable[..., CliResult]
pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.filterwarnings("ignore::UserWarning")]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "qkv_proj", "gate_up_proj"]


def make_lora(model: Any, folder: Path, *, seed: int = 1, **config: Any) -> Any:
    """A LoRA on ``model`` with random A and B (a trained adapter's B is not zero), saved to ``folder``."""
    settings = {"r": 4, "lora_alpha": 8, "target_modules": TARGETS, "lora_dropout": 0.0, **config}
    wrapped = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(**settings))  # the base stays as it was
    torch.manual_seed(seed)
    for name, p in wrapped.named_parameters():
        if "lora_" in name:
            p.data.normal_(0, 0.3)
    wrapped.save_pretrained(folder)
    return wrapped


def compare(wrapped: Any, name: str, home: Path, ids: list[int]) -> None:
    found = resolve_model(name, resolve_settings(home=home, offline=True))
    assert found.adapters, "the created model carries its adapter"
    params = LoadParams(n_ctx=256, kv=KVCache.parse("f32"), n_threads=2, adapters=found.adapters)
    engine = LlamaCppEngine(found.path, params)
    try:
        got = engine.eval_logits(ids)
    finally:
        engine.close()
    with torch.no_grad():
        ref = wrapped(torch.tensor([ids])).logits[0].float().numpy()[:, : got.shape[1]]
        with wrapped.disable_adapter():
            plain = wrapped(torch.tensor([ids])).logits[0].float().numpy()[:, : got.shape[1]]
    spread = float(ref.max() - ref.min())
    assert np.abs(ref - plain).max() > 0.05 * spread, "the adapter changes the logits"
    assert np.abs(ref - got).max() <= 1e-3 * spread
    assert (ref.argmax(axis=1) == got.argmax(axis=1)).all()


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Any]]:
    folder = tmp_path_factory.mktemp("hf") / "llama"
    yield folder, write_model(folder, "llama", write_tokenizer(folder))
    shutil.rmtree(folder, ignore_errors=True)


def _modelfile(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "Modelfile"
    path.write_text(text)
    return path


@pytest.mark.parametrize("arch", ["llama", "qwen2", "phi3"])
def test_adapter_logits_equal_peft(cli: Cli, store: Store, home: Path, tmp_path: Path, arch: str) -> None:
    """rsLoRA and a per-module alpha (folded into B), Llama's permuted Q/K, Phi-3's fused layers."""
    folder = tmp_path / arch
    model = write_model(folder, arch, write_tokenizer(folder))
    convert(store, folder, outtype="f32", name="base")
    wrapped = make_lora(model, tmp_path / "lora", use_rslora=True, alpha_pattern={"o_proj": 3.0})
    assert cli("create", "custom", "-f", str(_modelfile(tmp_path, "FROM base\nADAPTER ./lora\n"))).code == 0
    compare(wrapped, "custom", home, list(range(3, 60)))


def test_smollm2_adapter_logits_equal_peft(builtin_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           cli: Cli) -> None:
    """SmolLM2 exported to F32, a LoRA made on it with transformers + peft, converted and applied by llama.cpp."""
    home = tmp_path / "home"
    shutil.copytree(builtin_home, home, ignore=shutil.ignore_patterns("*.lock"))
    monkeypatch.setenv("EDGESLM_HOME", str(home))
    assert cli("export", "smollm2-135m-instruct", "--format", "hf", str(tmp_path / "hf")).code == 0
    assert cli("convert", str(tmp_path / "hf"), "--name", "smollm2-f32", "--outtype", "f32").code == 0
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    wrapped = make_lora(model, tmp_path / "lora", r=8, lora_alpha=16, seed=3)
    for name, p in wrapped.named_parameters():
        if "lora_B" in name:
            p.data.mul_(0.05)  # a trained adapter's size: it moves the logits, not the model's sense
    wrapped.save_pretrained(tmp_path / "lora")
    assert cli("create", "smol-lora", "-f", str(_modelfile(tmp_path, "FROM smollm2-f32\nADAPTER lora\n"))).code == 0
    compare(wrapped, "smol-lora", home, list(range(100, 400, 3)))


def test_from_a_hugging_face_folder_converts_it(cli: Cli, store: Store, tmp_path: Path,
                                               tiny_llama: tuple[Path, Any]) -> None:
    """FROM a folder converts it (under an interim name, gone afterwards), with a PEFT ADAPTER beside it."""
    folder, model = tiny_llama
    make_lora(model, tmp_path / "lora")
    text = f"FROM {folder}\nADAPTER lora\nSYSTEM hi\n"
    assert cli("create", "from-folder", "-f", str(_modelfile(tmp_path, text))).code == 0
    made = store.get(parse_name("from-folder"))
    assert made.adapters and made.source["kind"] == "convert" and made.defaults["system"] == "hi"
    assert [str(m.name) for m in store.manifests()] == ["from-folder:latest"]  # the interim name is gone
    before = snapshot(store.root)
    bad = cli("create", "broken", "-f", str(_modelfile(tmp_path, f"FROM {folder}\nADAPTER missing-model\n")))
    assert bad.code != 0 and "(line 2): ADAPTER missing-model is neither a file" in bad.err, bad.err
    assert snapshot(store.root) == before  # the converted folder went with the failed create


def test_adapters_for_another_base_are_refused(cli: Cli, store: Store, tmp_path: Path,
                                               tiny_llama: tuple[Path, Any]) -> None:
    folder, model = tiny_llama
    convert(store, folder, outtype="f32", name="base")
    other = tmp_path / "wide-hf"
    wide = write_model(other, "llama", write_tokenizer(other), hidden_size=96)
    make_lora(wide, tmp_path / "wide-lora")
    qwen = tmp_path / "qwen-hf"
    write_model(qwen, "qwen2", write_tokenizer(qwen))
    make_lora(model, tmp_path / "good")
    assert cli("create", "tuned", "-f", str(_modelfile(tmp_path, "FROM base\nADAPTER good\n"))).code == 0
    # A GGUF LoRA written by create is itself an ADAPTER for a model of the same shapes ...
    blob = store.blob_path(store.get(parse_name("tuned")).adapters[0].digest)
    shutil.copyfile(blob, tmp_path / "good.gguf")
    convert(store, other, outtype="f32", name="wide")
    convert(store, qwen, outtype="f32", name="qwen")
    (tmp_path / "prefix").mkdir()
    (tmp_path / "prefix" / "adapter_config.json").write_text(json.dumps({"peft_type": "PREFIX_TUNING"}))
    dora = tmp_path / "dora"
    shutil.copytree(tmp_path / "good", dora)
    config = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    pickled = tmp_path / "pickled"
    shutil.copytree(tmp_path / "good", pickled)
    (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")
    cases = [
        ("FROM base\n\nADAPTER wide-lora\n", "(line 3): adapter_model.safetensors: model.layers.0.mlp.down_proj"),
        ("FROM wide\nADAPTER good.gguf\n", "the adapter is for another base model (shapes differ)"),
        ("FROM qwen\nADAPTER good.gguf\n", "good.gguf is an adapter for llama models and qwen is qwen2"),
        ("FROM wide\nADAPTER tuned\n", "the adapter of tuned:latest was made for"),
        ("FROM base\nADAPTER prefix\n", "peft_type is 'PREFIX_TUNING'; only LoRA adapters convert"),
        ("FROM base\nADAPTER dora\n", "DoRA (use_dora) has no place in a llama.cpp LoRA"),
        ("FROM base\nADAPTER pickled\n", "adapter_model.bin is a pickle and is not opened"),
    ]
    for text, problem in cases:
        before = snapshot(store.root)
        result = cli("create", "bad", "-f", str(_modelfile(tmp_path, text)))
        assert result.code != 0 and problem in result.err, (text, result.err)
        assert snapshot(store.root) == before, text
    assert cli("create", "again", "-f", str(_modelfile(tmp_path, "FROM base\nADAPTER good.gguf\n"))).code == 0
    assert store.get(parse_name("again")).adapters[0].digest == store.get(parse_name("tuned")).adapters[0].digest


def test_an_adapter_follows_its_base_through_quantization(cli: Cli, store: Store, tmp_path: Path,
                                                          tiny_llama: tuple[Path, Any]) -> None:
    """A stored adapter applies to a quantized variant of its base (same family), with its own
    blob kept once; removing the models frees the adapter's blob."""
    folder, model = tiny_llama
    convert(store, folder, outtype="f32", name="base")
    make_lora(model, tmp_path / "lora")
    assert cli("create", "tuned", "-f", str(_modelfile(tmp_path, "FROM base\nADAPTER lora\n"))).code == 0
    assert cli("quantize", "base", "--type", "q8_0").code == 0
    assert cli("create", "tuned-q8", "-f", str(_modelfile(tmp_path, "FROM base:q8_0\nADAPTER tuned\n"))).code == 0
    digest = store.get(parse_name("tuned")).adapters[0].digest
    assert store.get(parse_name("tuned-q8")).adapters[0].digest == digest
    assert cli("run", "tuned-q8", "hello", "--max-tokens", "4", "--temperature", "0").code == 0
    for verb in (["quantize", "tuned", "--type", "q4_0"], ["export", "tuned", "--format", "hf", str(tmp_path / "x")]):
        refused = cli(*verb)
        assert refused.code != 0 and "would drop them: " + verb[0] + " base:latest instead" in refused.err, refused.err
    assert cli("rm", "-y", "tuned", "tuned-q8").code == 0
    assert not store.blob_path(digest).exists()


@pytest.mark.slow
def test_serve_keeps_each_adapter_set_to_its_own_runner(store: Store, home: Path, tmp_path: Path,
                                                        tiny_llama: tuple[Path, Any], cli: Cli) -> None:
    """Two adapters of one base and the base itself, served at once: each reply is the one it gets
    alone, the adapters change them, and ``ps`` shows which runner carries which adapter."""
    import threading

    import httpx

    from .servekit import serve_process

    folder, model = tiny_llama
    convert(store, folder, outtype="f32", name="base")
    for name, seed in (("a1", 1), ("a2", 2)):
        make_lora(model, tmp_path / name, seed=seed)
        assert cli("create", name, "-f", str(_modelfile(tmp_path, f"FROM base\nADAPTER {name}\n"))).code == 0
    names = ("base", "a1", "a2")

    def ask(url: str, name: str) -> str:
        body = {"model": name, "prompt": "hello world", "raw": True, "stream": False,
                "options": {"temperature": 0, "num_predict": 12}}
        return str(httpx.post(url + "/api/generate", json=body, timeout=120).json()["response"])

    with serve_process(home, "--parallel", "2", "--ctx", "256", "--max-loaded", "3", "--no-prompt-cache") as served:
        alone = {name: ask(served.url, name) for name in names}
        together: dict[str, str] = {}
        threads = [threading.Thread(target=lambda n=n: together.__setitem__(n, ask(served.url, n))) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ps = {
            m["name"]: m["adapters"] for m in httpx.get(served.url + "/api/ps", timeout=CLIENT_TIMEOUT).json()["models"]
        }
    assert together == alone
    assert len(set(alone.values())) == 3, alone  # each adapter changes the greedy text
    assert ps == {"base:latest": [], "a1:latest": ["a1"], "a2:latest": ["a2"]}

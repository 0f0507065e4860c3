"""Hugging Face checkpoints to GGUF: tiny random models of each architecture, built here with
transformers, converted, and compared with transformers logit for logit; hostile folders refused."""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeslm.convert import convert
from edgeslm.engines.base import LoadParams
from edgeslm.engines.llamacpp.engine import LlamaCppEngine
from edgeslm.errors import InvalidModelFileError
from edgeslm.formats.kv_cache import KVCache
from edgeslm.store import Store

from .conftest import CliResult, snapshot
from .fakehub import FakeHub, serve
from .hfbuild import HARD_STRINGS, write_model, write_tokenizer

torch = pytest.importorskip("torch")
ARCHS = ("llama", "qwen2", "qwen3", "gemma3", "phi3")
PROMPTS = ("The history of the city is long.", "In 1990 , 25 people lived there and 7 left .", "<|im_start|>user\nhi")
Cli = Callable[..., CliResult]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[Path, Any]]]:
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for arch in ARCHS:
        folder = root / arch
        n = write_tokenizer(folder)
        out[arch] = (folder, write_model(folder, arch, n))
    yield out
    shutil.rmtree(root, ignore_errors=True)


def engine_for(store: Store, digest: str) -> LlamaCppEngine:
    return LlamaCppEngine(store.blob_path(digest), LoadParams(n_ctx=128, kv=KVCache.parse("f32"), n_threads=2))


def hf_ids(folder: Path, text: str) -> list[int]:
    from tokenizers import Tokenizer

    return list(Tokenizer.from_file(str(folder / "tokenizer.json")).encode(text, add_special_tokens=False).ids)


@pytest.mark.parametrize("arch", ARCHS)
def test_converted_logits_equal_transformers(checkpoints: dict[str, tuple[Path, Any]], store: Store, arch: str) -> None:
    folder, model = checkpoints[arch]
    result = convert(store, folder, outtype="f32", name=f"tiny-{arch}")
    assert result.outtype == "F32" and result.pre_tokenizer == "smollm"
    e = engine_for(store, result.manifest.digest)
    try:
        for text in HARD_STRINGS:
            assert e.tokenize(text, add_special=False, parse_special=True) == hf_ids(folder, text), text
        for text in PROMPTS:
            ids = hf_ids(folder, text)
            with torch.no_grad():
                ref = model(torch.tensor([ids])).logits[0].numpy()
            got = e.eval_logits(ids)
            ref = ref[:, : got.shape[1]]  # Gemma's padded vocabulary is cut to the tokenizer's
            spread = float(ref.max() - ref.min())
            assert np.abs(ref - got).max() <= 1e-3 * spread, (arch, text)
            assert (ref.argmax(axis=1) == got.argmax(axis=1)).all(), (arch, text)
    finally:
        e.close()


@pytest.mark.parametrize("arch", ["gemma3", "llama"])
def test_sentencepiece_tokenizers(store: Store, tmp_path: Path, arch: str) -> None:
    """Gemma style (no dummy prefix): ids equal Hugging Face's GemmaTokenizer on every hard string.
    Llama 2 style (dummy prefix): ids equal SentencePiece's own, except after a special token,
    where llama.cpp puts the prefix before the text and SentencePiece before the special token
    (and transformers' LlamaTokenizer, which differs from SentencePiece on leading spaces too)."""
    import transformers as tf

    from .hfbuild import write_sentencepiece

    sp = write_sentencepiece(tmp_path / arch, dummy_prefix=arch == "llama")
    model = write_model(tmp_path / arch, arch, sp.vocab_size())
    result = convert(store, tmp_path / arch, outtype="f32", name=f"spm-{arch}")
    assert result.pre_tokenizer == "default"
    e = engine_for(store, result.manifest.digest)
    try:
        for text in HARD_STRINGS:
            got = e.tokenize(text, add_special=False, parse_special=True)
            if arch == "gemma3":
                expected = tf.GemmaTokenizer.from_pretrained(tmp_path / arch).encode(text, add_special_tokens=False)
            elif text.startswith("<|"):
                continue
            else:
                expected = sp.encode(text)
            assert got == expected, text
        ids = sp.encode(PROMPTS[1])
        with torch.no_grad():
            ref = model(torch.tensor([ids])).logits[0].numpy()
        got_logits = e.eval_logits(ids)
        ref = ref[:, : got_logits.shape[1]]
        assert np.abs(ref - got_logits).max() <= 1e-3 * float(ref.max() - ref.min())
    finally:
        e.close()


def test_output_types_lineage_and_sharded_checkpoints(
    checkpoints: dict[str, tuple[Path, Any]], store: Store, tmp_path: Path
) -> None:
    folder, model = checkpoints["llama"]
    results = {t: convert(store, folder, outtype=t, name=f"tiny:{t}") for t in ("f16", "bf16", "q8_0", "auto")}
    assert {t: r.manifest.info.file_type for t, r in results.items()} == {
        "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0", "auto": "F32"
    }
    source = results["f16"].manifest.source
    assert source["kind"] == "convert" and source["architecture"] == "LlamaForCausalLM"
    assert len(source["sha256:model.safetensors"]) == 64 and "sha256:config.json" in source
    ids = hf_ids(folder, PROMPTS[0])
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    for t, r in results.items():
        e = engine_for(store, r.manifest.digest)
        try:
            got = e.eval_logits(ids)
        finally:
            e.close()
        assert np.abs(ref - got).max() <= 0.05 * float(ref.max() - ref.min()), t
    bf16 = tmp_path / "bf16"
    model.to(torch.bfloat16).save_pretrained(bf16, max_shard_size="100KB")
    shutil.copy(folder / "tokenizer.json", bf16)
    shutil.copy(folder / "tokenizer_config.json", bf16)
    model.to(torch.float32)
    assert (bf16 / "model.safetensors.index.json").is_file() and len(list(bf16.glob("*.safetensors"))) > 2
    auto = convert(store, bf16, name="tiny:sharded")
    assert auto.outtype == "BF16" and auto.manifest.digest == results["bf16"].manifest.digest  # same bytes


def test_convert_command_and_hub_source(
    checkpoints: dict[str, tuple[Path, Any]], cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, _ = checkpoints["qwen3"]
    result = cli("convert", str(folder), "--outtype", "f16", "--name", "tiny-qwen3", "--json")
    assert result.code == 0, result.err
    out = json.loads(result.out)
    assert (out["name"], out["architecture"], out["outtype"]) == ("tiny-qwen3:latest", "Qwen3ForCausalLM", "F16")
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    with serve(FakeHub(repos={"TestOrg/Tiny-Qwen3": {**files, "pytorch_model.bin": b"pickle"}})) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        result = cli("convert", "hf.co/TestOrg/Tiny-Qwen3", "--outtype", "f16", "--json")
        assert result.code == 0, result.err
        fetched = [path for method, path, _ in hub.requests if method == "GET" and "/resolve/" in path]
    from_hub = json.loads(result.out)
    assert from_hub["name"] == "tiny-qwen3:latest" and from_hub["digest"] == out["digest"]
    assert from_hub["source"]["repo"] == "TestOrg/Tiny-Qwen3" and not any(p.endswith(".bin") for p in fetched)
    offline = cli("--offline", "convert", "hf.co/TestOrg/Tiny-Qwen3")
    assert offline.code == 69 and "offline" in offline.err


def broken(folder: Path, tmp_path: Path, case: str) -> Path:
    bad = tmp_path / case
    shutil.copytree(folder, bad)
    weights = bad / "model.safetensors"
    config = json.loads((bad / "config.json").read_text())
    if case == "no config":
        (bad / "config.json").unlink()
    elif case == "unsupported architecture":
        (bad / "config.json").write_text(json.dumps({**config, "architectures": ["MambaForCausalLM"]}))
    elif case == "missing shard":
        (bad / "model.safetensors.index.json").write_text(json.dumps(
            {"weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors"}}))
    elif case == "truncated shard":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif case == "shape disagrees with config":
        (bad / "config.json").write_text(json.dumps({**config, "intermediate_size": 96}))
    elif case == "tokenizer.json not JSON":
        (bad / "tokenizer.json").write_text("{not json")
    elif case == "header length past the end":
        data = weights.read_bytes()
        weights.write_bytes(struct.pack("<Q", len(data) * 2) + data[8:])
    return bad


BAD = {
    "no config": "no config.json",
    "unsupported architecture": "MambaForCausalLM is not supported; supported: BertModel, Gemma3ForCausalLM, "
                                "LlamaForCausalLM",
    "missing shard": "names the shard model-00001-of-00002.safetensors, which is not in",
    "truncated shard": "truncated",
    "shape disagrees with config": "has shape [128, 64] but config.json implies [96, 64]",
    "tokenizer.json not JSON": "tokenizer.json is not valid JSON",
    "header length past the end": "its header claims",
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_checkpoints_are_refused_and_nothing_is_stored(
    checkpoints: dict[str, tuple[Path, Any]], store: Store, cli: Cli, tmp_path: Path, case: str
) -> None:
    before = snapshot(store.root)
    bad = broken(checkpoints["llama"][0], tmp_path, case)
    with pytest.raises(InvalidModelFileError, match=BAD[case].replace("[", r"\[").replace("]", r"\]")):
        convert(store, bad, name="bad")
    result = cli("convert", str(bad), "--name", "bad")
    assert result.code == 65 and "Error:" in result.err and "Traceback" not in result.err
    assert snapshot(store.root) == before


@pytest.mark.real_model
def test_smollm2_exported_to_hugging_face_and_converted_back(builtin_home: Path, home: Path, cli: Cli) -> None:
    """The builtin Q4_1 SmolLM2 -> HF folder (float32, what its quantized weights hold) that transformers
    loads and whose tokenizer gives llama.cpp's ids; converted back, logits exact in float32 and within
    llama.cpp's activation quantization of the original; quantized again, the original tensors bit for
    bit, so the same greedy text."""
    import transformers as tf

    from edgeslm.engines.base import SamplingParams
    from edgeslm.generation import generate, load

    shutil.copytree(builtin_home, home, dirs_exist_ok=True)
    out = home.parent / "smollm2-hf"
    assert cli("export", "smollm2-135m-instruct", "--format", "hf", str(out)).code == 0
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}
    assert cli("export", "smollm2-135m-instruct", "--format", "hf", str(out)).code == 73  # not empty: refused
    tok = tf.AutoTokenizer.from_pretrained(out)
    model = tf.AutoModelForCausalLM.from_pretrained(out).eval()
    result = cli("convert", str(out), "--name", "smollm2-roundtrip", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["pre_tokenizer"] == "smollm"
    store = Store.open(home / "models")
    original = engine_for(store, store.get(parse("smollm2-135m-instruct")).digest)
    back = engine_for(store, store.get(parse("smollm2-roundtrip")).digest)
    try:
        for text in HARD_STRINGS:
            assert original.tokenize(text, add_special=False) == tok.encode(text, add_special_tokens=False), text
        ids = tok.encode("The capital of France is Paris. The capital of Italy is", add_special_tokens=False)
        with torch.no_grad():
            ref = model(torch.tensor([ids])).logits[0].numpy()
        exact, quantized = back.eval_logits(ids), original.eval_logits(ids)
        spread = float(ref.max() - ref.min())
        assert np.abs(exact - ref).max() <= 1e-4 * spread  # the round trip is exact in float32
        assert np.abs(quantized - exact).max() <= 0.05 * spread  # llama.cpp's Q4_1 kernels quantize activations
        assert (quantized.argmax(axis=1) == exact.argmax(axis=1)).all()
    finally:
        original.close()
        back.close()
    # Quantized again with llama.cpp's own recipe for Q4_1, every tensor is the original's, bit for bit.
    assert cli("quantize", "smollm2-roundtrip", "--type", "q4_1", "--allow-requantize").code == 0
    import gguf

    tensors = {}
    for name in ("smollm2-135m-instruct", "smollm2-roundtrip:q4_1"):
        reader = gguf.GGUFReader(store.blob_path(store.get(parse(name)).digest))
        tensors[name] = {t.name: (t.tensor_type, np.asarray(t.data).tobytes()) for t in reader.tensors}
    assert tensors["smollm2-135m-instruct"] == tensors["smollm2-roundtrip:q4_1"]
    greedy, texts = SamplingParams(temperature=0), []
    for name in ("smollm2-135m-instruct", "smollm2-roundtrip:q4_1"):
        m = load(name, ctx=256)
        try:
            chat = [{"role": "user", "content": "What is the capital of France?"}]
            texts.append(generate(m, chat, sampling=greedy, max_tokens=32).text)
        finally:
            m.close()
    assert texts[0] == texts[1] and texts[0]


def parse(name: str) -> Any:
    from edgeslm.store import parse_name

    return parse_name(name)

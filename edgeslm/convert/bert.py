"""BERT sentence-embedding models (a sentence-transformers folder) as llama.cpp's ``bert`` reads them.

What llama.cpp's converter writes for ``BertModel``: layer-norm epsilon, non-causal attention, the
pooling of the folder's sentence-transformers ``Pooling`` module (``modules.json`` →
``1_Pooling/config.json``: mean, CLS or last token), the token-type count, and the WordPiece
vocabulary in llama.cpp's "phantom space" form (a word-initial piece gets ``▁``, a ``##``
continuation loses its marks, control tokens stay as they are). The pooler and the masked-LM head
are not written: only the embeddings are served. sentence-transformers' ``Normalize`` module needs
nothing in the file: every embedding edgeslm returns is L2-normalised.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import gguf

from ..errors import InvalidModelFileError
from .hf import Checkpoint, read_json, read_json_list
from .hparams import Hparams

log = logging.getLogger(__name__)
SKIPPED = frozenset({"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"})
SKIPPED_PREFIXES = ("cls.predictions", "cls.seq_relationship")
MODULE_PATH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}\Z")  # one folder inside the model's
POOLING = {  # sentence-transformers' pooling flags, in the order its Pooling module checks them
    "pooling_mode_mean_tokens": gguf.PoolingType.MEAN,
    "pooling_mode_cls_token": gguf.PoolingType.CLS,
    "pooling_mode_lasttoken": gguf.PoolingType.LAST,
}
POOLING_MODES = {"mean": gguf.PoolingType.MEAN, "cls": gguf.PoolingType.CLS, "lasttoken": gguf.PoolingType.LAST}


def rename(name: str) -> str | None:
    """The checkpoint name as llama.cpp's tensor map knows it, or None for a tensor not written."""
    name = name.removeprefix("bert.")
    if name.endswith(".gamma"):
        name = name[: -len(".gamma")] + ".weight"
    elif name.endswith(".beta"):
        name = name[: -len(".beta")] + ".bias"
    if name in SKIPPED or name.startswith(SKIPPED_PREFIXES):
        return None
    return name


def pooling(folder: Path) -> gguf.PoolingType | None:
    """The pooling of the folder's sentence-transformers Pooling module; None without modules.json."""
    if not (folder / "modules.json").is_file():
        log.warning("%s has no modules.json: the pooling is not written (llama.cpp then pools by mean)", folder.name)
        return None
    path = next((m.get("path") for m in read_json_list(folder / "modules.json", "sentence-transformers modules")
                 if isinstance(m, dict) and str(m.get("type", "")).endswith("Pooling")), None)
    if path is None:
        return None
    if not isinstance(path, str) or not MODULE_PATH.match(path):
        raise InvalidModelFileError(f"modules.json names the pooling folder {str(path)[:80]!r}, not a folder name")
    config = read_json(folder / path / "config.json", "the Pooling module's configuration")
    found = next((kind for flag, kind in POOLING.items() if config.get(flag) is True), None)
    found = found or POOLING_MODES.get(str(config.get("pooling_mode")))
    if found is None:
        raise InvalidModelFileError(f"{path}/config.json asks for a pooling llama.cpp does not have "
                                    "(it pools by mean, CLS token or last token)")
    return found


def add_metadata(w: gguf.GGUFWriter, hp: Hparams, ckpt: Checkpoint) -> None:
    """BERT's keys after the dimensions every architecture writes (``arch.add_metadata``)."""
    w.add_layer_norm_eps(hp.eps)
    w.add_causal_attention(False)
    kind = pooling(ckpt.folder)
    if kind is not None:
        w.add_pooling_type(kind)
    w.add_token_type_count(_type_vocab(hp.config))


def _type_vocab(config: dict[str, Any]) -> int:
    n = config.get("type_vocab_size", 1)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 16:
        raise InvalidModelFileError(f"config.json: type_vocab_size must be 1 to 16, not {str(n)[:20]!r}")
    return n


def shapes(hp: Hparams) -> tuple[dict[str, tuple[int, ...]], tuple[str, ...]]:
    """The shapes config.json implies, by checkpoint name; and the tensors that must be there."""
    d = hp.n_embd
    out: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (hp.n_vocab, d),
        "embeddings.position_embeddings.weight": (hp.n_ctx, d),
        "embeddings.token_type_embeddings.weight": (_type_vocab(hp.config), d),
    }
    for i in range(hp.n_layer):
        p = f"encoder.layer.{i}."
        out |= {p + f"attention.self.{x}.weight": (d, d) for x in ("query", "key", "value")}
        out |= {p + "attention.output.dense.weight": (d, d), p + "intermediate.dense.weight": (hp.n_ff, d),
                p + "output.dense.weight": (d, hp.n_ff)}
    return out, ("embeddings.word_embeddings.weight", f"encoder.layer.{hp.n_layer - 1}.output.dense.weight")


def add_vocab(w: gguf.GGUFWriter, ckpt: Checkpoint, n_vocab: int) -> tuple[str, int]:
    """The WordPiece vocabulary as llama.cpp's converter writes it; returns the pre-tokenizer's name."""
    spec = read_json(ckpt.tokenizer_json, "a Hugging Face tokenizer") if ckpt.tokenizer_json else {}
    model = spec.get("model") or {}
    if model.get("type") != "WordPiece" or not isinstance(model.get("vocab"), dict):
        raise InvalidModelFileError("a BERT model needs a WordPiece tokenizer.json (model.type WordPiece)")
    from tokenizers import Tokenizer

    from .vocab import pre_tokenizer

    assert ckpt.tokenizer_json is not None
    try:
        tok = Tokenizer.from_file(str(ckpt.tokenizer_json))
    except Exception as exc:  # the Rust library raises plain exceptions on files it cannot use
        raise InvalidModelFileError(f"tokenizer.json cannot be loaded: {str(exc)[:200]}") from None
    vocab = {i: t for t, i in tok.get_vocab(with_added_tokens=True).items()}
    if len(vocab) != n_vocab or set(vocab) != set(range(n_vocab)):
        raise InvalidModelFileError(f"the tokenizer has {len(vocab):,} tokens but the model's vocab_size is "
                                    f"{n_vocab:,}; they do not belong together")
    special = {i for i, t in tok.get_added_tokens_decoder().items() if t.special}
    T = gguf.TokenType
    types = [int(T.CONTROL if i in special else T.NORMAL) for i in range(n_vocab)]
    tokens = [vocab[i] if i in special else vocab[i][2:] if vocab[i].startswith("##") else "\u2581" + vocab[i]
              for i in range(n_vocab)]
    pre = pre_tokenizer(tok, spec)
    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    for key, value in _normalizer(spec.get("normalizer") or {}).items():
        w.add_bool(f"tokenizer.ggml.normalizer.{key}", value)
    gguf.SpecialVocab(ckpt.folder, n_vocab=n_vocab).add_to_gguf(w, quiet=True)
    return pre, n_vocab


def _normalizer(normalizer: dict[str, Any]) -> dict[str, bool]:
    """The BertNormalizer's lowercase and strip_accents where tokenizer.json states them (a cased model
    says lowercase false: llama.cpp lowercases unless told not to), as llama.cpp's gguf-py reads them."""
    kind, out = normalizer.get("type"), {}
    if kind == "Lowercase":
        out["lowercase"] = True
    elif kind == "StripAccents":
        out["strip_accents"] = True
    elif kind == "BertNormalizer":
        out |= {k: bool(normalizer[k]) for k in ("lowercase", "strip_accents")
                if isinstance(normalizer.get(k), bool)}
    elif kind == "Sequence":
        for part in normalizer.get("normalizers") or []:
            out |= _normalizer(part) if isinstance(part, dict) else {}
    return out

"""Tokenizers into GGUF: byte-level BPE from ``tokenizer.json`` (vocabulary, merges, added and
special tokens, and llama.cpp's pre-tokenizer identity). gguf-py's ``SpecialVocab`` writes the
merges, special token ids, add-BOS/EOS flags and chat template, as llama.cpp's converter does."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import gguf

from ..errors import InvalidModelFileError
from .hf import Checkpoint
from .pre_tokenizers import CHECK_TEXT, PRE_BY_HASH

log = logging.getLogger(__name__)


def add_vocab(w: gguf.GGUFWriter, ckpt: Checkpoint, n_vocab: int, *, truncate: bool) -> tuple[str, int]:
    """Write the tokenizer; return llama.cpp's pre-tokenizer name and the vocabulary size written
    (the model's, padded with unused tokens; or, with ``truncate``, the tokenizer's own)."""
    if ckpt.tokenizer_json is None:
        what = "tokenizer.model (SentencePiece) is not supported yet" if ckpt.tokenizer_model else "no tokenizer"
        raise InvalidModelFileError(f"{ckpt.folder}: {what}; a byte-level BPE tokenizer.json is needed")
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(ckpt.tokenizer_json))
    except Exception as exc:  # the Rust library raises plain exceptions on files it cannot use
        raise InvalidModelFileError(f"tokenizer.json cannot be loaded: {str(exc)[:200]}") from None
    spec = json.loads(ckpt.tokenizer_json.read_text(encoding="utf-8"))
    if (spec.get("model") or {}).get("type") != "BPE":
        raise InvalidModelFileError("tokenizer.json is not a BPE tokenizer; only byte-level BPE converts for now")
    pre = pre_tokenizer(tok, spec)
    if truncate:
        n_vocab = min(n_vocab, len(tok.get_vocab(with_added_tokens=True)))
    tokens, types = _tokens(tok, n_vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    special = gguf.SpecialVocab(ckpt.folder, load_merges=True, n_vocab=len(tokens))
    special.add_to_gguf(w, quiet=True)
    return pre, n_vocab


def _tokens(tok: Any, n_vocab: int) -> tuple[list[str], list[int]]:
    vocab = {i: t for t, i in tok.get_vocab(with_added_tokens=True).items()}
    added = tok.get_added_tokens_decoder()
    if len(vocab) > n_vocab:
        raise InvalidModelFileError(
            f"the tokenizer has {len(vocab):,} tokens but the model's vocab_size is {n_vocab:,}; "
            "they do not belong together"
        )
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in vocab:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(vocab[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(vocab[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, [int(t) for t in types]


def pre_tokenizer(tok: Any, spec: dict[str, Any]) -> str:
    """llama.cpp's name for this tokenizer's pre-tokenizer: by the hash llama.cpp's converter uses,
    else by the structure of the ``pre_tokenizer`` (what tokenizers built from these recipes use)."""
    ids = tok.encode(CHECK_TEXT).ids
    digest = hashlib.sha256(str(ids).encode()).hexdigest()
    if digest in PRE_BY_HASH:
        return PRE_BY_HASH[digest]
    name = _by_structure(spec.get("pre_tokenizer") or {})
    if name is None:
        raise InvalidModelFileError(
            f"the tokenizer's pre-tokenizer is not one llama.cpp knows (hash {digest[:16]}...); "
            "its text would be split differently than in the original model"
        )
    log.info("pre-tokenizer identified by its structure as %s", name)
    return name


def _by_structure(pre: dict[str, Any]) -> str | None:
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    kinds = [(s.get("type"), s) for s in steps or []]
    byte_level = [s for k, s in kinds if k == "ByteLevel"]
    if [k for k, _ in kinds] == ["ByteLevel"] and byte_level[0].get("use_regex", True):
        return "gpt-2"
    if [k for k, _ in kinds] == ["Digits", "ByteLevel"] and kinds[0][1].get("individual_digits"):
        return "smollm"
    return None

"""Tokenizers into GGUF, as llama.cpp's converter writes them: SentencePiece from
``tokenizer.model`` when the folder has one (Gemma, Llama 2, Phi-3: pieces, scores, piece types,
added tokens), else byte-level BPE from ``tokenizer.json`` (vocabulary, added and special tokens,
and llama.cpp's pre-tokenizer identity). gguf-py's ``SpecialVocab`` writes merges, special
token ids, add-BOS/EOS flags and the chat template."""

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


def add_vocab(
    w: gguf.GGUFWriter, ckpt: Checkpoint, n_vocab: int, *, truncate: bool, space_prefix: bool | None = None
) -> tuple[str, int]:
    """Write the tokenizer; return llama.cpp's pre-tokenizer name and the vocabulary size written
    (the model's, padded with unused tokens; or, with ``truncate``, the tokenizer's own)."""
    if ckpt.tokenizer_model is not None:
        return _add_sentencepiece(w, ckpt, n_vocab, truncate=truncate, space_prefix=space_prefix)
    if ckpt.tokenizer_json is None:
        raise InvalidModelFileError(f"{ckpt.folder} has no tokenizer: tokenizer.json or tokenizer.model is needed")
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
    tok.no_truncation()  # a tokenizer.json may truncate (all-MiniLM-L6-v2's, at 128): the check text is longer
    tok.no_padding()
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
    if [k for k, _ in kinds] == ["BertPreTokenizer"]:
        return "default"  # llama.cpp's WordPiece tokenizer splits words its own (BERT's) way
    return None


def _add_sentencepiece(
    w: gguf.GGUFWriter, ckpt: Checkpoint, n_vocab: int, *, truncate: bool, space_prefix: bool | None
) -> tuple[str, int]:
    from sentencepiece import SentencePieceProcessor

    assert ckpt.tokenizer_model is not None
    sp = SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(ckpt.tokenizer_model))
    except (OSError, RuntimeError) as exc:
        raise InvalidModelFileError(f"tokenizer.model is not a SentencePiece model ({str(exc)[:120]})") from None
    n_vocab = min(n_vocab, sp.vocab_size()) if truncate else n_vocab
    if sp.vocab_size() > n_vocab:
        raise InvalidModelFileError(f"tokenizer.model has {sp.vocab_size():,} pieces but vocab_size is {n_vocab:,}")
    T = gguf.TokenType
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    scores, types = [-10000.0] * n_vocab, [int(T.UNUSED)] * n_vocab
    for i in range(sp.vocab_size()):
        kind = (T.UNKNOWN if sp.IsUnknown(i) else T.CONTROL if sp.IsControl(i) else T.UNUSED if sp.IsUnused(i)
                else T.BYTE if sp.IsByte(i) else T.NORMAL)
        tokens[i], scores[i], types[i] = sp.IdToPiece(i), float(sp.GetScore(i)), int(kind)
    for i, content, special in _added_tokens(ckpt):
        if i < n_vocab:
            tokens[i], scores[i] = content if special else content.replace("\u2581", " "), -1000.0
            types[i] = int(T.CONTROL if special else T.USER_DEFINED)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    if space_prefix is None:
        space_prefix = ckpt.tokenizer_config.get("add_prefix_space")
    if space_prefix is not None:
        w.add_add_space_prefix(bool(space_prefix))
    gguf.SpecialVocab(ckpt.folder, n_vocab=n_vocab).add_to_gguf(w, quiet=True)
    return "default", n_vocab


def _added_tokens(ckpt: Checkpoint) -> list[tuple[int, str, bool]]:
    """(id, text, special) of tokens added to a SentencePiece model (added_tokens.json, tokenizer_config)."""
    found: dict[int, tuple[str, bool]] = {}
    path = ckpt.folder / "added_tokens.json"
    if path.is_file():
        from .hf import read_json

        for text, i in read_json(path, "added tokens").items():
            if isinstance(i, int):
                found[i] = (str(text), False)
    for key, data in (ckpt.tokenizer_config.get("added_tokens_decoder") or {}).items():
        if str(key).isdigit() and isinstance(data, dict) and isinstance(data.get("content"), str):
            found[int(key)] = (data["content"], bool(data.get("special")))
    return [(i, text, special) for i, (text, special) in sorted(found.items())]

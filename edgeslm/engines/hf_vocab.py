"""A Hugging Face ``tokenizer.json`` as edgeslm's engines see a vocabulary: ids <-> bytes.

onnxruntime-genai and mlx-lm tokenize with the same file; here the ``tokenizers`` library reads it, so
every id maps to its exact bytes (byte-level BPE's unicode alphabet undone, SentencePiece's
'▁' and ``<0xXX>`` byte pieces decoded), as llama.cpp's ``llama_token_to_piece`` does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from ..errors import ContextOverflowError, InvalidModelFileError, InvalidParameterError
from ..formats.folder_files import chat_template_of

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>\Z")
MAX_TOKENIZER_BYTES = 64 << 20


@cache
def _unicode_to_byte() -> dict[str, int]:
    """GPT-2's reversible byte <-> printable character table, inverted."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return {c: b for b, c in enumerate(chars)}


def _is_byte_level(spec: Any) -> bool:
    if not isinstance(spec, dict):
        return False
    if spec.get("type") == "ByteLevel":
        return True
    return any(_is_byte_level(s) for s in spec.get("decoders", []) or [])


class Vocab:
    def __init__(self, folder: Path) -> None:
        from tokenizers import Tokenizer

        path = folder / "tokenizer.json"
        if path.stat().st_size > MAX_TOKENIZER_BYTES:
            raise InvalidModelFileError(f"{path} is over {MAX_TOKENIZER_BYTES >> 20} MiB; not a tokenizer")
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
            self._tok = Tokenizer.from_str(json.dumps(spec))
        except Exception as exc:  # the tokenizers library raises its own Exception type
            raise InvalidModelFileError(f"{path} is not a tokenizer the tokenizers library can read ({exc})") from None
        self._byte_level = _is_byte_level(spec.get("decoder"))
        self._special = {int(t["id"]) for t in spec.get("added_tokens") or [] if t.get("special")}
        self.size = self._tok.get_vocab_size(with_added_tokens=True)
        self._pieces: dict[int, bytes] = {}

    def encode(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        self._tok.encode_special_tokens = not parse_special
        return list(self._tok.encode(text, add_special_tokens=add_special).ids)

    def token_text(self, token: int) -> str | None:
        return self._tok.id_to_token(token)

    def token_bytes(self, token: int, *, special: bool = False) -> bytes:
        """The bytes ``token`` stands for; a special (control) token is empty unless ``special``."""
        if token in self._special:
            return (self.token_text(token) or "").encode() if special else b""
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self._decode_piece(self.token_text(token) or "")
        return piece

    def _decode_piece(self, text: str) -> bytes:
        if self._byte_level:
            table = _unicode_to_byte()
            try:
                return bytes(table[c] for c in text)
            except KeyError:  # an added token written in plain text
                return text.encode()
        if m := _BYTE_PIECE.match(text):
            return bytes([int(m.group(1), 16)])
        return text.replace("▁", " ").encode()


class FolderVocabEngine:
    """The vocabulary half of an engine over a model folder (ONNX, MLX): ids and bytes from
    ``tokenizer.json``, end tokens and BOS from the model's config, the folder's chat template."""

    def __init__(self, folder: Path, config: dict[str, Any], *, context: object, n_ctx: int) -> None:
        self.folder = folder
        self.vocab = Vocab(folder)
        vocab_size = config.get("vocab_size")
        self.n_vocab = int(vocab_size) if isinstance(vocab_size, int) else self.vocab.size
        self.n_ctx = min(n_ctx, context) if isinstance(context, int) and context > 0 else n_ctx
        eos = config.get("eos_token_id", [])
        self._eos = {int(t) for t in (eos if isinstance(eos, list) else [eos]) if isinstance(t, int)}
        self._bos = config.get("bos_token_id")

    # -- vocabulary ---------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        return self.vocab.encode(text, add_special=add_special, parse_special=parse_special)

    def token_bytes(self, token: int, *, special: bool = False) -> bytes:
        return self.vocab.token_bytes(token, special=special)

    def is_end_of_generation(self, token: int) -> bool:
        return token in self._eos

    def chat_template(self) -> str | None:
        return chat_template_of(self.folder)

    def bos_text(self) -> str:
        return self._special_text(self._bos)

    def eos_text(self) -> str:
        return self._special_text(min(self._eos) if self._eos else None)

    def _special_text(self, token: object) -> str:
        return self.vocab.token_text(token) or "" if isinstance(token, int) else ""

    def _check_fits(self, tokens: Sequence[int]) -> None:
        if not tokens:
            raise InvalidParameterError("there is nothing to evaluate: the prompt has no tokens")
        if len(tokens) >= self.n_ctx:
            raise ContextOverflowError(
                f"the prompt has {len(tokens):,} tokens but the context holds {self.n_ctx:,}; "
                "shorten it or load with a larger context (n_ctx)",
                params="n_ctx",
            )
        bad = [t for t in tokens if not 0 <= t < self.n_vocab]
        if bad:
            raise InvalidParameterError(f"token id {bad[0]} is outside the vocabulary (0 to {self.n_vocab - 1})")

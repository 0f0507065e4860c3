"""A Hugging Face ``tokenizer.json`` as edgeslm's engines see a vocabulary: ids <-> bytes.

onnxruntime-genai tokenizes with the same file; here the ``tokenizers`` library reads it, so
every id maps to its exact bytes (byte-level BPE's unicode alphabet undone, SentencePiece's
'▁' and ``<0xXX>`` byte pieces decoded), as llama.cpp's ``llama_token_to_piece`` does.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

from ..errors import InvalidModelFileError

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

    def token_id(self, text: str) -> int | None:
        return self._tok.token_to_id(text)

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

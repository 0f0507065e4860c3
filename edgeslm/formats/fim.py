"""Fill-in-the-middle tokens as llama.cpp finds them in a GGUF: named by
``tokenizer.ggml.fim_{pre,suf,mid}_token_id``, or, where the file names none, by their texts
(llama.cpp's ``llama-vocab.cpp``): a format fact the server reads from the header to say a model
takes ``suffix`` (Ollama's ``insert`` capability) without loading it."""

from __future__ import annotations

import struct

from .gguf_header import GGUFHeader

MAX_METADATA = 64 * 2**20  # bytes of a file's metadata searched for the token texts

# the texts llama.cpp's vocabulary loader takes as FIM tokens when the GGUF names none (llama-vocab.cpp)
FIM_TEXTS = {
    "pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
            "<|code_prefix|>", "<|prefix|>"),
    "suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
            "<|code_suffix|>", "<|suffix|>"),
    "mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
            "<|code_middle|>", "<|middle|>"),
}


def has_fim(header: GGUFHeader) -> bool:
    """Whether llama.cpp finds the three FIM tokens in a GGUF: named in its metadata, or among its token
    texts (the header keeps no long arrays: the metadata's bytes are searched for each text as the
    tokens array stores it, a little-endian u64 length then the UTF-8)."""
    if all(f"tokenizer.ggml.fim_{k}_token_id" in header.metadata for k in FIM_TEXTS):
        return True
    with open(header.path, "rb") as fp:
        metadata = fp.read(min(header.data_offset, MAX_METADATA))

    def stored(text: str) -> bytes:
        raw = text.encode()
        return struct.pack("<Q", len(raw)) + raw

    return all(any(stored(t) in metadata for t in texts) for texts in FIM_TEXTS.values())

"""Byte-level GGUF builders for tests: valid tiny models and precisely broken ones."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from gguf import GGUFWriter
from gguf.constants import GGMLQuantizationType, GGUFValueType


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def u64(v: int) -> bytes:
    return struct.pack("<Q", v)


def gstr(s: str | bytes, length: int | None = None) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return u64(len(raw) if length is None else length) + raw


def kv_u32(key: str, value: int) -> bytes:
    return gstr(key) + u32(GGUFValueType.UINT32) + u32(value)


def kv_str(key: str, value: str) -> bytes:
    return gstr(key) + u32(GGUFValueType.STRING) + gstr(value)


def kv_array(key: str, elem_type: int, count: int, payload: bytes = b"") -> bytes:
    return gstr(key) + u32(GGUFValueType.ARRAY) + u32(elem_type) + u64(count) + payload


def tensor_info(name: str, dims: list[int], ggml_type: int = GGMLQuantizationType.F32, offset: int = 0) -> bytes:
    return gstr(name) + u32(len(dims)) + b"".join(u64(d) for d in dims) + u32(ggml_type) + u64(offset)


ARCH = kv_str("general.architecture", "llama")


def gguf_bytes(
    kvs: list[bytes],
    tensors: list[bytes],
    data: bytes = b"",
    *,
    version: int = 3,
    magic: bytes = b"GGUF",
    n_kv: int | None = None,
    n_tensors: int | None = None,
    alignment: int = 32,
) -> bytes:
    head = magic + u32(version) + u64(len(tensors) if n_tensors is None else n_tensors)
    head += u64(len(kvs) if n_kv is None else n_kv) + b"".join(kvs) + b"".join(tensors)
    if data:
        head += b"\0" * (-len(head) % alignment)
    return head + data


def one_tensor_model(n: int = 64) -> bytes:
    """The smallest valid model: an architecture and one F32 tensor of ``n`` elements."""
    return gguf_bytes([ARCH], [tensor_info("token_embd.weight", [n])], b"\1" * (4 * n))


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def write_tiny_model(
    path: Path,
    *,
    arch: str = "llama",
    n_embd: int = 64,
    n_layer: int = 2,
    n_vocab: int = 128,
    seed: int = 0,
    chat_template: str | None = "{{ messages }}",
    extra: dict[str, str | int] | None = None,
    ternary: bool = False,
) -> Path:
    """A llama-shaped model with random F32/F16 weights, written by gguf-py's own writer."""
    rng = np.random.default_rng(seed)
    w = GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}")
    w.add_context_length(256)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(2 * n_embd)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(1)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(n_vocab)])
    if chat_template:
        w.add_chat_template(chat_template)
    for key, value in (extra or {}).items():
        if isinstance(value, int):
            w.add_uint32(key, value)
        else:
            w.add_string(key, value)
    w.add_tensor("token_embd.weight", rng.standard_normal((n_vocab, n_embd), dtype=np.float32).astype(np.float16))
    for layer in range(n_layer):
        w.add_tensor(f"blk.{layer}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        if ternary:  # BitNet-style: {-a, 0, +a} with one scale per matrix
            weights = (0.25 * rng.integers(-1, 2, size=(n_embd, n_embd))).astype(np.float16)
        else:
            weights = rng.standard_normal((n_embd, n_embd)).astype(np.float16)
        w.add_tensor(f"blk.{layer}.attn_q.weight", weights)
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _byte_tokens() -> list[str]:
    """GPT-2's byte-to-unicode table: one token per byte, so any ASCII text tokenizes."""
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def write_runnable_model(
    path: Path,
    *,
    n_embd: int = 64,
    n_layer: int = 2,
    n_ff: int = 256,
    seed: int = 0,
    scale: float = 0.15,
    chat_template: str | None = None,
    specials: dict[str, int] | None = None,
) -> Path:
    """A complete llama model (byte vocabulary, random F16 weights) that llama.cpp loads and runs.
    ffn_down's rows are ``n_ff`` long, so with n_ff=256 it takes K-quants; the rest takes 32-blocks.
    ``specials``: added tokens and their types (3 control, 4 user-defined), as a family's markers."""
    rng = np.random.default_rng(seed)
    n_head, n_head_kv = 4, 2
    n_kv = n_embd // n_head * n_head_kv
    added = dict(specials or {})
    tokens = [*_byte_tokens(), "<s>", "</s>", "th", *added]  # one merge: llama.cpp needs a merges list
    w = GGUFWriter(str(path), "llama")
    w.add_name("tiny-runnable")
    if chat_template is not None:
        w.add_chat_template(chat_template)
    w.add_context_length(512)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(1)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([1] * 256 + [3, 3, 1, *added.values()])
    w.add_token_merges(["t h"])
    w.add_bos_token_id(256)
    w.add_eos_token_id(257)
    w.add_add_bos_token(True)

    def mat(rows: int, cols: int) -> np.ndarray:
        return (scale * rng.standard_normal((rows, cols))).astype(np.float16)

    w.add_tensor("token_embd.weight", (0.3 * rng.standard_normal((len(tokens), n_embd))).astype(np.float16))
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(f"blk.{i}.attn_q.weight", mat(n_embd, n_embd))
        w.add_tensor(f"blk.{i}.attn_k.weight", mat(n_kv, n_embd))
        w.add_tensor(f"blk.{i}.attn_v.weight", mat(n_kv, n_embd))
        w.add_tensor(f"blk.{i}.attn_output.weight", mat(n_embd, n_embd))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", mat(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_up.weight", mat(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_down.weight", mat(n_embd, n_ff))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_lora(path: Path, base: Path, *, rank: int = 2, seed: int = 0, arch: str = "llama") -> Path:
    """A GGUF LoRA (llama.cpp's adapter format) for every attention Q weight of the model at ``base``."""
    from edgeslm.formats.gguf_header import read_gguf_header

    rng = np.random.default_rng(seed)
    w = GGUFWriter(str(path), arch)
    w.add_type("adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", float(rank))
    for t in read_gguf_header(base).tensors:
        if t.name.endswith("attn_q.weight"):
            n_in, n_out = t.shape[0], t.shape[1]
            w.add_tensor(t.name + ".lora_a", rng.standard_normal((rank, n_in)).astype(np.float32))
            w.add_tensor(t.name + ".lora_b", rng.standard_normal((n_out, rank)).astype(np.float32) * 0.1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path

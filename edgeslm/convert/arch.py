"""What each supported architecture needs, written the way llama.cpp's loader expects it.

One ``Arch`` per Hugging Face architecture: llama.cpp's architecture and what is special about
it. Llama's Q/K rows are permuted to llama.cpp's rotary layout (interleaved pairs); Qwen2's QKV
biases and Qwen3's per-head Q/K norms are ordinary tensors; Gemma 3 stores RMSNorm weights minus
one (``x * (1 + w)``), so 1 is added, its padded vocabulary is cut to the tokenizer's, its
sliding-window layers and their own rope base are written, and llama.cpp scales attention by
1/sqrt(head_dim) whatever ``query_pre_attn_scalar`` says; Phi-3's fused QKV and gate-up
projections stay fused, with a partial rotary dimension and LongRoPE factor tensors when the
checkpoint has them. BERT (``bert``) is an encoder: its metadata, tensor names, shapes and
WordPiece vocabulary are its own. Tensor names go through gguf-py's ``TensorNameMap``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import gguf
import numpy as np
import numpy.typing as npt

from ..errors import InvalidModelFileError
from . import bert
from .hf import Checkpoint
from .hparams import Hparams

F32 = npt.NDArray[np.float32]
Transform = Callable[[F32], F32]
SKIP_SUFFIXES = (".rotary_emb.inv_freq", ".attn.masked_bias", ".attn.bias")


@dataclass(frozen=True)
class Arch:
    hf: str
    gguf: gguf.MODEL_ARCH
    permute_qk: bool = False  # Llama checkpoints rotate halves; llama.cpp's kernel rotates pairs
    norm_shift: float = 0.0  # Gemma: norms are stored minus one
    truncate_vocab: bool = False  # Gemma: the embedding is cut to the tokenizer (others pad the vocabulary)
    space_prefix: bool | None = None  # SentencePiece: add a space before the text (None: as the tokenizer says)
    metadata: Callable[[Any, Hparams, Checkpoint], None] | None = None  # (GGUFWriter, Hparams, Checkpoint)
    encoder: bool = False  # BERT: bidirectional attention, pooled embeddings, no rope (``bert``)


def _gemma3(w: gguf.GGUFWriter, hp: Hparams, ckpt: Checkpoint) -> None:
    c = hp.config
    w.add_key_length(hp.head_dim)
    w.add_value_length(hp.head_dim)
    if c.get("final_logit_softcapping"):
        w.add_final_logit_softcapping(float(c["final_logit_softcapping"]))
    if c.get("attn_logit_softcapping"):
        raise InvalidModelFileError("attention logit softcapping is not in llama.cpp's gemma3; this is not Gemma 3")
    if c.get("sliding_window"):
        w.add_sliding_window(int(c["sliding_window"]))
        layer_types = c.get("layer_types")
        if isinstance(layer_types, list) and len(layer_types) == hp.n_layer:
            w.add_sliding_window_pattern([t == "sliding_attention" for t in layer_types])
        if hp.rope_swa_theta is not None:
            w.add_rope_freq_base_swa(hp.rope_swa_theta)


def _phi3(w: gguf.GGUFWriter, hp: Hparams, ckpt: Checkpoint) -> None:
    w.add_sliding_window(int(hp.config.get("sliding_window") or 0))  # 0 tells Phi-4 from Phi-3
    original = hp.rope.get("original_max_position_embeddings") or hp.config.get("original_max_position_embeddings")
    if original:
        w.add_rope_scaling_orig_ctx_len(int(original))


ARCHS: dict[str, Arch] = {
    a.hf: a
    for a in (
        Arch("LlamaForCausalLM", gguf.MODEL_ARCH.LLAMA, permute_qk=True),
        Arch("Qwen2ForCausalLM", gguf.MODEL_ARCH.QWEN2),
        Arch("Qwen3ForCausalLM", gguf.MODEL_ARCH.QWEN3),
        Arch(
            "Gemma3ForCausalLM",
            gguf.MODEL_ARCH.GEMMA3,
            norm_shift=1.0,
            truncate_vocab=True,
            space_prefix=False,
            metadata=_gemma3,
        ),
        Arch("Phi3ForCausalLM", gguf.MODEL_ARCH.PHI3, metadata=_phi3),
        Arch("BertModel", gguf.MODEL_ARCH.BERT, metadata=bert.add_metadata, encoder=True),
    )
}


def arch_of(ckpt: Checkpoint) -> Arch:
    arch = ARCHS.get(ckpt.architecture)
    if arch is None:
        raise InvalidModelFileError(
            f"architecture {ckpt.architecture[:80]} is not supported; supported: {', '.join(sorted(ARCHS))}"
        )
    return arch


def add_metadata(w: gguf.GGUFWriter, arch: Arch, hp: Hparams, ckpt: Checkpoint) -> None:
    w.add_context_length(hp.n_ctx)
    w.add_embedding_length(hp.n_embd)
    w.add_block_count(hp.n_layer)
    w.add_feed_forward_length(hp.n_ff)
    w.add_head_count(hp.n_head)
    if arch.encoder:  # BERT: its own keys (no rope, no KV heads of its own)
        assert arch.metadata is not None
        return arch.metadata(w, hp, ckpt)
    w.add_head_count_kv(hp.n_head_kv)
    w.add_layer_norm_rms_eps(hp.eps)
    w.add_rope_freq_base(hp.rope_theta)
    w.add_vocab_size(hp.n_vocab)
    rotary = float(hp.rope.get("partial_rotary_factor", 1.0))
    w.add_rope_dimension_count(int(rotary * hp.head_dim))
    if ("head_dim" in hp.config or hp.head_dim != hp.n_embd // hp.n_head) and arch.metadata is not _gemma3:
        # written whenever the config states it, as llama.cpp's converter does
        w.add_key_length(hp.head_dim)
        w.add_value_length(hp.head_dim)
    kind = hp.rope_type
    if kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(hp.rope["factor"]))
    elif kind in ("su", "longrope"):
        w.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)
    elif kind not in ("default", "llama3"):
        raise InvalidModelFileError(f"rope type {kind[:40]!r} is not supported yet (default, linear, llama3, longrope)")
    if arch.metadata is not None:
        arch.metadata(w, hp, ckpt)


def tensors(ckpt: Checkpoint, arch: Arch, hp: Hparams, n_vocab: int) -> Iterator[tuple[str, str, Transform | None]]:
    """(GGUF name, checkpoint name, transform) for every tensor to write, in checkpoint order."""
    names = gguf.get_tensor_name_map(arch.gguf, hp.n_layer)
    for name in ckpt.shards:
        if name.endswith(SKIP_SUFFIXES) or (hp.tied and name == "lm_head.weight"):
            continue
        known = bert.rename(name) if arch.encoder else name
        if known is None:
            continue  # BERT's pooler and masked-LM head: only the embeddings are served
        mapped = names.get_name(known, try_suffixes=(".weight", ".bias"))
        if mapped is None:
            raise InvalidModelFileError(f"tensor {name[:100]} has no place in llama.cpp's {arch.gguf.name.lower()}")
        yield mapped, name, _transform(arch, hp, mapped, n_vocab)


def _transform(arch: Arch, hp: Hparams, mapped: str, n_vocab: int) -> Transform | None:
    if arch.permute_qk and mapped.endswith(("attn_q.weight", "attn_q.bias")):
        return lambda w: to_rope_pairs(w, hp.n_head)
    if arch.permute_qk and mapped.endswith(("attn_k.weight", "attn_k.bias")):
        return lambda w: to_rope_pairs(w, hp.n_head_kv)
    if arch.norm_shift and mapped.endswith("norm.weight"):
        return lambda w: w + np.float32(arch.norm_shift)
    if mapped in ("token_embd.weight", "output.weight") and n_vocab < hp.n_vocab:
        return lambda w: w[:n_vocab]  # a vocabulary padded past the tokenizer (Gemma)
    return None


def to_rope_pairs(w: F32, n_head: int) -> F32:
    """Rows of each head from [first halves; second halves] to interleaved pairs (llama.cpp's RoPE)."""
    return np.ascontiguousarray(
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    )


def extra_tensors(arch: Arch, hp: Hparams) -> Iterator[tuple[str, F32]]:
    """Tensors llama.cpp needs that the checkpoint does not hold: Llama 3's rope frequency factors,
    Phi-3's LongRoPE long and short factors."""
    if hp.rope_type == "llama3":
        yield gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", _llama3_factors(hp)
    elif hp.rope_type in ("su", "longrope") and hp.rope.get("long_factor"):
        long, short = hp.rope["long_factor"], hp.rope.get("short_factor") or []
        half = int(float(hp.rope.get("partial_rotary_factor", 1.0)) * hp.head_dim) // 2
        if len(long) != half or len(short) != half:
            raise InvalidModelFileError(f"rope long/short factors must have {half} values each")
        yield gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FACTORS_LONG] + ".weight", np.asarray(long, dtype=np.float32)
        yield gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT] + ".weight", np.asarray(short, dtype=np.float32)


def _llama3_factors(hp: Hparams) -> F32:
    r = hp.rope
    factor = float(r.get("factor", 8.0))
    low, high = float(r.get("low_freq_factor", 1.0)), float(r.get("high_freq_factor", 4.0))
    old = float(r.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / (hp.rope_theta ** (np.arange(0, hp.head_dim, 2, dtype=np.float64) / hp.head_dim))
    factors = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < old / high:
            factors.append(1.0)
        elif wavelen > old / low:
            factors.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)

"""A checkpoint's dimensions as its ``config.json`` states them, checked: what every architecture reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import DEFAULT_CONTEXT
from ..errors import InvalidModelFileError
from .hf import Checkpoint


@dataclass(frozen=True)
class Hparams:
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ctx: int
    n_vocab: int
    eps: float
    rope: dict[str, Any]  # the full-attention rope parameters (rope_theta, rope_type, factor, ...)
    rope_swa_theta: float | None
    tied: bool
    config: dict[str, Any]

    @property
    def rope_theta(self) -> float:
        return float(self.rope.get("rope_theta", 10000.0))

    @property
    def rope_type(self) -> str:
        return str(self.rope.get("rope_type") or self.rope.get("type") or "default").lower()


def hparams(ckpt: Checkpoint) -> Hparams:
    c = ckpt.config

    def need(key: str) -> int:
        value = c.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise InvalidModelFileError(f"config.json: {key} must be a positive integer, not {str(value)[:40]!r}")
        return value

    n_embd, n_head = need("hidden_size"), need("num_attention_heads")
    rope_all = c.get("rope_parameters") or c.get("rope_scaling") or {}
    rope = dict(rope_all.get("full_attention", rope_all))
    rope.setdefault("rope_theta", c.get("rope_theta", 10000.0))
    swa = (rope_all.get("sliding_attention") or {}).get("rope_theta") or c.get("rope_local_base_freq")
    for key in ("partial_rotary_factor", "original_max_position_embeddings"):
        if key in c and key not in rope:
            rope[key] = c[key]
    return Hparams(
        n_layer=need("num_hidden_layers"), n_embd=n_embd, n_ff=need("intermediate_size"), n_head=n_head,
        n_head_kv=c.get("num_key_value_heads") or n_head, head_dim=int(c.get("head_dim") or n_embd // n_head),
        n_ctx=int(c.get("max_position_embeddings") or DEFAULT_CONTEXT), n_vocab=need("vocab_size"),
        eps=float(c.get("rms_norm_eps", c.get("layer_norm_eps", 1e-6))), rope=rope,
        rope_swa_theta=float(swa) if swa else None, tied=bool(c.get("tie_word_embeddings", False)), config=c,
    )

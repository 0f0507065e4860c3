"""What a model is, from its GGUF header alone: architecture, size, type mix, memory to run.

Nothing here reads tensor data; everything comes from the validated header
(``gguf_header.read_gguf_header``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..errors import InvalidParameterError
from .kv_cache import KVCache
from .size_class import SizeClass, classify

if TYPE_CHECKING:  # gguf-py loads numpy and more: not needed to read stored info ('edgeslm list')
    from gguf.constants import GGMLQuantizationType

    from .gguf_header import GGUFHeader, MetaValue

# llama.cpp marks every n-th layer as full attention and the others as sliding-window
# (``hparams.set_swa_pattern`` in llama-model.cpp); only those archs are listed here.
SWA_PATTERNS: dict[str, int] = {"gemma2": 2, "gemma3": 6, "cohere2": 4}
KV_BYTES_PER_ELEMENT = 2  # llama.cpp's default KV cache type is F16
DEFAULT_UBATCH = 512  # llama.cpp's n_ubatch; the SWA cache holds n_swa + n_ubatch cells
KV_CELL_PADDING = 256

_TEXT_KEYS = ("name", "basename", "size_label", "organization", "finetune", "license", "type")


@dataclass(frozen=True)
class TypeShare:
    """Parameters and bytes held in one ggml tensor type."""

    ggml_type: str
    n_params: int
    n_bytes: int
    n_tensors: int


# llama.cpp's architectures that only embed (an encoder, no causal head): no chat, no generation
EMBEDDING_ONLY = frozenset({"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "modern-bert", "neo-bert"})


@dataclass(frozen=True)
class ModelInfo:
    architecture: str
    n_params: int
    size_class: SizeClass
    size_class_label: str
    file_size: int
    tensor_bytes: int
    bits_per_weight: float
    file_type: str | None  # what general.file_type claims, e.g. "Q4_K_M"
    type_mix: tuple[TypeShare, ...]  # largest share of parameters first
    context_length: int | None
    embedding_length: int | None
    block_count: int | None
    head_count: int | None
    head_count_kv: int | None
    key_length: int | None
    value_length: int | None
    sliding_window: int | None
    vocab_size: int | None
    tokenizer_model: str | None
    has_chat_template: bool
    general: Mapping[str, str]  # name, basename, license, ... as the file states them
    gguf_version: int
    n_tensors: int
    kv_bytes_per_element: int = KV_BYTES_PER_ELEMENT  # the runtime's KV cache type: F16 (llama.cpp), F32 (ORT CPU)

    @property
    def embedding_only(self) -> bool:
        """An encoder (BERT): it embeds text and cannot generate."""
        return self.architecture in EMBEDDING_ONLY

    def check_generates(self, name: str) -> None:
        """Refuse to chat with or generate from an embedding model, naming what it can do."""
        if self.embedding_only:
            raise InvalidParameterError(
                f"{name} is an embedding model ({self.architecture}): it cannot chat or generate text; "
                "embed with it ('edgeslm embed', /api/embed, /v1/embeddings), or name a chat model")

    def check_has_logits(self, name: str) -> None:
        """Refuse a measure of next-token distributions (KLD, perplexity, tok/s) on an embedding model."""
        if self.embedding_only:
            raise InvalidParameterError(
                f"{name} is an embedding model ({self.architecture}): it has no next-token distribution to compare "
                f"or generate from; measure it with 'edgeslm eval {name} --task retrieval' (recall@5 and MRR)")

    @property
    def stored_values(self) -> int:
        return max(sum(s.n_params for s in self.type_mix), 1)

    @property
    def main_type(self) -> str | None:
        return self.type_mix[0].ggml_type if self.type_mix else None

    def type_mix_summary(self, limit: int = 3) -> str:
        """'Q4_1 79%, Q8_0 21%' by share of the stored values (a graph with an untied output layer
        stores more values than the model has parameters)."""
        total = self.stored_values
        parts = [f"{s.ggml_type} {100 * s.n_params / total:.0f}%" for s in self.type_mix[:limit]]
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["size_class"] = self.size_class.value
        data["type_mix"] = [asdict(s) for s in self.type_mix]
        data["general"] = dict(self.general)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelInfo:
        fields = dict(data)
        fields["size_class"] = SizeClass(fields["size_class"])
        fields["type_mix"] = tuple(TypeShare(**s) for s in fields["type_mix"])
        fields["general"] = dict(fields["general"])
        return cls(**fields)


@dataclass(frozen=True)
class MemoryEstimate:
    context_length: int
    weights_bytes: int
    kv_cache_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes


def _int(value: MetaValue) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _per_layer_max(value: MetaValue) -> int | None:
    from .gguf_header import ArrayValue

    """head_count(_kv) may be one number or one per layer (e.g. OpenELM); report the largest."""
    if isinstance(value, ArrayValue) and value.items:
        ints = [v for v in value.items if isinstance(v, int) and not isinstance(v, bool)]
        return max(ints) if ints else None
    return _int(value)


def _str(value: MetaValue) -> str | None:
    return value if isinstance(value, str) else None


def file_type_name(value: MetaValue) -> str | None:
    """general.file_type as llama.cpp names it ('Q4_K_M'), or None when absent or unknown."""
    from gguf.constants import LlamaFileType

    code = _int(value)
    if code is None:
        return None
    try:
        name = LlamaFileType(code).name
    except ValueError:
        return f"unknown ({code})"
    return "F32" if name == "ALL_F32" else name.removeprefix("MOSTLY_")


def type_mix(header: GGUFHeader) -> tuple[TypeShare, ...]:
    shares: dict[GGMLQuantizationType, list[int]] = {}
    for t in header.tensors:
        entry = shares.setdefault(t.ggml_type, [0, 0, 0])
        entry[0] += t.n_elements
        entry[1] += t.n_bytes
        entry[2] += 1
    ordered = sorted(shares.items(), key=lambda kv: (-kv[1][0], kv[0].name))
    return tuple(TypeShare(k.name, v[0], v[1], v[2]) for k, v in ordered)


def model_info(header: GGUFHeader) -> ModelInfo:
    from .gguf_header import ArrayValue

    """Summarize a validated header. Parameters are counted per stored tensor, so tied
    embeddings (no separate output.weight) count once, as llama.cpp's loader sees them."""
    meta = header.metadata
    arch = _str(meta.get("general.architecture")) or "unknown"

    def arch_key(name: str) -> MetaValue:
        return meta.get(f"{arch}.{name}")

    n_params = sum(t.n_elements for t in header.tensors)
    tensor_bytes = sum(t.n_bytes for t in header.tensors)
    size_info = classify(n_params)
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = tokens.count if isinstance(tokens, ArrayValue) else _int(arch_key("vocab_size"))
    general = {k: v for k in _TEXT_KEYS if (v := _str(meta.get(f"general.{k}"))) is not None}
    return ModelInfo(
        architecture=arch,
        n_params=n_params,
        size_class=size_info.size_class,
        size_class_label=size_info.label,
        file_size=header.file_size,
        tensor_bytes=tensor_bytes,
        bits_per_weight=round(8 * tensor_bytes / n_params, 4) if n_params else 0.0,
        file_type=file_type_name(meta.get("general.file_type")),
        type_mix=type_mix(header),
        context_length=_int(arch_key("context_length")),
        embedding_length=_int(arch_key("embedding_length")),
        block_count=_int(arch_key("block_count")),
        head_count=_per_layer_max(arch_key("attention.head_count")),
        head_count_kv=_per_layer_max(arch_key("attention.head_count_kv")),
        key_length=_int(arch_key("attention.key_length")),
        value_length=_int(arch_key("attention.value_length")),
        sliding_window=_int(arch_key("attention.sliding_window")),
        vocab_size=vocab,
        tokenizer_model=_str(meta.get("tokenizer.ggml.model")),
        has_chat_template="tokenizer.chat_template" in meta,
        general=general,
        gguf_version=header.version,
        n_tensors=len(header.tensors),
    )


def _pad(n: int, to: int) -> int:
    return n + (-n % to)


def estimate_memory(info: ModelInfo, context_length: int, kv: KVCache | None = None) -> MemoryEstimate:
    """Weights plus a KV cache (``kv``'s types on llama.cpp; None: F16, or the runtime's type) at
    ``context_length``, from the model's dimensions.

    Per layer the cache holds ``cells x n_head_kv x (key_length + value_length)`` elements,
    where sliding-window layers keep only ``n_swa + n_ubatch`` cells (llama.cpp's
    ``llama_kv_cache_iswa``). Compute buffers are not included.
    """
    if context_length <= 0:
        raise ValueError(f"context length must be positive, got {context_length}")
    layers, heads = info.block_count, info.head_count
    if not layers or not heads or not info.embedding_length:
        return MemoryEstimate(context_length, info.tensor_bytes, 0)
    n_kv = info.head_count_kv or heads
    k_len = info.key_length or info.embedding_length // heads
    v_len = info.value_length or info.embedding_length // heads
    per_cell = kv.bytes_per_cell(n_kv, k_len, v_len) if kv else n_kv * (k_len + v_len) * info.kv_bytes_per_element
    full_cells = _pad(context_length, KV_CELL_PADDING)
    pattern = SWA_PATTERNS.get(info.architecture)
    total_cells = 0
    for layer in range(layers):
        sliding = info.sliding_window and pattern and layer % pattern < pattern - 1
        if sliding:
            total_cells += min(full_cells, _pad(info.sliding_window + DEFAULT_UBATCH, KV_CELL_PADDING))  # type: ignore[operator]
        else:
            total_cells += full_cells
    return MemoryEstimate(context_length, info.tensor_bytes, math.ceil(total_cells * per_cell))

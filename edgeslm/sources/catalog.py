"""A curated catalogue of the model families the seed names, as data.

Facts come from each model's Hugging Face model card (parameter count, context length,
licence) or, for the builtins, from the GGUF file itself. A field we could not source is
left empty (None) rather than guessed. ``gguf_repo`` is a GGUF repository that llama.cpp can
load, where one is published by the model's authors or a widely used converter.

``recommended_quant`` applies the seed's rules of thumb: Q5_1 is its balanced default for
ordinary models (Q4_0 when size matters most, Q8_0 for near-original quality), and the
ternary types for models trained ternary (BitNet b1.58). ``edgeslm optimize`` replaces
these rules with measurements.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..formats.model_info import EMBEDDING_ONLY
from ..formats.size_class import SizeClass, classify
from .pinned import PinnedModel, pinned_models

# Bits per weight of the seed's recommended types, from ggml's block sizes
# (gguf.constants.GGML_QUANT_SIZES): Q5_1 = 24 bytes / 32 weights, TQ2_0 = 66 / 256.
SEED_ADVICE = {
    "max-compression": "Q4_0",
    "balanced": "Q5_1",
    "near-original": "Q8_0",
    "ternary": "TQ2_0",
}
RUNTIME_OVERHEAD = 1.2  # "fits in N GB": weights x 1.2 for KV cache and buffers at modest context


@dataclass(frozen=True)
class CatalogEntry:
    name: str  # the name 'edgeslm pull' accepts
    family: str
    hf_repo: str  # the original checkpoint
    gguf_repo: str | None
    n_params: int | None  # as the model card states it (rounded there)
    licence: str | None
    context_length: int | None
    recommended_quant: str
    builtin: str | None = None  # the builtin model of the same weights, if any
    note: str = ""
    pinned: bool = False  # its file is pinned to exact bytes (sources/pinned.py), with mirrors

    @property
    def embedding_only(self) -> bool:
        """A sentence-embedding model (an encoder): it embeds text and cannot chat."""
        return self.family in EMBEDDING_ONLY

    @property
    def size_class(self) -> SizeClass | None:
        return classify(self.n_params).size_class if self.n_params is not None else None

    def estimated_bytes(self) -> int | None:
        """Weights at the recommended quantization plus runtime overhead."""
        if self.n_params is None:
            return None
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

        # a file type such as Q4_K_M is mostly its base block type (Q4_K)
        base = self.recommended_quant.removesuffix("_M").removesuffix("_S").removesuffix("_L")
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType[base]]
        return int(self.n_params * size / block * RUNTIME_OVERHEAD)


def _e(
    name: str,
    family: str,
    repo: str,
    gguf: str | None,
    params: int | None,
    licence: str | None,
    ctx: int | None,
    quant: str = SEED_ADVICE["balanced"],
    **kw: Any,
) -> CatalogEntry:
    return CatalogEntry(name, family, repo, gguf, params, licence, ctx, quant, **kw)


CATALOG: tuple[CatalogEntry, ...] = (
    _e(
        "smollm2-135m-instruct",
        "smollm2",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "unsloth/SmolLM2-135M-Instruct-GGUF",
        134_515_008,
        "apache-2.0",
        8_192,
        builtin="smollm2-135m-instruct",
    ),
    _e(
        "smollm2-360m-instruct",
        "smollm2",
        "HuggingFaceTB/SmolLM2-360M-Instruct",
        None,
        360_000_000,
        "apache-2.0",
        8_192,
    ),
    _e(
        "smollm2-1.7b-instruct",
        "smollm2",
        "HuggingFaceTB/SmolLM2-1.7B-Instruct",
        None,
        1_700_000_000,
        "apache-2.0",
        8_192,
    ),
    _e("qwen3-0.6b", "qwen3", "Qwen/Qwen3-0.6B", "Qwen/Qwen3-0.6B-GGUF", 600_000_000, "apache-2.0", 32_768),
    _e("qwen3-1.7b", "qwen3", "Qwen/Qwen3-1.7B", "Qwen/Qwen3-1.7B-GGUF", 1_700_000_000, "apache-2.0", 32_768),
    _e(
        "qwen3-4b",
        "qwen3",
        "Qwen/Qwen3-4B",
        "Qwen/Qwen3-4B-GGUF",
        4_000_000_000,
        "apache-2.0",
        32_768,
        note="131,072 tokens with YaRN rope scaling",
    ),
    _e(
        "qwen3-8b",
        "qwen3",
        "Qwen/Qwen3-8B",
        "Qwen/Qwen3-8B-GGUF",
        8_200_000_000,
        "apache-2.0",
        32_768,
        note="131,072 tokens with YaRN rope scaling",
    ),
    _e(
        "gemma3-270m",
        "gemma3",
        "google/gemma-3-270m",
        None,
        268_098_176,
        "gemma",
        32_768,
        builtin="gemma3-270m",
        note="base model (no chat template)",
    ),
    _e(
        "gemma3-1b-it",
        "gemma3",
        "google/gemma-3-1b-it",
        "google/gemma-3-1b-it-qat-q4_0-gguf",
        1_000_000_000,
        "gemma",
        32_768,
        note="gated: accept the licence on Hugging Face and set HF_TOKEN",
    ),
    _e(
        "gemma3-4b-it",
        "gemma3",
        "google/gemma-3-4b-it",
        "google/gemma-3-4b-it-qat-q4_0-gguf",
        4_000_000_000,
        "gemma",
        131_072,
        note="gated: accept the licence on Hugging Face and set HF_TOKEN",
    ),
    _e("phi4-mini-instruct", "phi4", "microsoft/Phi-4-mini-instruct", None, 3_800_000_000, "mit", 131_072),
    _e(
        "llama3-8b-instruct",
        "llama3",
        "meta-llama/Meta-Llama-3-8B-Instruct",
        None,
        8_000_000_000,
        "llama3",
        8_192,
        note="gated: accept the licence on Hugging Face and set HF_TOKEN",
    ),
    _e(
        "bitnet-b1.58-2b-4t",
        "bitnet",
        "microsoft/bitnet-b1.58-2B-4T",
        "microsoft/bitnet-b1.58-2B-4T-gguf",
        2_000_000_000,
        "mit",
        4_096,
        quant=SEED_ADVICE["ternary"],
        note="ternary-trained; the published GGUF uses bitnet.cpp's I2_S type, which llama.cpp does not load",
    ),
)


def _from_pinned(m: PinnedModel) -> CatalogEntry:
    return CatalogEntry(
        m.name, m.family, m.checkpoint, m.upstream.repo, m.n_params, m.licence, m.context_length,
        m.quantization, note=m.note, pinned=True,
    )


CATALOG += tuple(_from_pinned(m) for m in pinned_models().values())
CATALOG_BY_NAME = {e.name: e for e in CATALOG}


def filter_catalog(
    entries: Iterable[CatalogEntry] = CATALOG,
    *,
    size_class: SizeClass | None = None,
    licence: str | None = None,
    max_params: int | None = None,
    fits_bytes: int | None = None,
    family: str | None = None,
) -> list[CatalogEntry]:
    """Entries that meet every given filter; an entry with an unknown field fails that filter."""
    out = []
    for e in entries:
        if size_class is not None and e.size_class != size_class:
            continue
        if licence is not None and (e.licence or "").lower() != licence.lower():
            continue
        if family is not None and e.family != family.lower():
            continue
        if max_params is not None and (e.n_params is None or e.n_params > max_params):
            continue
        estimate = e.estimated_bytes()
        if fits_bytes is not None and (estimate is None or estimate > fits_bytes):
            continue
        out.append(e)
    return out

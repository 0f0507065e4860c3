"""Are a model's weights ternary? TQ1_0/TQ2_0 only make sense for models trained that way.

BitNet b1.58 and TriLM store each weight matrix as {-a, 0, +a} times one scale per tensor
(or per block, once quantized). We sample a few rows of up to a dozen weight matrices,
dequantize them with gguf-py, and measure how much of their signal a ternary code keeps:
ternarize each block of 256 (TQ's block) with its best scale and take the relative RMS
error. Ternary-trained weights come back (almost) exactly; ordinary ones lose ~30-50 %.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

from .gguf_header import GGUFHeader, TensorInfo

BLOCK = 256
MAX_TENSORS = 12
ROWS_PER_TENSOR = 4
TERNARY_ERROR = 0.05  # relative RMS error below which weights count as ternary


@dataclass(frozen=True)
class TernaryReport:
    ternary: bool
    relative_error: float  # RMS(ternarized - w) / RMS(w) over the sampled rows
    tensors_checked: int


def _weight_matrices(header: GGUFHeader) -> list[TensorInfo]:
    skip = ("token_embd", "output.weight", "norm")
    return [
        t
        for t in header.tensors
        if len(t.shape) >= 2 and t.name.endswith(".weight") and not any(s in t.name for s in skip)
    ]


def _rows(path: Path, t: TensorInfo) -> npt.NDArray[np.float32]:
    block, size = GGML_QUANT_SIZES[t.ggml_type]
    row_bytes = t.shape[0] // block * size
    n_rows = min(ROWS_PER_TENSOR, t.n_elements // t.shape[0])
    with open(path, "rb") as fp:
        fp.seek(t.offset)
        raw = np.frombuffer(fp.read(row_bytes * n_rows), dtype=np.uint8).reshape(n_rows, row_bytes)
    return np.asarray(dequantize(raw, t.ggml_type), dtype=np.float32).reshape(-1)


def _ternarize(w: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Best ternary code per block: threshold at half the mean |w|, scale = mean |w| of the kept."""
    usable = len(w) // BLOCK * BLOCK or len(w)
    blocks = w[:usable].reshape(-1, min(BLOCK, usable))
    mags = np.abs(blocks)
    keep = mags > 0.5 * mags.mean(axis=1, keepdims=True)
    scale = (mags * keep).sum(axis=1, keepdims=True) / np.maximum(keep.sum(axis=1, keepdims=True), 1)
    return np.asarray((np.sign(blocks) * keep * scale).reshape(-1), dtype=np.float32)


def check_ternary(path: Path, header: GGUFHeader) -> TernaryReport:
    tensors = _weight_matrices(header)
    if any(t.ggml_type.name in ("TQ1_0", "TQ2_0") for t in tensors):
        return TernaryReport(True, 0.0, len(tensors))
    picked = tensors[:: max(1, len(tensors) // MAX_TENSORS)][:MAX_TENSORS]
    if not picked:
        return TernaryReport(False, 1.0, 0)
    err = total = 0.0
    for t in picked:
        w = _rows(path, t)
        usable = len(w) // BLOCK * BLOCK or len(w)
        w = w[:usable]
        err += float(np.sum((_ternarize(w) - w) ** 2, dtype=np.float64))
        total += float(np.sum(w.astype(np.float64) ** 2))
    relative = (err / total) ** 0.5 if total > 0 else 0.0
    return TernaryReport(relative < TERNARY_ERROR, relative, len(picked))

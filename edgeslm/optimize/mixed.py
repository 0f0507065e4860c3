"""Mixed precision for a size budget: a ggml type per tensor, chosen by measured sensitivity.

The plan is a multiple-choice knapsack. Every tensor llama.cpp would quantize is an item; its
options are the types whose block fits its rows; an option's weight is its exact byte count
and its value the KL-divergence it is predicted to add (``sensitivity.py``: measured KLD per
unit of relative weight error, times that type's relative error on this tensor's own
weights, measured with ggml's quantizer). Dynamic programming over the budget picks the
least total predicted KLD; a greedy pass then spends the bytes the DP's rounding left over.
The file is built by llama.cpp's quantizer with one ``--tensor-type`` override per type.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from ..errors import InvalidParameterError
from ..formats.gguf_header import GGUFHeader, TensorInfo
from ..formats.quant_types import NEEDS_IMATRIX_TYPES, QUANT_TYPES, QuantizeOptions, QuantType
from ..units import format_bytes

log = logging.getLogger(__name__)
T = GGMLQuantizationType
F32 = npt.NDArray[np.float32]

# Types a plan may use: none needs an importance matrix (llama.cpp refuses IQ1/IQ2 and IQ3_XXS
# without one), ternary types are for ternary-trained models only, F16 keeps a tensor as is.
PALETTE: tuple[GGMLQuantizationType, ...] = (
    T.Q2_K, T.Q3_K, T.IQ3_S, T.Q4_0, T.IQ4_NL, T.IQ4_XS, T.Q4_1, T.Q4_K,
    T.Q5_0, T.Q5_1, T.Q5_K, T.Q6_K, T.Q8_0, T.F16,
)
# With an importance matrix the types that need one join (optimize --imatrix).
IMATRIX_PALETTE: tuple[GGMLQuantizationType, ...] = (T.IQ1_M, T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ3_XXS, *PALETTE)
STORAGE_TYPES = (T.F32, T.F16, T.BF16)  # a reference whose weights the planner can read and perturb
DP_UNITS = 16_384  # budget resolution of the knapsack
HEADER_SLACK = 4096  # metadata may grow a little when llama.cpp rewrites it
SAMPLE_ROWS = 256  # rows per tensor for the weight-error estimate
# Substrings of names llama.cpp never quantizes (tensor_allows_quantization in llama-quant.cpp).
_NEVER = (
    "_norm.weight", "ffn_gate_inp.weight", "altup", "laurel", "per_layer_model_proj", "position_embd",
    "token_types", "ssm_conv1d", "shortconv.conv", "time_mix_", "attn_rel_b", "rel_pos", "patch_embd",
)
_LAYER = re.compile(r"^blk\.(\d+)\.(.+)\.weight$")


@dataclass(frozen=True)
class Slot:
    """A tensor the plan assigns a type to."""

    name: str
    shape: tuple[int, ...]
    n_elements: int
    source_type: GGMLQuantizationType
    layer: int | None  # None for token_embd, output and other tensors outside the blocks
    kind: str  # 'attn_q', 'ffn_down', 'token_embd'
    options: tuple[GGMLQuantizationType, ...]

    @property
    def role(self) -> str:
        """'attn', 'ffn', ... for layer tensors; the kind itself otherwise."""
        return self.kind.split("_")[0] if self.layer is not None else self.kind

    def n_bytes(self, ggml_type: GGMLQuantizationType) -> int:
        return type_bytes(ggml_type, self.shape)


def type_bytes(ggml_type: GGMLQuantizationType, shape: Sequence[int]) -> int:
    block, size = GGML_QUANT_SIZES[ggml_type]
    return shape[0] // block * size * math.prod(shape[1:])


def quantizable(t: TensorInfo) -> bool:
    """Would ``llama_model_quantize`` quantize this tensor? (its main rules)"""
    return len(t.shape) >= 2 and t.name.endswith("weight") and not any(s in t.name for s in _NEVER)


def find_slots(
    header: GGUFHeader, palette: Sequence[GGMLQuantizationType] = PALETTE, covered: Collection[str] | None = None
) -> list[Slot]:
    """The tensors a plan types, each with the palette's types that fit its rows; with ``covered``
    (the tensors an importance matrix has entries for), the types that need one only for those."""
    slots = []
    for t in header.tensors:
        if not quantizable(t):
            continue
        m = _LAYER.match(t.name)
        layer, kind = (int(m.group(1)), m.group(2)) if m else (None, t.name.removesuffix(".weight"))
        options = tuple(q for q in palette if t.shape[0] % GGML_QUANT_SIZES[q][0] == 0
                        and (covered is None or q not in NEEDS_IMATRIX_TYPES or t.name in covered))
        slots.append(Slot(t.name, t.shape, t.n_elements, t.ggml_type, layer, kind, options))
    return slots


def _pad(n: int, align: int) -> int:
    return n + (-n % align)


def fixed_bytes(header: GGUFHeader, slots: Sequence[Slot]) -> int:
    """Bytes a plan cannot change: the header and every tensor left as it is."""
    planned = {s.name for s in slots}
    kept = sum(_pad(t.n_bytes, header.alignment) for t in header.tensors if t.name not in planned)
    return header.data_offset + HEADER_SLACK + kept


def smallest_size(header: GGUFHeader, slots: Sequence[Slot]) -> int:
    """The smallest file any plan can make: every tensor at its smallest type."""
    return fixed_bytes(header, slots) + sum(min(_pad(s.n_bytes(q), header.alignment) for q in s.options) for s in slots)


# -- weight error per type --------------------------------------------------------------------


def read_rows(path: Path, t: TensorInfo, rows: npt.NDArray[np.int64] | slice) -> F32:
    """Rows of tensor ``t`` as float32 (n x ne0), read from ``path`` without loading the rest."""
    from ..engines.llamacpp.ggml_quants import dequantize

    ne0 = t.shape[0]
    n_rows = t.n_elements // ne0
    row_bytes = t.n_bytes // n_rows
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=t.offset, shape=(n_rows, row_bytes))[rows]
    if t.ggml_type == T.F32:
        return np.array(data.view(np.float32))
    if t.ggml_type == T.F16:
        return data.view(np.float16).astype(np.float32)
    if t.ggml_type == T.BF16:
        return (data.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return dequantize(np.ascontiguousarray(data), t.ggml_type, (len(data), ne0))


def sample_rows(t: TensorInfo, limit: int = SAMPLE_ROWS) -> npt.NDArray[np.int64]:
    n_rows = t.n_elements // t.shape[0]
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(t.name.encode()).digest()[:8], "little"))
    return np.sort(rng.choice(n_rows, size=min(limit, n_rows), replace=False)).astype(np.int64)


def relative_errors(
    path: Path, header: GGUFHeader, slots: Sequence[Slot], importance: Mapping[str, F32] | None = None
) -> dict[str, dict[str, float]]:
    """Per tensor and type: sum of squared error over sum of squares, on sampled rows. With an
    importance matrix, each column weighted by its mean squared activation (what the error costs
    in the layer's output) and quantized with it, as llama.cpp quantizes then."""
    from ..engines.llamacpp.ggml_quants import round_trip

    by_name = {t.name: t for t in header.tensors}
    out: dict[str, dict[str, float]] = {}
    for slot in slots:
        t = by_name[slot.name]
        w = read_rows(path, t, sample_rows(t))
        imp = (importance or {}).get(slot.name)
        scale = np.ones(w.shape[1]) if imp is None else imp.astype(np.float64)
        energy = float(np.sum(np.square(w, dtype=np.float64) * scale)) or 1.0
        out[slot.name] = {
            q.name: float(np.sum(np.square(round_trip(w, q, imp) - w, dtype=np.float64) * scale)) / energy
            for q in slot.options
        }
    return out


# -- the knapsack -----------------------------------------------------------------------------


@dataclass(frozen=True)
class MixPlan:
    assignment: tuple[tuple[str, GGMLQuantizationType], ...]  # (tensor name, type), file order
    predicted_kld: float
    predicted_size: int
    budget: int

    def type_summary(self, slots: Sequence[Slot]) -> dict[str, int]:
        """Parameters per type."""
        n = {s.name: s.n_elements for s in slots}
        out: dict[str, int] = {}
        for name, q in self.assignment:
            out[q.name] = out.get(q.name, 0) + n[name]
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def digest(self) -> str:
        text = ";".join(f"{n}={q.name}" for n, q in self.assignment)
        return hashlib.sha256(text.encode()).hexdigest()[:8]


Costs = Mapping[str, Mapping[str, float]]  # tensor name -> type name -> predicted KLD


def plan_mix(slots: Sequence[Slot], costs: Costs, budget: int, fixed: int, align: int) -> MixPlan:
    """The least total predicted KLD whose file fits ``budget`` bytes."""
    capacity = budget - fixed
    weights = [[_pad(s.n_bytes(q), align) for q in s.options] for s in slots]
    values = [[costs[s.name][q.name] for q in s.options] for s in slots]
    least = sum(min(w) for w in weights)
    if capacity < least:
        raise InvalidParameterError(
            f"a size budget of {format_bytes(budget)} is below the smallest file this model can make: "
            f"{format_bytes(fixed + least)} (every tensor at its smallest type); raise the budget"
        )
    unit = max(1, math.ceil(capacity / DP_UNITS))
    n = capacity // unit
    dp = np.zeros(n + 1)  # least cost of the items so far within c units
    choices = np.zeros((len(slots), n + 1), dtype=np.int16)
    for i in range(len(slots)):
        best = np.full(n + 1, np.inf)
        for j, (w, v) in enumerate(zip(weights[i], values[i], strict=True)):
            units = math.ceil(w / unit)
            if units > n:
                continue
            candidate = np.full(n + 1, np.inf)
            candidate[units:] = dp[: n + 1 - units] + v
            better = candidate < best
            best[better] = candidate[better]
            choices[i, better] = j
        dp = best
    picked = _backtrack(choices, weights, unit, n)
    picked = _fill(picked, weights, values, capacity)
    assignment = tuple((s.name, s.options[j]) for s, j in zip(slots, picked, strict=True))
    size = fixed + sum(w[j] for w, j in zip(weights, picked, strict=True))
    cost = sum(v[j] for v, j in zip(values, picked, strict=True))
    return MixPlan(assignment, cost, size, budget)


def _backtrack(choices: npt.NDArray[np.int16], weights: list[list[int]], unit: int, n: int) -> list[int]:
    picked, c = [0] * len(weights), n
    for i in range(len(weights) - 1, -1, -1):
        j = int(choices[i, c])
        picked[i] = j
        c -= math.ceil(weights[i][j] / unit)
    return picked


def _fill(picked: list[int], weights: list[list[int]], values: list[list[float]], capacity: int) -> list[int]:
    """Spend what the DP's rounding left: the upgrade with most KLD saved per byte, while one fits."""
    picked = list(picked)
    left = capacity - sum(w[j] for w, j in zip(weights, picked, strict=True))
    while True:
        best, gain = None, 0.0
        for i, (w, v) in enumerate(zip(weights, values, strict=True)):
            for j in range(len(w)):
                extra, saved = w[j] - w[picked[i]], v[picked[i]] - v[j]
                if saved > 0 and extra <= left and saved / max(extra, 1) > gain:
                    best, gain = (i, j), saved / max(extra, 1)
        if best is None:
            return picked
        i, j = best
        left -= weights[i][j] - weights[i][picked[i]]
        picked[i] = j


# -- building the file ------------------------------------------------------------------------


def plan_options(
    plan: MixPlan, slots: Sequence[Slot], threads: int | None = None, imatrix: str | None = None
) -> tuple[QuantType, QuantizeOptions]:
    """The llama.cpp quantize call that writes ``plan``: the file type of the type holding most
    parameters, and one anchored override pattern per type."""
    names: dict[GGMLQuantizationType, list[str]] = {}
    for name, q in plan.assignment:
        names.setdefault(q, []).append(name)
    patterns = tuple(("^(" + "|".join(re.escape(n) for n in tensors) + ")$", q) for q, tensors in sorted(names.items()))
    by_params = plan.type_summary(slots)
    main = next((GGMLQuantizationType[t] for t in by_params if GGMLQuantizationType[t] not in STORAGE_TYPES), T.Q8_0)
    ftype = next(q for q in QUANT_TYPES.values() if q.main_type == main)
    options = QuantizeOptions(allow_requantize=True, pure=True, tensor_types=patterns, threads=threads, imatrix=imatrix)
    return ftype, options


def mismatches(plan: MixPlan, header: GGUFHeader) -> list[str]:
    """Tensors whose type in the built file differs from the plan."""
    got = {t.name: t.ggml_type for t in header.tensors}
    return [f"{n}: planned {q.name}, got {got[n].name}" for n, q in plan.assignment if got.get(n) != q]


def predicted_costs(
    slots: Sequence[Slot], per_unit: Mapping[str, float], errors: Mapping[str, Mapping[str, float]]
) -> dict[str, dict[str, float]]:
    """KLD predicted per tensor and type: sensitivity per unit of relative error x that error."""
    return {s.name: {q: per_unit[s.name] * e for q, e in errors[s.name].items()} for s in slots}

"""Mixed precision: slots, weight errors, the knapsack, and the quantize call that builds a plan."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import pytest
from gguf import quants
from gguf.constants import GGMLQuantizationType as T

from edgeslm.engines.llamacpp.ggml_quants import quantize_rows, requires_imatrix, round_trip
from edgeslm.errors import InvalidParameterError
from edgeslm.formats.gguf_header import read_gguf_header
from edgeslm.optimize.mixed import (
    IMATRIX_PALETTE,
    PALETTE,
    Slot,
    find_slots,
    fixed_bytes,
    plan_mix,
    plan_options,
    relative_errors,
    smallest_size,
    type_bytes,
)

from .ggufbuild import write_runnable_model


def test_ggml_round_trip_matches_gguf_py() -> None:
    """ggml's quantizer through ctypes gives gguf-py's reference bytes, and reads back the same."""
    rows = np.random.default_rng(1).standard_normal((8, 64)).astype(np.float32)
    for qtype in (T.Q8_0, T.Q4_0, T.Q5_1):
        assert np.array_equal(quantize_rows(rows, qtype), quants.quantize(rows, qtype).reshape(-1))
        expected = quants.dequantize(quants.quantize(rows, qtype), qtype)
        np.testing.assert_array_equal(round_trip(rows, qtype), expected)
    assert requires_imatrix(T.IQ2_XXS) and not any(requires_imatrix(q) for q in PALETTE)


def test_slots_follow_llama_cpp_rules(tmp_path: Path) -> None:
    header = read_gguf_header(write_runnable_model(tmp_path / "m.gguf", n_layer=2))
    slots = {s.name: s for s in find_slots(header)}
    assert "blk.0.attn_norm.weight" not in slots and "output_norm.weight" not in slots  # norms stay
    assert len(slots) == 1 + 2 * 7
    down, q = slots["blk.1.ffn_down.weight"], slots["blk.1.attn_q.weight"]
    assert (down.layer, down.kind, down.role) == (1, "ffn_down", "ffn")
    assert T.Q4_K in down.options and T.Q4_K not in q.options  # rows of 256 vs 64
    assert T.Q4_0 in q.options and T.F16 in q.options
    assert slots["token_embd.weight"].layer is None and slots["token_embd.weight"].role == "token_embd"


def test_types_that_need_an_importance_entry_go_only_where_there_is_one(tmp_path: Path) -> None:
    """llama-imatrix collects nothing for token_embd (a lookup, not a product): a plan that typed it
    IQ2_XS with an imatrix made llama.cpp abort the process (GGML_ASSERT in ggml_quantize_chunk)."""
    header = read_gguf_header(write_runnable_model(tmp_path / "m.gguf", n_layer=2))
    covered = {t.name for t in header.tensors if t.name != "blk.1.ffn_down.weight"}  # rows of 256: IQ types fit
    slots = {s.name: s for s in find_slots(header, IMATRIX_PALETTE, covered)}
    uncovered = slots["blk.1.ffn_down.weight"].options
    assert T.IQ2_XS not in uncovered and T.IQ1_M not in uncovered and T.IQ3_XXS in uncovered
    assert T.IQ2_XS in slots["blk.0.ffn_down.weight"].options
    assert T.IQ2_XS in {q for s in find_slots(header, IMATRIX_PALETTE) for q in s.options}  # without: as before


def test_relative_errors_order_the_types(tmp_path: Path) -> None:
    path = write_runnable_model(tmp_path / "m.gguf")
    header = read_gguf_header(path)
    errors = relative_errors(path, header, find_slots(header))
    for per_type in errors.values():
        assert per_type["F16"] == 0.0  # the weights are F16 already
        assert 0 < per_type["Q8_0"] < per_type["Q5_0"] < per_type["Q4_0"] < 0.05
    down = errors["blk.0.ffn_down.weight"]
    assert down["Q6_K"] < down["Q4_K"] < down["Q3_K"] < down["Q2_K"]


def _slot(name: str, rows: int) -> Slot:
    return Slot(name, (32, rows), 32 * rows, T.F16, 0, "attn_q", (T.Q4_0, T.Q8_0, T.F16))


def test_knapsack_is_optimal_on_small_instances() -> None:
    rng = np.random.default_rng(7)
    slots = [_slot(f"t{i}", rows) for i, rows in enumerate((4, 8, 16, 2))]
    for trial in range(20):
        costs = {s.name: {q.name: float(rng.uniform(0, 1)) * (3 - j) for j, q in enumerate(s.options)} for s in slots}
        budget = int(rng.integers(700, 2500))
        plan = plan_mix(slots, costs, budget, fixed=100, align=1)
        best = min(
            (sum(costs[s.name][q.name] for s, q in zip(slots, combo, strict=True)), combo)
            for combo in itertools.product(*(s.options for s in slots))
            if 100 + sum(s.n_bytes(q) for s, q in zip(slots, combo, strict=True)) <= budget
        )
        assert plan.predicted_size <= budget, trial
        assert plan.predicted_kld == pytest.approx(best[0]), trial


def test_knapsack_refuses_a_budget_below_the_smallest_file() -> None:
    slots = [_slot("a", 8), _slot("b", 8)]
    costs = {s.name: {q.name: 1.0 for q in s.options} for s in slots}
    smallest = 100 + 2 * type_bytes(T.Q4_0, (32, 8))
    plan_mix(slots, costs, smallest, fixed=100, align=1)  # exactly the smallest fits
    with pytest.raises(InvalidParameterError, match=r"smallest file .*raise the budget"):
        plan_mix(slots, costs, smallest - 1, fixed=100, align=1)


def test_plan_options_name_every_tensor_once(tmp_path: Path) -> None:
    header = read_gguf_header(write_runnable_model(tmp_path / "m.gguf"))
    slots = find_slots(header)
    costs = {s.name: {q.name: 1.0 / (1 + i) for i, q in enumerate(s.options)} for s in slots}
    budget = (smallest_size(header, slots) + header.file_size) // 2
    plan = plan_mix(slots, costs, budget, fixed_bytes(header, slots), header.alignment)
    assert plan.predicted_size <= budget
    ftype, options = plan_options(plan, slots)
    assert options.pure and options.allow_requantize
    for name, qtype in plan.assignment:
        matching = [t for pattern, t in options.tensor_types if re.search(pattern, name)]
        assert matching == [qtype], name
    assert not any(re.search(p, "blk.0.attn_norm.weight") for p, _ in options.tensor_types)
    assert ftype.main_type in {q for _, q in plan.assignment}

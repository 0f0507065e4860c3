"""Does a measured per-tensor mix beat llama.cpp's uniform types at the same file size?

For each builtin model: an F16 reference (the dequantized shipped file), the model as
shipped, and a variant per uniform type, all scored on the first N chunks of WikiText-2
(ctx 512). Sensitivity is measured on the *last* chunks of the same file, never evaluated.
Then, at the file size of each uniform type, a mixed variant is planned, built by llama.cpp's
quantizer and scored the same way. Goal: mean KLD of the mix <= 0.8 x that of the uniform
type, whose file is no smaller. Results are kept in the store given by --home, so a rerun
only measures what is new.

The builtins ship quantized, so the reference is the shipped file dequantized and any tensor
put back on its shipped grid costs almost nothing. ``--off-grid`` forbids the mix to give any
tensor the type it has in the shipped file (the uniform types keep that chance), to measure
what the allocation gains without that advantage.

    .venv/bin/python benchmarks/mixed_precision.py [--home DIR] [--chunks 10] [--models smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from gguf.constants import GGMLQuantizationType as T

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeslm.config import resolve_settings  # noqa: E402
from edgeslm.evaluate.core import EvalSettings, evaluate, load_text  # noqa: E402
from edgeslm.formats.gguf_header import read_gguf_header  # noqa: E402
from edgeslm.formats.quant_types import QUANT_TYPES, QuantizeOptions, parse_quant_types  # noqa: E402
from edgeslm.optimize.mixed import find_slots, fixed_bytes, plan_mix, plan_options, predicted_costs  # noqa: E402
from edgeslm.optimize.sensitivity import CalibrationParams, measure_sensitivity  # noqa: E402
from edgeslm.pull import pull  # noqa: E402
from edgeslm.quantize import quantize  # noqa: E402
from edgeslm.store import Store, parse_name  # noqa: E402
from edgeslm.store.records import Manifest  # noqa: E402

WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2-test.txt"
TYPES = "Q8_0,Q6_K,Q5_K_M,Q5_1,Q4_K_M,Q4_0"
GOAL = 0.8


def kld(store: Store, m: Manifest, ref: Manifest, settings: EvalSettings) -> float:
    text = load_text(WIKITEXT)
    r = evaluate(store, m.name, ref.name if m.digest != ref.digest else None, text, settings)
    return float(r.kld_mean or 0.0)


def run_model(store: Store, model: str, args: argparse.Namespace) -> list[tuple[str, ...]]:
    source = store.get(parse_name(model))
    options = QuantizeOptions(allow_requantize=True)
    ref = quantize(store, source.name, [QUANT_TYPES["F16"]], options)[0].manifest
    settings = EvalSettings(ctx=512, chunks=args.chunks, speed=False)
    uniform = {"as shipped": source}
    for q in parse_quant_types(args.types):
        uniform[q.name] = quantize(store, source.name, [q], options)[0].manifest
    start = time.perf_counter()
    sens = measure_sensitivity(
        store, ref, load_text(WIKITEXT), CalibrationParams(ctx=512, chunks=args.calibration_chunks),
        reserved_tokens=args.chunks * 512,
    )
    print(f"{model}: sensitivity of {len(sens.measured)} probes in {time.perf_counter() - start:.0f} s "
          f"({sens.tokens} calibration tokens)", flush=True)
    header = read_gguf_header(store.blob_path(ref.digest))
    slots = find_slots(header)
    if args.off_grid:
        shipped = {t.name: t.ggml_type for t in read_gguf_header(store.blob_path(source.digest)).tensors}
        slots = [replace(s, options=tuple(q for q in s.options if q != shipped[s.name] or q == T.F16)) for s in slots]
        print(f"{model}: no tensor may keep its shipped type")
    costs = predicted_costs(slots, sens.per_unit, sens.errors)
    rows = []
    for label, u in sorted(uniform.items(), key=lambda kv: kv[1].size):
        plan = plan_mix(slots, costs, u.size, fixed_bytes(header, slots), header.alignment)
        ftype, opts = plan_options(plan, slots)
        name = source.name.with_tag(f"mixbench{'-offgrid' if args.off_grid else ''}-{plan.digest()}")
        mixed = quantize(store, source.name, [ftype], opts, target=lambda _q, n=name: n)[0].manifest  # type: ignore[misc]
        k_mix, k_uni = kld(store, mixed, ref, settings), kld(store, u, ref, settings)
        ratio = k_mix / k_uni if k_uni else float("inf")
        rows.append((
            model, label, f"{u.size / 1e6:.1f}", f"{k_uni:.5f}", f"{mixed.size / 1e6:.1f}", f"{k_mix:.5f}",
            f"{plan.predicted_kld:.5f}", f"{ratio:.3f}", "yes" if ratio <= GOAL else "no",
        ))
        print(" | ".join(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, help="edgeslm home to keep the store in (default: a temp dir)")
    parser.add_argument("--models", default="smollm2-135m-instruct,gemma3-270m")
    parser.add_argument("--types", default=TYPES)
    parser.add_argument("--chunks", type=int, default=10, help="evaluation chunks of 512 tokens (default 10)")
    parser.add_argument("--calibration-chunks", type=int, default=1)
    parser.add_argument("--off-grid", action="store_true", help="the mix may not use the shipped file's types")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = args.home or Path(tmp)
        store = Store.open(home / "models")
        settings = resolve_settings(home=home, offline=True)
        rows = []
        for model in args.models.split(","):
            pull(store, model, settings)
            rows += run_model(store, model, args)
    head = ("model", "uniform", "size MB", "KLD", "mix size MB", "mix KLD", "predicted", "ratio", f"<= {GOAL}")
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()

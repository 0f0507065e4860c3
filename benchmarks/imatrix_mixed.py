"""The mixed-precision planner with and without an importance matrix, at the file sizes of Q3_K_M
and Q2_K, on both builtins, same run.

Per model and budget: ``edgeslm optimize NAME --types q3_k_m,q2_k --mixed --max-size <size of the
uniform type>``, once plain and once with ``--imatrix`` (the reference calibrated on the calibration
chunks, every candidate and the mix quantized with it, the planner's errors weighted by importance
and the IQ1/IQ2/IQ3 types in its palette). Evaluation: the first chunks of the bundled WikiText-2
sample; calibration: its last chunks, never evaluated (optimize checks).

    .venv/bin/python benchmarks/imatrix_mixed.py [--chunks 4] [--calibration-chunks 2] [--models smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edgeslm_cli import edgeslm

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT / "edgeslm" / "data" / "wikitext-2-sample.txt"
MODELS = "smollm2-135m-instruct,gemma3-270m"
BUDGETS = "q3_k_m,q2_k"
NEEDS_IMATRIX = {"iq1_s", "iq1_m", "iq2_xxs", "iq2_xs", "iq2_s", "q2_k_s"}  # llama-quantize refuses them without


def size_of(home: Path, name: str) -> int:
    return int(json.loads(edgeslm(home, "show", name, "--json"))["file_size"])


def optimize(home: Path, model: str, budget: int, args: argparse.Namespace, imatrix: bool) -> dict[str, Any]:
    types = [t for t in args.budgets.split(",") if imatrix or t not in NEEDS_IMATRIX] or ["q2_k"]
    cmd = ["optimize", model, "--types", ",".join(types), "--mixed", "--max-size", str(budget), "--chunks",
           str(args.chunks), "--calibration-chunks", str(args.calibration_chunks), "--no-tag", "--json"]  # fmt: skip
    start = time.perf_counter()
    result: dict[str, Any] = json.loads(edgeslm(home, *cmd, *(["--imatrix"] if imatrix else [])))
    print(f"  {model} budget {budget} imatrix={imatrix}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return result


def metrics(result: dict[str, Any], name: str) -> dict[str, Any]:
    return next(v["metrics"] for v in result["ranking"] if v["name"] == name)


def row(model: str, qtype: str, plain: dict[str, Any], imat: dict[str, Any]) -> str:
    u0 = None if qtype in NEEDS_IMATRIX else metrics(plain, f"{model}:{qtype}")
    u1 = metrics(imat, f"{model}:{qtype}-imat")
    m0, m1 = metrics(plain, plain["mixed"]["name"]), metrics(imat, imat["mixed"]["name"])
    cells = [model, f"{qtype.upper()} ({u1['file_size'] / 1e6:.1f} MB)"]
    for m in (u0, m0, u1, m1):
        cells.append("—" if m is None else f"{m['kld']['mean']:.4f} ({m['file_size'] / 1e6:.1f} MB)")
    cells.append(", ".join(sorted(set(imat["mixed"]["types"]))))
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=4, help="evaluation chunks of 512 tokens")
    parser.add_argument("--calibration-chunks", type=int, default=2)
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--budgets", default=BUDGETS, help="the types whose file sizes are the budgets")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="imatrix-mixed-") as tmp:
        home = Path(tmp)
        for model in args.models.split(","):
            edgeslm(home, "pull", model)
            for qtype in args.budgets.split(","):
                if qtype in NEEDS_IMATRIX:  # its size needs the file: quantized with an imatrix of the same text
                    edgeslm(home, "quantize", model, "--type", qtype, "--allow-requantize", "--calibrate", str(TEXT))
                else:
                    edgeslm(home, "quantize", model, "--type", qtype, "--allow-requantize")
                budget = size_of(home, f"{model}:{qtype}")
                plain, imat = (optimize(home, model, budget, args, flag) for flag in (False, True))
                rows.append(row(model, qtype, plain, imat))
    print(
        f"mean KLD (file size) against the F16 reference, {args.chunks} x 512 tokens of the bundled WikiText-2 "
        f"sample; sensitivity and imatrix from its last {args.calibration_chunks} x 512 tokens\n"
    )
    print("| model | budget | uniform | mix | uniform, imatrix | mix, imatrix | types in the imatrix mix |")
    print("|---|---|---:|---:|---:|---:|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()

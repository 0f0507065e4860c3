"""The mixed-precision planner with and without an importance matrix, at the file sizes of Q3_K_M
and Q2_K, on both builtins, same run.

Per model and budget: ``edgeslm optimize NAME --types q3_k_m,q2_k --mixed --max-size <size of the
uniform type>``, once plain and once with ``--imatrix`` (the reference calibrated on the calibration
chunks, every candidate and the mix quantized with it, the planner's errors weighted by importance
and the IQ1/IQ2/IQ3 types in its palette). Evaluation: the first chunks of the bundled WikiText-2
sample; calibration: its last chunks, never evaluated (optimize checks).

    .venv/bin/python benchmarks/imatrix_mixed.py [--chunks 4] [--calibration-chunks 2] [--models smollm2-135m-instruct]

With ``--bpw 3.0,3.5`` the budgets are bits per weight instead (tensor bytes = bpw x parameters / 8,
plus the file's metadata), every type of ``--types`` is a uniform candidate in the same optimize
runs, and each mix is held against the uniform type nearest its size from above (the smallest one
no smaller than the mix), the goal being a mean KLD <= 0.8x that type's. Issue 33 runs it on
Qwen2.5-Coder 1.5B in a kept home (``--home``, so a rerun measures only what is new):

    .venv/bin/python benchmarks/imatrix_mixed.py --models qwen2.5-coder:1.5b --bpw 3.0,3.5 \\
        --types q2_k,q3_k_s,q3_k_m,iq2_m,iq3_xxs,iq3_xs --home ~/.cache/edgeslm-bench/home --write docs/real-models.md
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import tables
from edgeslm_cli import edgeslm

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT / "edgeslm" / "data" / "wikitext-2-sample.txt"
MODELS = "smollm2-135m-instruct,gemma3-270m"
BUDGETS = "q3_k_m,q2_k"
# llama-quantize refuses these without an imatrix
NEEDS_IMATRIX = {"iq1_s", "iq1_m", "iq2_xxs", "iq2_xs", "iq2_s", "iq2_m", "q2_k_s"}
GOAL = 0.8  # the mix's mean KLD against the uniform type nearest its size from above


def size_of(home: Path, name: str) -> int:
    return int(json.loads(edgeslm(home, "show", name, "--json"))["file_size"])


def optimize(home: Path, model: str, budget: int, args: argparse.Namespace, imatrix: bool,
             candidates: str | None = None) -> dict[str, Any]:
    wanted = (candidates or args.budgets).split(",")
    if candidates and not imatrix:  # without an imatrix the uniform candidates are the K-quants (IQ types want one)
        wanted = [t for t in wanted if not t.startswith("iq")]
    types = [t for t in wanted if imatrix or t not in NEEDS_IMATRIX] or ["q2_k"]
    cmd = ["optimize", model, "--types", ",".join(types), "--mixed", "--max-size", str(budget), "--chunks",
           str(args.chunks), "--calibration-chunks", str(args.calibration_chunks), "--no-tag", "--json"]
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


def bpw_budget(home: Path, model: str, bpw: float) -> int:
    info = json.loads(edgeslm(home, "show", model, "--json"))
    return int(bpw * info["n_params"] / 8) + int(info["file_size"]) - int(info["tensor_bytes"])


def bpw_rows(model: str, bpw: float, budget: int, results: dict[bool, dict[str, Any]]) -> list[str]:
    """One row per run (plain, imatrix): the mix, the uniform type nearest its size from above, the
    ratio against the goal, and every uniform type with its size and KLD."""
    rows = []
    for imatrix, result in results.items():
        mix = metrics(result, result["mixed"]["name"])
        uniform = [v["metrics"] for v in result["ranking"] if v["kind"] == "uniform"]
        above = sorted((m for m in uniform if m["file_size"] >= mix["file_size"]), key=lambda m: m["file_size"])
        rival = above[0] if above else None
        ratio = mix["kld"]["mean"] / rival["kld"]["mean"] if rival else float("nan")
        verdict = "—" if rival is None else f"{ratio:.2f}x {'met' if ratio <= GOAL else 'missed'}"
        others = ", ".join(f"{m['name'].split(':')[-1]} {m['kld']['mean']:.4f} ({m['file_size'] / 1e6:.0f} MB)"
                           for m in sorted(uniform, key=lambda m: m["file_size"]))
        cells = [model, f"{bpw:.1f} bpw ({budget / 1e6:.0f} MB)", "yes" if imatrix else "no",
                 f"{mix['kld']['mean']:.4f} ({mix['file_size'] / 1e6:.0f} MB)",
                 "—" if rival is None else f"{rival['name'].split(':')[-1]} {rival['kld']['mean']:.4f}", verdict,
                 ", ".join(sorted(set(result["mixed"]["types"]))), others]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


BPW_HEADER = ["| model | budget | imatrix | mix | uniform nearest above | mix / uniform | types in the mix "
              "| uniform types |", "|---|---|---|---:|---:|---|---|---|"]


def main_bpw(args: argparse.Namespace, home: Path) -> None:
    rows = []
    for model in args.models.split(","):
        edgeslm(home, "pull", model)
        for bpw in (float(b) for b in args.bpw.split(",")):
            budget = bpw_budget(home, model, bpw)
            results = {flag: optimize(home, model, budget, args, flag, args.types) for flag in (False, True)}
            rows += bpw_rows(model, bpw, budget, results)
            # each budget's rows as soon as they are measured: a run cut short keeps what it did
            tables.write_all(args.write, "imatrix_mixed.py:bpw", [*BPW_HEADER, *rows[-2:]], merge=3)
    print(
        f"mean KLD (file size) against the F16 reference (the shipped file dequantized), {args.chunks} x 512 "
        f"tokens of the bundled WikiText-2 sample; sensitivity and imatrix from its last "
        f"{args.calibration_chunks} x 512 tokens; goal: mix <= {GOAL}x the uniform type nearest its size from above\n"
    )
    print("\n".join([*BPW_HEADER, *rows]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=4, help="evaluation chunks of 512 tokens")
    parser.add_argument("--calibration-chunks", type=int, default=2)
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--budgets", default=BUDGETS, help="the types whose file sizes are the budgets")
    parser.add_argument("--bpw", help="budgets in bits per weight instead, e.g. 3.0,3.5 (candidates: --types)")
    parser.add_argument(
        "--types",
        default="q2_k,q3_k_s,q3_k_m,iq2_m,iq3_xxs,iq3_xs",
        help="with --bpw: the uniform candidates (those needing an imatrix only in imatrix runs)",
    )
    parser.add_argument("--home", type=Path, help="edgeslm home to keep the store in (default: a temp dir)")
    parser.add_argument("--write", type=Path, nargs="*", default=[],
                        help="with --bpw: Markdown files whose table to merge each budget's rows into")
    args = parser.parse_args()
    if args.bpw:
        if args.home:
            main_bpw(args, args.home)
        else:
            with tempfile.TemporaryDirectory(prefix="imatrix-mixed-") as tmp:
                main_bpw(args, Path(tmp))
        return
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

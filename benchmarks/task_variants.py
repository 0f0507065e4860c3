"""The table a user needs to pick a variant: size, mean KLD, HumanEval pass@1, tool-call accuracy
and generation speed of a model's variants, measured in one run: the KLD-vs-pass@1 relation
measured, not assumed.

Per model, the variants a user makes from the file as shipped (Q4_K_M) with edgeslm's own commands:

- ``quantize MODEL --type q3_k_m,q2_k --allow-requantize`` (there is no F16 upstream in the store:
  requantizing the shipped file is what a user can do);
- ``calibrate MODEL`` then ``quantize MODEL --type iq2_xs --imatrix MODEL --tag …-iq2_xs-imat``;
- ``optimize MODEL --mixed --max-size B --types q2_k --no-tag``: the per-tensor mix at
  ``--mix-bpw`` bits per weight, or, where that is below the smallest plan the model allows, at
  Q2_K's size (said in the table);
- ``convert MODEL --to onnx --precision int4`` for the models in ``--onnx`` (the issue asks it of the
  0.5B).

Each is then measured: ``eval VARIANT --reference MODEL-f16`` (the shipped file dequantized, 4 × 512
tokens of WikiText-2: mean KLD; single-stream generation tok/s from eval's speed test) and
``eval VARIANT --task humaneval,tools`` (4 slots, kept results reused unless ``--force``).

    .venv/bin/python benchmarks/task_variants.py [--models qwen2.5-coder:0.5b] [--limit N] \\
        [--rows shipped,q3_k_m,q2_k,iq2_xs-imat,mix,onnx] [--write docs/tasks.md README.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import tables  # noqa: E402
from edgeslm_cli import edgeslm  # noqa: E402
from parity import BENCH_HOME  # noqa: E402

HEADER = ["| model | variant | size | mean KLD | HumanEval pass@1 | tool accuracy | tok/s |",
          "|---|---|---:|---:|---:|---:|---:|"]


def exists(home: Path, name: str) -> bool:
    return any(m["name"] == name for m in json.loads(edgeslm(home, "list", "--json")))


def show(home: Path, name: str) -> dict[str, Any]:
    info: dict[str, Any] = json.loads(edgeslm(home, "show", name, "--json"))
    return info


def variant(model: str, suffix: str) -> str:
    """The name quantize gives a variant: NAME:TAG-SUFFIX, or NAME:SUFFIX for a model without a tag."""
    base, _, tag = model.partition(":")
    return f"{base}:{tag}-{suffix}" if tag and tag != "latest" else f"{base}:{suffix}"


ROWS = ("shipped", "q3_k_m", "q2_k", "iq2_xs-imat", "mix", "onnx")


def build(home: Path, model: str, args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    """(label, stored name) of each variant in ``--rows``, built where missing, one at a time."""
    rows = args.rows.split(",")
    if "shipped" in rows:
        yield "Q4_K_M (as shipped)", model
    for qtype in ("q3_k_m", "q2_k"):
        if qtype in rows:
            if not exists(home, variant(model, qtype)):
                edgeslm(home, "quantize", model, "--type", qtype, "--allow-requantize")
            yield qtype.upper(), variant(model, qtype)
    imat = variant(model, "iq2_xs-imat")
    if "iq2_xs-imat" in rows:
        if not exists(home, imat):
            edgeslm(home, "calibrate", model)
            edgeslm(home, "quantize", model, "--type", "iq2_xs", "--imatrix", model, "--allow-requantize",
                    "--tag", imat.split(":")[1])
        yield "IQ2_XS, imatrix", imat
    if "mix" in rows:
        yield mix(home, model, args)
    if "onnx" in rows and model in args.onnx.split(","):
        onnx = variant(model, "onnx-int4")
        if not exists(home, onnx):
            edgeslm(home, "convert", model, "--to", "onnx", "--precision", "int4")
        yield "ONNX int4 (onnxruntime)", onnx


def mix(home: Path, model: str, args: argparse.Namespace) -> tuple[str, str]:
    """The per-tensor mix at ``--mix-bpw``; at Q2_K's size where the model allows no plan that small."""
    info = show(home, model)
    budget = int(args.mix_bpw * info["n_params"] / 8) + int(info["file_size"]) - int(info["tensor_bytes"])
    label = f"mix at {args.mix_bpw} bpw"
    cmd = ["optimize", model, "--mixed", "--types", "q2_k", "--chunks", "4", "--calibration-chunks", "2",
           "--no-tag", "--json"]
    try:
        result = json.loads(edgeslm(home, *cmd, "--max-size", str(budget)))
    except SystemExit as exc:
        if "below the smallest" not in str(exc):
            raise
        budget = int(show(home, variant(model, "q2_k"))["file_size"])
        label = f"mix at Q2_K's size ({args.mix_bpw} bpw is below the smallest plan)"
        result = json.loads(edgeslm(home, *cmd, "--max-size", str(budget)))
    name = next(v["name"] for v in result["ranking"] if v["kind"] == "mixed")
    return label, name


def measure(home: Path, name: str, reference: str, args: argparse.Namespace) -> dict[str, Any]:
    again = ["--force"] if args.force_speed else []
    kld = json.loads(edgeslm(home, "eval", name, "--reference", reference, "--chunks", "4", *again, "--json"))[0]
    limit = ["--limit", str(args.limit)] if args.limit else []
    force = ["--force"] if args.force else []
    tasks = json.loads(edgeslm(home, "eval", name, "--task", args.tasks, "--slots", str(args.slots),
                               *limit, *force, "--json"))
    return {"kld": kld, **{t["task"]: t for t in tasks}}


def row(model: str, label: str, m: dict[str, Any]) -> str:
    def share(t: dict[str, Any] | None) -> str:
        return "not run" if t is None else f"{100 * t['passed'] / t['problems']:.1f} ({t['passed']}/{t['problems']})"

    speed = m["kld"].get("speed") or {}
    cells = [model, label, f"{m['kld']['file_size'] / 1e6:.0f} MB",
             "—" if m["kld"]["kld_mean"] is None else f"{m['kld']['kld_mean']:.4f}",
             share(m.get("humaneval")), share(m.get("tools")),
             "—" if speed.get("tg_tps") is None else f"{speed['tg_tps']:.1f}"]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="qwen2.5-coder:0.5b")
    parser.add_argument("--onnx", default="qwen2.5-coder:0.5b", help="models that also get an ONNX int4 row")
    parser.add_argument("--mix-bpw", type=float, default=3.0)
    parser.add_argument("--tasks", default="humaneval,tools", help="the tasks measured (default both)")
    parser.add_argument("--limit", type=int, help="only the first N problems of each task (a quick look)")
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--rows", default=",".join(ROWS),
                        help=f"the rows measured, of {','.join(ROWS)} (the table keeps the others)")
    parser.add_argument("--force", action="store_true", help="re-run the tasks even where results are kept")
    parser.add_argument("--force-speed", action="store_true",
                        help="re-run the KLD eval and its speed test (quiet machine: comparable tok/s)")
    parser.add_argument("--home", type=Path, default=BENCH_HOME)
    parser.add_argument("--write", type=Path, nargs="*", default=[])
    args = parser.parse_args()
    rows: list[str] = []
    for model in args.models.split(","):
        edgeslm(args.home, "pull", model)
        reference = variant(model, "f16")
        if not exists(args.home, reference):
            edgeslm(args.home, "quantize", model, "--type", "f16", "--allow-requantize")
        for label, name in build(args.home, model, args):
            rows.append(row(model, label, measure(args.home, name, reference, args)))
            print(rows[-1], file=sys.stderr)
            tables.write_all(args.write, "task_variants.py:variants", [*HEADER, *rows], merge=2)
    print(f"variants made from the shipped file; mean KLD against it dequantized to F16 (4 x 512 tokens of the "
          f"bundled WikiText-2 sample); HumanEval (the authors' protocol) and the 150-case tool suite through "
          f"edgeslm's runner, {args.slots} slots; tok/s: single-stream generation (eval's speed test)\n")
    print("\n".join([*HEADER, *rows]))


if __name__ == "__main__":
    main()

"""``recommend`` choosing between qwen2.5-coder 0.5B and 1.5B variants by measurement.

The two models share a tokenizer, so every variant of both can be measured on one scale: mean KLD
and same top-1 against the 1.5B as shipped (Q4_K_M), with ``eval``'s speed figures. Each model is
quantized to Q4_0, Q3_K_M and Q2_K, every variant evaluated against that one reference, then
``recommend --device board --ram 1GB|2GB|4GB --use-case code`` is asked which to run; it prints
the picks with their measured KLD, memory and tok/s. Runs in a kept home (default: the
benchmarks' home, ~/.cache/edgeslm-bench/home), so a rerun measures only what is new.

    .venv/bin/python benchmarks/recommend_qwen.py [--chunks 4] [--ctx 2048] [--home DIR] [--write docs/real-models.md]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import tables
from edgeslm_cli import edgeslm
from parity import BENCH_HOME

MODELS = ("qwen2.5-coder:0.5b", "qwen2.5-coder:1.5b")
TYPES = ("q4_0", "q3_k_m", "q2_k")
REFERENCE = "qwen2.5-coder:1.5b"
RAM = ("1GB", "2GB", "4GB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--ctx", type=int, default=2048, help="context the recommendation budgets for")
    parser.add_argument("--home", type=Path, default=BENCH_HOME)
    parser.add_argument("--write", type=Path, nargs="*", default=[], help="Markdown files whose tables to replace")
    args = parser.parse_args()
    names = []
    for model in MODELS:
        edgeslm(args.home, "pull", model)
        edgeslm(args.home, "quantize", model, "--type", ",".join(TYPES), "--allow-requantize")
        names += [model, *(f"{model}-{t}" for t in TYPES)]
    results = json.loads(edgeslm(args.home, "eval", *names, "--reference", REFERENCE, "--chunks", str(args.chunks),
                                 "--json"))
    variants = ["| variant | size | mean KLD | same top-1 | tg128 tok/s |", "|---|---:|---:|---:|---:|"]
    for r in sorted(results, key=lambda r: r["file_size"]):
        speed = r.get("speed") or {}
        kld, same = tables.closeness(r, 4)
        variants.append(f"| `{r['model']}` | {r['file_size'] / 1e6:.1f} MB | {kld} | {same} | "
                        f"{speed.get('tg_tps') or 0:.1f} |")
    picks = ["| RAM | budget | pick | memory | why |", "|---|---:|---|---:|---|"]
    for ram in RAM:
        advice = json.loads(edgeslm(args.home, "recommend", "--device", "board", "--ram", ram, "--use-case", "code",
                                    "--ctx", str(args.ctx), "--json"))
        local = advice.get("local") or []
        pick = local[0] if local else {"name": "(none fits)", "memory": 0, "why": ""}
        picks.append(f"| {ram} | {advice['budget'] / 1e6:.0f} MB | `{pick['name']}` | {pick['memory'] / 1e6:.0f} MB | "
                     f"{pick['why']} |")
    print(f"Every variant against {REFERENCE} as shipped, {args.chunks} x 512 tokens of the WikiText-2 sample\n")
    print("\n".join(variants))
    print(f"\n`recommend --device board --use-case code --ctx {args.ctx} --ram N`, its first picks from the store:\n")
    print("\n".join(picks))
    tables.write_all(args.write, "recommend_qwen.py:variants", variants)
    tables.write_all(args.write, "recommend_qwen.py:picks", picks)


if __name__ == "__main__":
    main()

"""``plan --ram B --use-case code`` for a few budgets, each choice then loaded and run: the runner that
``serve`` would start with the chosen model, context, slots and KV cache type, a request that fills a
micro-batch and 8 tokens (``tune.measured_peak``), its peak resident set (VmHWM) against the budget,
and the chosen variant's HumanEval pass@1 as the store measured it (``eval --task humaneval``).

    .venv/bin/python benchmarks/plan_budgets.py [--budgets 1GB,2GB,4GB] [--min-pass 0.5] [--write docs/memory.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import tables  # noqa: E402
from edgeslm_cli import edgeslm  # noqa: E402
from parity import BENCH_HOME  # noqa: E402

from edgeslm.config import resolve_settings  # noqa: E402
from edgeslm.generation import resolve_model  # noqa: E402
from edgeslm.tune import measured_peak  # noqa: E402

HEADER = ["| budget | chosen | ctx × slots | KV | planned | measured peak | under budget | HumanEval pass@1 |",
          "|---|---|---|---|---:|---:|---|---:|"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=BENCH_HOME)
    parser.add_argument("--budgets", default="1GB,2GB,4GB")
    parser.add_argument("--min-pass", default="0.5", help="the HumanEval floor given to plan ('' for none)")
    parser.add_argument("--write", type=Path, nargs="*", default=[])
    args = parser.parse_args()
    rows, failures = [], 0
    for budget in args.budgets.split(","):
        floor = ["--min-pass", args.min_pass] if args.min_pass else []
        got = json.loads(edgeslm(args.home, "plan", "--ram", budget, "--use-case", "code", *floor, "--json"))
        c = got["chosen"]
        model = resolve_model(c["name"], resolve_settings(home=args.home, offline=True))
        peak = measured_peak(model, str(args.home), c["slots"], c["ctx"], c["kv"])
        under = peak <= got["budget"]
        failures += not under
        rows.append("| " + " | ".join([
            budget, c["name"], f"{c['ctx']:,} × {c['slots']}", c["kv"], f"{c['memory'] / 2**20:,.0f} MiB",
            f"{peak / 2**20:,.0f} MiB", "yes" if under else "**no**",
            "not measured" if c["pass_at_1"] is None else f"{100 * c['pass_at_1']:.1f} %"]) + " |")
        print(rows[-1], file=sys.stderr)
    tables.write_all(args.write, "plan_budgets.py:budgets", [*HEADER, *rows])
    print("\n".join([*HEADER, *rows]))
    if failures:
        raise SystemExit(f"{failures} chosen configuration(s) went past their budget")


if __name__ == "__main__":
    main()

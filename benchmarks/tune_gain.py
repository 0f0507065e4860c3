"""What ``edgeslm tune`` gains on this machine: per model, prompt processing and generation with the
profile tune kept against llama.cpp's defaults, and llama-bench's defaults, in the same run.

Per model, in a home of its own (the bench store shared, so no profile leaks into other benchmarks):
``edgeslm tune MODEL`` (threads, micro-batch × flash attention, KV type speed, memory constants),
then ``edgeslm bench MODEL -p 512 -n 128`` with that profile and with ``EDGESLM_NO_PROFILE=1``
(llama.cpp's defaults: every physical core, micro-batch 512, its own flash-attention choice),
alternating, and ``llama-bench -m FILE -p 512 -n 128`` with its defaults. The load average before
and after is printed: figures from a busy machine say so.

    .venv/bin/python benchmarks/tune_gain.py [--models qwen2.5-coder:0.5b,qwen2.5-coder:1.5b] \\
        [--rounds 2] [--write docs/memory.md]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import tables  # noqa: E402
from edgeslm_cli import edgeslm, parse_with_native  # noqa: E402
from parity import BENCH_HOME  # noqa: E402

HEADER = ["| model | tuned: threads, micro-batch, flash attention | pp512 defaults | pp512 tuned | gain "
          "| tg128 defaults | tg128 tuned | gain | llama-bench pp512 / tg128 | load average |",
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]


def speeds(home: Path, model: str, *, profile: bool) -> tuple[float, float]:
    env = {} if profile else {"EDGESLM_NO_PROFILE": "1"}
    out = json.loads(edgeslm(home, "bench", model, "-p", "512", "-n", "128", "-r", "3", "--json", env=env))
    by_test = {t["test"][:2]: float(t["mean_tps"]) for t in out[0]["tests"]}
    return by_test["pp"], by_test["tg"]


def native(binary: Path, path: str) -> tuple[float, float]:
    cmd = [str(binary / "llama-bench"), "-m", path, "-p", "512", "-n", "128", "-r", "3", "-o", "json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, check=True)
    rows = json.loads(done.stdout)
    return float(rows[0]["avg_ts"]), float(rows[1]["avg_ts"])


def one_model(model: str, store: Path, binary: Path, rounds: int) -> str:
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="tune-gain-") as tmp:
        home = Path(tmp)
        (home / "models").symlink_to(store)
        kept: dict[str, Any] = json.loads(edgeslm(home, "tune", model, "--json"))
        print(f"{model}: tuned {kept['threads']} threads, micro-batch {kept['n_ubatch']}, flash attention "
              f"{kept['flash_attn']}; notes: {kept['notes']}", file=sys.stderr)
        defaults, tuned = [], []
        for _ in range(rounds):  # alternating: a drift in the machine's speed hits both
            defaults.append(speeds(home, model, profile=False))
            tuned.append(speeds(home, model, profile=True))
        theirs = native(binary, str(json.loads(edgeslm(home, "show", model, "--json"))["path"]))
    d = [statistics.median(x) for x in zip(*defaults, strict=True)]
    t = [statistics.median(x) for x in zip(*tuned, strict=True)]
    setting = f"{kept['threads']}, {kept['n_ubatch']}, {'on' if kept['flash_attn'] else 'off'}"
    cells = [model, setting, f"{d[0]:.1f}", f"{t[0]:.1f}", f"{100 * (t[0] / d[0] - 1):+.1f} %", f"{d[1]:.1f}",
             f"{t[1]:.1f}", f"{100 * (t[1] / d[1] - 1):+.1f} %", f"{theirs[0]:.1f} / {theirs[1]:.1f}",
             f"{load_before:.1f} → {os.getloadavg()[0]:.1f}"]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="qwen2.5-coder:0.5b,qwen2.5-coder:1.5b")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of defaults and tuned (median kept)")
    args, binary = parse_with_native(parser, BENCH_HOME)
    rows: list[str] = []
    for model in args.models.split(","):
        rows.append(one_model(model, args.home / "models", binary, args.rounds))
        print(rows[-1], file=sys.stderr)
        tables.write_all(args.write, "tune_gain.py:gain", [*HEADER, *rows], merge=1)
    print("tok/s, median of the rounds (each bench 3 repetitions); defaults: EDGESLM_NO_PROFILE=1 (llama.cpp's "
          "own); tuned: the profile edgeslm tune kept for that model\n")
    print("\n".join([*HEADER, *rows]))


if __name__ == "__main__":
    main()

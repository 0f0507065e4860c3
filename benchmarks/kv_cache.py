"""What a quantized KV cache costs: the KL-divergence it adds and the prompt-processing speed it
changes, per model and context, edgeslm beside llama-bench in the same run.

Per model × context × cache type: ``edgeslm eval MODEL --kv-type T --ctx C --chunks 1`` (the
reference is the model itself with llama.cpp's f16 cache, so the KLD is the cache type's alone),
``edgeslm bench MODEL -p C -n 0 --kv-type T`` and ``llama-bench -m FILE -p C -n 0 -ctk T -ctv T -fa 1``
(flash attention on, as edgeslm turns it on for a quantized cache; f16 rows with ``-fa 1`` too).

    .venv/bin/python benchmarks/kv_cache.py [--models qwen2.5-coder:0.5b,qwen2.5-coder:1.5b] \\
        [--contexts 4096,16384] [--types q8_0,q4_0] [--write docs/running.md]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import tables  # noqa: E402
from edgeslm_cli import edgeslm, parse_with_native  # noqa: E402
from parity import BENCH_HOME  # noqa: E402

HEADER = ["| model | context | KV cache | mean KLD added | same top-1 | prefill t/s | llama-bench t/s | vs f16 |",
          "|---|---:|---|---:|---:|---:|---:|---:|"]


def path_of(home: Path, model: str) -> str:
    return str(json.loads(edgeslm(home, "show", model, "--json"))["path"])


def ours_pp(home: Path, model: str, ctx: int, kv: str) -> float:
    out = json.loads(edgeslm(home, "bench", model, "-p", str(ctx), "-n", "0", "-r", "1", "--kv-type", kv, "--json"))
    return float(out[0]["tests"][0]["mean_tps"])


def native_pp(binary: Path, path: str, ctx: int, kv: str) -> float:
    cmd = [str(binary / "llama-bench"), "-m", path, "-p", str(ctx), "-n", "0", "-r", "1", "-ctk", kv, "-ctv", kv,
           "-fa", "1", "-o", "json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, check=True)
    return float(json.loads(done.stdout)[0]["avg_ts"])


WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2-test.txt"  # long enough for a 16k chunk


def kld(home: Path, model: str, ctx: int, kv: str) -> dict[str, Any]:
    text = ["--text", str(WIKITEXT)] if WIKITEXT.is_file() else []
    out: dict[str, Any] = json.loads(edgeslm(home, "eval", model, "--kv-type", kv, "--ctx", str(ctx), "--chunks", "1",
                                             "--no-speed", *text, "--json"))[0]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="qwen2.5-coder:0.5b,qwen2.5-coder:1.5b")
    parser.add_argument("--contexts", default="4096,16384")
    parser.add_argument("--types", default="q8_0,q4_0")
    args, binary = parse_with_native(parser, BENCH_HOME)
    rows: list[str] = []
    for model in args.models.split(","):
        path = path_of(args.home, model)
        for ctx in (int(c) for c in args.contexts.split(",")):
            base = (ours_pp(args.home, model, ctx, "f16"), native_pp(binary, path, ctx, "f16"))
            rows.append(f"| {model} | {ctx:,} | f16 | 0 (reference) | 100 % | {base[0]:.1f} | {base[1]:.1f} | 1.00× |")
            for kv in args.types.split(","):
                k = kld(args.home, model, ctx, kv)
                pp = (ours_pp(args.home, model, ctx, kv), native_pp(binary, path, ctx, kv))
                rows.append(f"| {model} | {ctx:,} | {kv} | {k['kld_mean']:.5f} | {100 * k['same_top']:.1f} % | "
                            f"{pp[0]:.1f} | {pp[1]:.1f} | {pp[0] / base[0]:.2f}× |")
                print(rows[-1], file=sys.stderr)
            tables.write_all(args.write, "kv_cache.py:cost", [*HEADER, *rows], merge=3)
    print("mean KLD a cache type adds (the model itself with an f16 cache as the reference, one chunk of the context, "
          "second half scored); prefill tok/s of a prompt that fills the context (edgeslm bench and llama-bench, "
          "flash attention on, one repetition); vs f16: edgeslm's prefill against its own f16 row\n")
    print("\n".join([*HEADER, *rows]))


if __name__ == "__main__":
    main()

"""Do edgeslm's perplexity and KL-divergence equal native llama-perplexity's, and how fast?

For each builtin model: F16 reference and Q8_0 / Q5_1 / Q4_0 variants are made with
llama.cpp's quantizer (--allow-requantize; the builtins ship quantized), then scored on the
first N chunks of WikiText-2 at ctx 512 by native ``llama-perplexity`` (two passes:
``--kl-divergence-base`` on the reference, ``--kl-divergence`` on each variant) and by
``edgeslm.evaluate`` (one lockstep pass per variant). Prints both sides, the relative
difference of each statistic (goal: within ±1 %) and evaluation throughput: tokens evaluated
per second, both models counted on both sides (goal: >= 0.9x native).

    .venv/bin/python benchmarks/eval_fidelity.py [--native-bin DIR] [--chunks 20] [-t THREADS]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeslm_cli import native_bin  # noqa: E402

from benchmarks.parity import MODEL_CHOICES, model_files  # noqa: E402
from edgeslm.engines.base import physical_cores  # noqa: E402
from edgeslm.engines.llamacpp.engine import quantize_file  # noqa: E402
from edgeslm.evaluate import EvalResult, EvalSettings, evaluate, load_text  # noqa: E402
from edgeslm.formats.quant_types import QUANT_TYPES, QuantizeOptions  # noqa: E402
from edgeslm.sources.pinned import pinned_models  # noqa: E402
from edgeslm.store import Store, parse_name  # noqa: E402

WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2-test.txt"
VARIANTS = ("Q8_0", "Q5_1", "Q4_0")
PATTERNS = {
    "ppl": r"Mean PPL\(Q\)\s*:\s*([\d.]+)",
    "ppl_base": r"Mean PPL\(base\)\s*:\s*([\d.]+)",
    "kld_mean": r"Mean\s+KLD:\s*([-\d.]+)",
    "kld_p99": r"99\.0%\s+KLD:\s*([-\d.]+)",
    "kld_median": r"Median\s+KLD:\s*([-\d.]+)",
    "same_top": r"Same top p:\s*([\d.]+)",
    "dp_rms": r"RMS Δp\s*:\s*([\d.]+)",
}


def native_run(cmd: list[str]) -> tuple[str, float]:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed: {done.stderr[-500:]}")
    return done.stdout + done.stderr, seconds


def parse_native(output: str) -> dict[str, float]:
    values = {}
    for key, pattern in PATTERNS.items():
        m = re.search(pattern, output)
        if m:
            values[key] = float(m.group(1)) / (100 if key in ("same_top", "dp_rms") else 1)
    return values


def ours_values(r: EvalResult) -> dict[str, float]:
    assert r.ppl_base is not None and r.kld_mean is not None and r.same_top is not None and r.dp_rms is not None
    return {
        "ppl": r.ppl,
        "ppl_base": r.ppl_base,
        "kld_mean": r.kld_mean,
        "kld_p99": r.kld["p99"],
        "kld_median": r.kld["median"],
        "same_top": r.same_top,
        "dp_rms": r.dp_rms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--native-bin", type=Path)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("-t", "--threads", type=int, default=physical_cores())
    parser.add_argument("--models", nargs="*", default=None, choices=MODEL_CHOICES, help="default: both builtins")
    args = parser.parse_args()
    bin_dir = native_bin(args.native_bin)
    text = load_text(WIKITEXT)
    settings = EvalSettings(ctx=512, chunks=args.chunks, threads=args.threads, speed=False)
    common = ["-c", "512", "--chunks", str(args.chunks), "-t", str(args.threads), "-b", "512"]
    worst, speed = 0.0, {"native": 0.0, "ours": 0.0, "tokens": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "models")
        for name, src in model_files(args.models).items():
            stem = name.replace(":", "-")  # a store name for each variant
            files = {}
            if name in pinned_models():  # no F16 exists offline: the reference is the shipped file
                files["F16"] = src
                store.add_file(src, parse_name(f"{stem}:f16"), source={"kind": "file"})
            for qname in ("F16", *VARIANTS):
                if qname in files:
                    continue
                out = Path(tmp) / f"{name}-{qname}.gguf"
                quantize_file(src, out, QUANT_TYPES[qname], QuantizeOptions(allow_requantize=True))
                store.add_file(out, parse_name(f"{stem}:{qname.lower()}"), source={"kind": "file"})
                files[qname] = out
            base = Path(tmp) / f"{name}.kld"
            _, base_s = native_run(
                [
                    str(bin_dir / "llama-perplexity"),
                    "-m",
                    str(files["F16"]),
                    "-f",
                    str(WIKITEXT),
                    "--kl-divergence-base",
                    str(base),
                    *common,
                ]
            )
            reference = "the shipped file" if name in pinned_models() else "F16"
            print(f"\n{name}: {args.chunks} chunks x 512 tokens, reference {reference} (native pass {base_s:.1f} s)")
            print(f"  {'variant':8} {'statistic':11} {'native':>12} {'edgeslm':>12} {'rel diff':>9}")
            for qname in VARIANTS:
                out, kld_s = native_run(
                    [
                        str(bin_dir / "llama-perplexity"),
                        "-m",
                        str(files[qname]),
                        "--kl-divergence-base",
                        str(base),
                        "--kl-divergence",
                        *common,
                    ]
                )
                start = time.perf_counter()
                ours = evaluate(
                    store, parse_name(f"{stem}:{qname.lower()}"), parse_name(f"{stem}:f16"), text, settings, force=True
                )
                ours_s = time.perf_counter() - start
                nat, our = parse_native(out), ours_values(ours)
                for key in PATTERNS:
                    diff = (our[key] - nat[key]) / abs(nat[key]) if nat.get(key) else float("nan")
                    if key in ("ppl", "ppl_base", "kld_mean", "same_top"):
                        worst = max(worst, abs(diff))
                    print(
                        f"  {qname:8} {key:11} {nat.get(key, float('nan')):12.6f} {our[key]:12.6f} {100 * diff:8.3f}%"
                    )
                tokens = 2 * args.chunks * 512
                speed["native"] += base_s + kld_s
                speed["ours"] += ours_s
                speed["tokens"] += tokens
                print(
                    f"  {qname:8} {'tok/s':11} {tokens / (base_s + kld_s):12.1f} {tokens / ours_s:12.1f} "
                    f"{(base_s + kld_s) / ours_s:8.3f}x"
                )
    print(f"\nlargest relative difference (PPL, PPL base, mean KLD, same top): {100 * worst:.3f}% (goal ±1%)")
    print(
        f"evaluation throughput: native {speed['tokens'] / speed['native']:.1f} tok/s, edgeslm "
        f"{speed['tokens'] / speed['ours']:.1f} tok/s, ratio {speed['native'] / speed['ours']:.3f} (goal >= 0.9)"
    )


if __name__ == "__main__":
    main()

"""What an importance matrix buys: mean KLD (and same top-1) against the model's reference with
and without one, per type, on both builtins, same run.

Calibration: WikiText-2 test from chunk 100 on (``calibrate --from-chunk 100``); evaluation: the
bundled WikiText-2 sample's first chunks — disjoint texts, so the imatrix never saw what it is
scored on. Types that cannot be made without an imatrix (IQ2_XS, IQ2_XXS, IQ1_M) show only "with".

    .venv/bin/python benchmarks/imatrix_quality.py [--chunks 4] [--calibration-chunks 8]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from edgeslm_cli import edgeslm

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT.parent / "shared" / "data" / "wikitext-2-test.txt"
MODELS = ("smollm2-135m-instruct", "gemma3-270m")
BOTH = ("q2_k", "q3_k_m", "q4_k_m", "iq4_xs", "iq3_xxs")
WITH_ONLY = ("iq2_xs", "iq1_m")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=4, help="evaluation chunks of 512 tokens")
    parser.add_argument("--calibration-chunks", type=int, default=8)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="imatrix-quality-") as tmp:
        home = Path(tmp)
        for model in MODELS:
            edgeslm(home, "pull", model)
            edgeslm(home, "quantize", model, "--type", "f16", "--allow-requantize")  # the reference
            edgeslm(home, "calibrate", model, "--text", str(TEXT), "--from-chunk", "100", "--chunks",
                    str(args.calibration_chunks))
            names = []
            for qtype in BOTH + WITH_ONLY:
                tag = f"{qtype}-imat"
                edgeslm(home, "quantize", model, "--type", qtype, "--imatrix", model, "--allow-requantize",
                        "--tag", tag)
                names.append(f"{model}:{tag}")
                if qtype in BOTH:
                    edgeslm(home, "quantize", model, "--type", qtype, "--allow-requantize")
                    names.append(f"{model}:{qtype}")
            results = json.loads(edgeslm(home, "eval", *names, "--chunks", str(args.chunks), "--no-speed", "--json"))
            by = {r["model"]: r for r in results}
            for qtype in BOTH + WITH_ONLY:
                with_, without = by.get(f"{model}:{qtype}-imat"), by.get(f"{model}:{qtype}")
                rows.append((model, qtype.upper(), _kld(without), _kld(with_), _top(without), _top(with_)))
    print(
        f"mean KLD against the reference, {args.chunks} x 512 tokens of the bundled WikiText-2 sample; "
        f"imatrix from {args.calibration_chunks} x 512 tokens of WikiText-2 test from chunk 100\n"
    )
    print("| model | type | KLD without | KLD with | same top-1 without | same top-1 with |")
    print("|---|---|---:|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def _kld(r: dict | None) -> str:  # type: ignore[type-arg]
    return "—" if r is None else f"{r['kld_mean']:.4f}"


def _top(r: dict | None) -> str:  # type: ignore[type-arg]
    return "—" if r is None else f"{100 * r['same_top']:.1f} %"


if __name__ == "__main__":
    main()

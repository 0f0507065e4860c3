"""``edgeslm calibrate`` and ``quantize --imatrix`` against llama.cpp's own tools, same run.

For each builtin model: native ``llama-imatrix`` and ``edgeslm calibrate`` on the same file, text
(WikiText-2 test), ctx and chunks — every entry compared (goal, issue 21: within 1e-4 relative),
and whole-command wall time (goal: calibration throughput >= 0.9x llama-imatrix). Then IQ2_XS,
IQ2_XXS, IQ3_XXS, IQ1_M and Q2_K_S quantized with native's imatrix file by ``llama-quantize
--imatrix`` and by edgeslm's quantizer: the files must be byte-identical.

    .venv/bin/python benchmarks/imatrix_exact.py [--native-bin DIR] [--chunks 8] [--write docs/real-models.md]

``--write`` merges this run's rows into the two tables under their markers (a row per model, a row
per model and type), so a run over one model or one type replaces only its own rows.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import tables  # noqa: E402
from edgeslm_cli import native_bin  # noqa: E402
from parity import MODEL_CHOICES, model_files  # noqa: E402

from edgeslm.calibrate import calibrate  # noqa: E402
from edgeslm.engines.base import physical_cores  # noqa: E402
from edgeslm.engines.llamacpp.engine import quantize_file  # noqa: E402
from edgeslm.formats.imatrix import read_imatrix  # noqa: E402
from edgeslm.formats.quant_types import QuantizeOptions, parse_quant_types  # noqa: E402
from edgeslm.store import Store, parse_name  # noqa: E402

TYPES = ("IQ2_XS", "IQ2_XXS", "IQ3_XXS", "IQ1_M", "Q2_K_S")
TEXT = ROOT.parent / "shared" / "data" / "wikitext-2-test.txt"
CALIBRATION = ["| model | entries | worst relative difference to llama-imatrix | counts | llama-imatrix "
               "| edgeslm calibrate |", "|---|---:|---:|---|---:|---:|"]
QUANTIZED = ["| model | type | with llama-imatrix's file: byte-identical to `llama-quantize --imatrix` | size "
             "| with edgeslm's own imatrix |", "|---|---|---|---:|---|"]


def worst_difference(ours: Path, theirs: Path) -> tuple[float, str, bool]:
    a, b = read_imatrix(ours), read_imatrix(theirs)
    assert set(a.entries) == set(b.entries), set(a.entries) ^ set(b.entries)
    worst, where, counts = 0.0, "", True
    for name, e in b.entries.items():
        mine = a.entries[name]
        counts &= bool((mine.counts == e.counts).all())
        rel = float(np.max(np.abs(mine.sums - e.sums) / np.maximum(np.abs(e.sums), 1e-30)))
        if rel > worst:
            worst, where = rel, name
    return worst, where, counts


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--native-bin", type=Path)
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--models", nargs="*", default=None, choices=MODEL_CHOICES, help="default: both builtins")
    parser.add_argument("--types", default=",".join(TYPES), help=f"default: {','.join(TYPES)}")
    parser.add_argument("--no-legacy", action="store_true", help="skip the legacy .dat comparison")
    parser.add_argument("--write", type=Path, nargs="*", default=[], help="Markdown files whose tables to merge into")
    args = parser.parse_args()
    calibration, quantized = list(CALIBRATION), list(QUANTIZED)
    bin_dir = native_bin(args.native_bin)
    threads = physical_cores()
    with tempfile.TemporaryDirectory(prefix="imatrix-bench-") as tmp:
        home = Path(tmp)
        text = home / "calibration.txt"
        text.write_bytes(TEXT.read_bytes()[: 60 * args.ctx * args.chunks])  # enough tokens, cut early
        for name, path in model_files(args.models).items():
            subprocess.run([sys.executable, "-m", "edgeslm", "--home", str(home), "pull", name], check=True,
                           capture_output=True, timeout=1800)
            store = Store.open(home / "models")
            native_file = home / f"{name}-native.gguf"
            started = time.perf_counter()
            subprocess.run([str(bin_dir / "llama-imatrix"), "-m", str(path), "-f", str(text), "-c", str(args.ctx),
                            "--chunks", str(args.chunks), "-t", str(threads), "--no-ppl", "-o", str(native_file)],
                           check=True, capture_output=True, timeout=1800)
            native_s = time.perf_counter() - started
            started = time.perf_counter()
            ours = calibrate(store, parse_name(name), text, ctx=args.ctx, chunks=args.chunks, threads=threads)
            ours_s = time.perf_counter() - started
            worst, where, counts = worst_difference(ours.path, native_file)
            print(f"{name}: {len(read_imatrix(native_file).entries)} entries, {args.chunks} x {args.ctx} tokens; "
                  f"worst relative difference {worst:.2e} ({where}), counts equal: {counts}")
            print(f"  llama-imatrix {native_s:6.2f} s   edgeslm calibrate {ours_s:6.2f} s   "
                  f"throughput ratio {native_s / ours_s:.2f}")
            calibration.append(f"| {name} | {len(read_imatrix(native_file).entries)} | {worst:.2e} ({where}) | "
                               f"{'equal' if counts else 'differ'} | {native_s:.2f} s | {ours_s:.2f} s |")
            for qname in args.types.upper().split(","):
                qtype = parse_quant_types(qname.lower())[0]
                theirs, mine = home / f"{name}-{qname}-native.gguf", home / f"{name}-{qname}-ours.gguf"
                native_cmd = [str(bin_dir / "llama-quantize"), "--allow-requantize", "--imatrix", str(native_file),
                              str(path), str(theirs), qname, str(threads)]
                subprocess.run(native_cmd, check=True, capture_output=True, timeout=1800)
                quantize_file(path, mine, qtype, QuantizeOptions(allow_requantize=True, imatrix=str(native_file),
                                                                 threads=threads))
                same = sha(theirs) == sha(mine)
                print(f"  {qname:8s} byte-identical to llama-quantize --imatrix: {same}  ({theirs.stat().st_size:,} B)")
                quantize_file(path, mine, qtype, QuantizeOptions(allow_requantize=True, imatrix=str(ours.path),
                                                                 threads=threads))
                alike = "the same bytes" if sha(theirs) == sha(mine) else "other bytes (its imatrix differs a little)"
                print(f"  {qname:8s} with edgeslm's own imatrix: {mine.stat().st_size:,} B, {alike}")
                note = ", the same bytes" if alike.startswith("the same") else ""
                quantized.append(f"| {name} | {qname} | {'yes' if same else 'no'} | {theirs.stat().st_size:,} B | "
                                 f"quantizes ({mine.stat().st_size:,} B{note}) |")
                theirs.unlink()
                mine.unlink()
            if not args.no_legacy:
                legacy_identical(bin_dir, path, text, home / f"{name}.dat", args, threads)
    tables.write_all(args.write, "imatrix_exact.py:calibration", calibration, merge=1)
    tables.write_all(args.write, "imatrix_exact.py:types", quantized, merge=2)


def legacy_identical(bin_dir: Path, model: Path, text: Path, dat: Path, args: argparse.Namespace, threads: int) -> None:
    """llama-imatrix's legacy .dat output, given to both quantizers: the same bytes."""
    subprocess.run([str(bin_dir / "llama-imatrix"), "-m", str(model), "-f", str(text), "-c", str(args.ctx), "--chunks",
                    str(args.chunks), "-t", str(threads), "--no-ppl", "--output-format", "dat", "-o", str(dat)],
                   check=True, capture_output=True, timeout=1800)
    for qname in ("IQ2_XS", "Q2_K_S"):
        theirs, mine = dat.with_suffix(f".{qname}-native.gguf"), dat.with_suffix(f".{qname}-ours.gguf")
        subprocess.run([str(bin_dir / "llama-quantize"), "--allow-requantize", "--imatrix", str(dat), str(model),
                        str(theirs), qname, str(threads)], check=True, capture_output=True, timeout=1800)
        quantize_file(model, mine, parse_quant_types(qname.lower())[0],
                      QuantizeOptions(allow_requantize=True, imatrix=str(dat), threads=threads))
        print(f"  {qname:8s} with llama-imatrix's legacy .dat, byte-identical: {sha(theirs) == sha(mine)}")


if __name__ == "__main__":
    main()

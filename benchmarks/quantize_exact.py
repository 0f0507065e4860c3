"""Is edgeslm's quantization byte-identical to native llama-quantize, and as fast?

For each builtin model and each llama.cpp type, quantizes the same source file with native
``llama-quantize`` (built by ../shared/tools/build-native-llama.sh from the llama.cpp that
llama-cpp-python bundles) and with edgeslm's ``quantize_file`` (llama_model_quantize, the
same options), alternating, and compares every tensor's data bytes and the whole files.
Throughput is source MB per second of wall time; goal (issue 4): >= 0.95x native.

    .venv/bin/python benchmarks/quantize_exact.py [--native-bin DIR] [--types q8_0,q4_k_m] [-t THREADS]
"""

from __future__ import annotations

import argparse
import hashlib
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
from edgeslm.formats.gguf_header import read_gguf_header  # noqa: E402
from edgeslm.formats.model_info import model_info  # noqa: E402
from edgeslm.formats.quant_types import QUANT_TYPES, QuantizeOptions, parse_quant_types  # noqa: E402


def tensor_digests(path: Path) -> dict[str, str]:
    header = read_gguf_header(path)
    out = {}
    with open(path, "rb") as fp:
        for t in header.tensors:
            fp.seek(t.offset)
            out[t.name] = hashlib.sha256(fp.read(t.n_bytes)).hexdigest()
    return out


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--native-bin", type=Path)
    parser.add_argument("--types", default=",".join(q for q in QUANT_TYPES if not QUANT_TYPES[q].needs_imatrix))
    parser.add_argument("-t", "--threads", type=int, default=physical_cores())
    parser.add_argument("--models", nargs="*", default=None, choices=MODEL_CHOICES, help="default: both builtins")
    args = parser.parse_args()
    bin_dir = native_bin(args.native_bin)
    print(f"{'model':22} {'type':8} {'tensors':>9} {'file':>9} {'native MB/s':>12} {'ours MB/s':>10} {'ratio':>6}  got")
    totals = {"native": 0.0, "ours": 0.0, "mb": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        for name, src in model_files(args.models).items():
            mb = src.stat().st_size / 1e6
            for qtype in parse_quant_types(args.types):
                native_out, our_out = Path(tmp) / "native.gguf", Path(tmp) / "ours.gguf"
                start = time.perf_counter()
                done = subprocess.run(
                    [
                        str(bin_dir / "llama-quantize"),
                        "--allow-requantize",
                        str(src),
                        str(native_out),
                        qtype.name,
                        str(args.threads),
                    ],
                    capture_output=True,
                    text=True,
                    timeout=3600,
                )
                native_s = time.perf_counter() - start
                if done.returncode != 0:
                    print(f"{name:22} {qtype.name:8} native refused: {done.stderr.strip().splitlines()[-1][:80]}")
                    continue
                start = time.perf_counter()
                quantize_file(src, our_out, qtype, QuantizeOptions(allow_requantize=True, threads=args.threads))
                ours_s = time.perf_counter() - start
                same_tensors = tensor_digests(native_out) == tensor_digests(our_out)
                same_file = file_digest(native_out) == file_digest(our_out)
                mix = model_info(read_gguf_header(our_out)).type_mix_summary(3)
                print(
                    f"{name:22} {qtype.name:8} {'same' if same_tensors else 'DIFFER':>9} "
                    f"{'same' if same_file else 'DIFFER':>9} {mb / native_s:12.1f} {mb / ours_s:10.1f} "
                    f"{native_s / ours_s:6.3f}  {mix}"
                )
                totals["native"] += native_s
                totals["ours"] += ours_s
                totals["mb"] += mb
    if totals["ours"]:
        print(
            f"\nall types: native {totals['mb'] / totals['native']:.1f} MB/s, ours "
            f"{totals['mb'] / totals['ours']:.1f} MB/s, ratio {totals['native'] / totals['ours']:.3f}"
        )


if __name__ == "__main__":
    main()

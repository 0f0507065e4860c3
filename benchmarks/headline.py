"""The README's headline table: variants of both builtins and both Qwen2.5-Coder models across
runtimes, measured on one scale in one run — file size, mean KLD and same top-1 against the model's
reference (WikiText-2 sample, ctx 512), pp512/tg128 tok/s and peak RSS from the bench worker. The
builtins' reference is their F16 (the shipped file upcast); the Qwen models' is the shipped Q4_K_M
file itself (no F16 of them exists offline), so their KLD says how far a variant moved from it.
Every variant is evaluated afresh (``eval --force``), so no figure comes from a result kept by an
earlier run on a machine in another state.

SmolLM2 goes through all three runtimes (llama.cpp types, ONNX Runtime int8/int4, MLX 8/4-bit with
float32 scales, as off a Mac); Gemma 3 270M through llama.cpp only (``convert --to onnx/mlx`` takes
llama, qwen2 and qwen3 exports). MLX runs on its Linux CPU build here, so its speed is not a Mac's.
llama.cpp's own ``llama-bench`` on the same GGUF files, same run, when the native tools are built.

    .venv/bin/python benchmarks/headline.py [--chunks 4] [--native-bin DIR] [--home DIR] [--write README.md ...]

``--write`` puts the table in place of the one under its marker in each file (``tables.py``), so
nobody copies numbers by hand; ``make headline`` writes README.md and docs/runtimes/index.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import tables
from edgeslm_cli import NATIVE_SCRIPT, edgeslm, native_bin

ROOT = Path(__file__).resolve().parents[1]
PLAN = {
    "smollm2-135m-instruct": (
        ["q8_0", "q4_k_m", "q4_0"],
        [("onnx", "int8"), ("onnx", "int4"), ("mlx", "8"), ("mlx", "4")],
    ),
    "gemma3-270m": (["q8_0", "q4_k_m", "q4_0"], []),
    "qwen2.5-coder:0.5b": (["q4_0", "q3_k_m", "q2_k"], [("onnx", "int4")]),
    "qwen2.5-coder:1.5b": (["q4_0", "q3_k_m", "q2_k"], []),
}
SHIPPED_REFERENCE = {"qwen2.5-coder:0.5b", "qwen2.5-coder:1.5b"}  # no F16 offline: the pulled file is the reference


def variant(model: str, tag: str) -> str:
    """As edgeslm names a variant: ``m:q4_0`` for ``m``, ``m:0.5b-q4_0`` for ``m:0.5b``."""
    base, _, own = model.partition(":")
    return f"{base}:{tag}" if not own or own == "latest" else f"{model}-{tag}"


def reference(model: str) -> str:
    return model if model in SHIPPED_REFERENCE else variant(model, "f16")


DISPLAY = {"smollm2-135m-instruct": "SmolLM2 135M", "gemma3-270m": "Gemma 3 270M",
           "qwen2.5-coder:0.5b": "Qwen2.5-Coder 0.5B", "qwen2.5-coder:1.5b": "Qwen2.5-Coder 1.5B"}
RUNTIMES = {"llama.cpp": "llama.cpp", "onnxruntime": "ONNX Runtime", "mlx": "MLX (CPU)"}
HEADER = (
    "| model | variant | runtime | size | mean KLD | same top-1 | pp512 tok/s | tg128 tok/s | llama-bench tg128 "
    "| peak RSS |"
)
TAGS = {("onnx", "int8"): "onnx-int8", ("onnx", "int4"): "onnx-int4", ("mlx", "8"): "mlx-8bit-fp32",
        ("mlx", "4"): "mlx-4bit-fp32"}


def build(home: Path, model: str, types: list[str], folders: list[tuple[str, str]]) -> list[str]:
    edgeslm(home, "pull", model)
    wanted = types if model in SHIPPED_REFERENCE else ["f16", *types]
    edgeslm(home, "quantize", model, "--type", ",".join(wanted), "--allow-requantize")
    for runtime, recipe in folders:
        if runtime == "onnx":
            edgeslm(home, "convert", model, "--to", "onnx", "--precision", recipe)
        else:
            edgeslm(home, "convert", model, "--to", "mlx", "--q-bits", recipe, "--dtype", "float32")
    first = model if ":" in model else f"{model}:latest"
    return [first, *(variant(model, t) for t in types), *(variant(model, TAGS[f]) for f in folders)]


def native_tg(bin_dir: Path | None, home: Path, r: dict[str, Any]) -> str:
    """llama-bench's tg128 on the same GGUF file (t/s), or '' for a folder model or without the native tools."""
    if bin_dir is None or r["runtime"] != "llama.cpp":
        return ""
    path = json.loads(edgeslm(home, "show", r["model"], "--json"))["path"]
    out = subprocess.run([str(bin_dir / "llama-bench"), "-m", path, "-p", "0", "-n", "128", "-r", "3", "-o", "json"],
                         capture_output=True, text=True, check=True, timeout=600).stdout
    return f"{json.loads(out)[0]['avg_ts']:.1f}"


def row(r: dict[str, Any], native: str, parent: str) -> str:
    speed = r.get("speed") or {}
    shipped = r["model"] in (parent, f"{parent}:latest")
    label = f"`:{r['model'].split(':', 1)[1]}`" + (f" ({r['file_type']}, as shipped)" if shipped else "")
    cells = [DISPLAY.get(parent, parent), label, RUNTIMES.get(r["runtime"], r["runtime"]),
             f"{r['file_size'] / 1e6:.1f} MB",
             *tables.closeness(r, 5), f"{speed.get('pp_tps') or 0:.1f}",
             f"{speed.get('tg_tps') or 0:.1f}", native or "—",
             f"{speed.get('peak_rss', 0) / 2**20:.0f} MiB"]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--native-bin", type=Path, help="llama.cpp's tools (default: built by build-native-llama.sh)")
    parser.add_argument("--home", type=Path, help="edgeslm home to build in and keep (default: a temp dir)")
    parser.add_argument("--write", type=Path, nargs="*", default=[], help="files whose headline table to replace")
    args = parser.parse_args()
    bin_dir = native_bin(args.native_bin) if args.native_bin or NATIVE_SCRIPT.is_file() else None
    with tempfile.TemporaryDirectory(prefix="headline-") as tmp:
        home = args.home or Path(tmp)
        rows = []
        for model, (types, folders) in PLAN.items():
            names = build(home, model, types, folders)
            results = json.loads(edgeslm(home, "eval", *names, "--force", "--reference", reference(model), "--chunks",
                                         str(args.chunks), "--json"))
            rows += [row(r, native_tg(bin_dir, home, r), model) for r in results]
    print(f"Against each builtin's F16 GGUF and each Qwen model's shipped Q4_K_M file, {args.chunks} x 512 tokens of "
          "the bundled WikiText-2 sample; one run\n")
    table = [HEADER, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|", *rows]
    print("\n".join(table))
    tables.write_all(args.write, "headline.py:variants", table)


if __name__ == "__main__":
    main()

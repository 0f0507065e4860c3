"""CLI: edgeslm convert (a Hugging Face checkpoint into the store as GGUF)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..config import Settings
from ..convert import OUTTYPES, convert_source
from ..store import Manifest, Store, parse_name
from ..units import format_bytes
from .output import print_json, status


def configure(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "convert", help="convert a Hugging Face checkpoint to GGUF, or a stored model to ONNX, in the store"
    )
    p.set_defaults(run=cmd_convert)
    p.add_argument(
        "source", help="a local Hugging Face model folder, or hf.co/ORG/REPO; with --to onnx, a stored model"
    )
    p.add_argument("--to", choices=("gguf", "onnx", "mlx"), default="gguf", help="gguf (default); onnx or mlx: an "
                   "ONNX Runtime GenAI or MLX folder built from a stored model")  # fmt: skip
    p.add_argument("--outtype", default="auto", help=f"{', '.join(OUTTYPES)} (auto: keep the checkpoint's precision)")
    p.add_argument("--precision", default="int4", help="with --to onnx: fp32, int8 or int4 (default)")
    p.add_argument("--method", default="builder", help="with --to onnx: builder (default); dynamic or static: "
                   "Olive-style INT8 from the fp32 graph (fusions + quantize_dynamic, or quantize_static)")  # fmt: skip
    p.add_argument("--calibration", type=Path, help="with --method static: a UTF-8 text (default: the bundled sample)")
    p.add_argument("--q-bits", type=int, default=0, help="with --to mlx: quantize to 2, 3, 4, 5, 6 or 8 bits")
    p.add_argument("--q-group-size", type=int, default=64, help="with --to mlx: 32, 64 (default) or 128")
    p.add_argument("--q-recipe", help="with --to mlx: one of mlx-lm's mixed recipes (mixed_3_6, mixed_4_6, ...)")
    p.add_argument("--dtype", default="float16", help="with --to mlx: float16 (default), bfloat16 or float32")
    p.add_argument("--name", help="store it under this name (default: the folder's or repo's name; onnx: NAME:onnx-…)")
    p.add_argument("--json", action="store_true")


def cmd_convert(args: argparse.Namespace, settings: Settings) -> int:
    if args.to == "onnx":
        return _convert_onnx(args, settings)
    if args.to == "mlx":
        return _convert_mlx(args, settings)
    store = Store.open(settings.models_dir)
    result = convert_source(store, args.source, settings, outtype=args.outtype, name=args.name)
    m = result.manifest
    if args.json:
        print_json(
            {
                "name": str(m.name),
                "digest": m.digest,
                "size": m.size,
                "architecture": result.architecture,
                "outtype": result.outtype,
                "pre_tokenizer": result.pre_tokenizer,
                "source": dict(m.source),
            }
        )
    else:
        status(
            f"stored {m.name} ({result.architecture} -> {m.info.architecture}, {result.outtype}, "
            f"{format_bytes(m.size)}, tokenizer pre-split '{result.pre_tokenizer}')"
        )
    return 0


def _convert_onnx(args: argparse.Namespace, settings: Settings) -> int:
    from ..convert.to_onnx import convert_to_onnx, parse_method, parse_precision
    from ..pull import ensure_pulled

    precision = parse_precision(args.precision)
    method = parse_method(args.method, precision)
    ensure_pulled(args.source, settings)
    store = Store.open(settings.models_dir)
    result = convert_to_onnx(
        store, parse_name(args.source), precision=precision, method=method,
        target=parse_name(args.name) if args.name else None, calibration=args.calibration,
        progress=None if args.json else status,
    )  # fmt: skip
    _print_built(args.json, result.manifest, f"{result.precision.value}, {result.method.value}", result.seconds)
    return 0


def _convert_mlx(args: argparse.Namespace, settings: Settings) -> int:
    from ..convert.to_mlx import MlxRecipe, convert_to_mlx
    from ..pull import ensure_pulled

    recipe = MlxRecipe(dtype=args.dtype, bits=args.q_bits, group_size=args.q_group_size, mixed=args.q_recipe)
    ensure_pulled(args.source, settings)
    store = Store.open(settings.models_dir)
    target = parse_name(args.name) if args.name else None
    result = convert_to_mlx(
        store, parse_name(args.source), recipe, target=target, progress=None if args.json else status
    )
    _print_built(args.json, result.manifest, recipe.tag.removeprefix("mlx-"), result.seconds)
    return 0


def _print_built(as_json: bool, m: Manifest, what: str, seconds: float) -> None:
    if as_json:
        files = {x.path: x.size for x in m.layers}
        print_json({"name": str(m.name), "digest": m.digest, "size": m.size, "format": m.format.value, "built": what,
                    "seconds": seconds, "files": files, "source": dict(m.source)})  # fmt: skip
    else:
        status(f"stored {m.name} ({m.format.value} {what}, {format_bytes(m.size)}, {len(m.layers)} files, "
               f"{seconds:.1f} s)")  # fmt: skip


def configure_export(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "export", help="write a stored model out in another format (hf: a Hugging Face folder, float32)"
    )
    p.set_defaults(run=cmd_export)
    p.add_argument("name")
    p.add_argument("--format", required=True, choices=("hf",), help="hf: config, safetensors, tokenizer files")
    p.add_argument("folder", type=Path, help="a new (or empty) folder")


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    from ..export import export_hf

    result = export_hf(Store.open(settings.models_dir), args.name, args.folder)
    status(f"wrote {result.folder} ({result.architecture}, {result.tensors} tensors in float32)")
    return 0

"""CLI: edgeslm convert (a Hugging Face checkpoint into the store as GGUF)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..config import Settings
from ..convert import OUTTYPES, convert_source
from ..store import Store, parse_name
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
    p.add_argument("--to", choices=("gguf", "onnx"), default="gguf", help="gguf (default), or onnx: an ONNX Runtime "
                   "GenAI folder built from a stored model")  # fmt: skip
    p.add_argument("--outtype", default="auto", help=f"{', '.join(OUTTYPES)} (auto: keep the checkpoint's precision)")
    p.add_argument("--precision", default="int4", help="with --to onnx: fp32, int8 or int4 (default)")
    p.add_argument("--method", default="builder", help="with --to onnx: builder (default); dynamic or static: "
                   "Olive-style INT8 from the fp32 graph (fusions + quantize_dynamic, or quantize_static)")  # fmt: skip
    p.add_argument("--calibration", type=Path, help="with --method static: a UTF-8 text (default: the bundled sample)")
    p.add_argument("--name", help="store it under this name (default: the folder's or repo's name; onnx: NAME:onnx-…)")
    p.add_argument("--json", action="store_true")


def cmd_convert(args: argparse.Namespace, settings: Settings) -> int:
    if args.to == "onnx":
        return _convert_onnx(args, settings)
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
    m = result.manifest
    if args.json:
        print_json({"name": str(m.name), "digest": m.digest, "size": m.size, "format": m.format.value,
                    "precision": result.precision.value, "method": result.method.value, "seconds": result.seconds,
                    "files": {x.path: x.size for x in m.layers}, "source": dict(m.source)})  # fmt: skip
    else:
        status(f"stored {m.name} (onnx {result.precision.value}, {result.method.value}, {format_bytes(m.size)}, "
               f"{len(m.layers)} files, {result.seconds:.1f} s)")  # fmt: skip
    return 0


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

"""CLI: edgeslm convert (a Hugging Face checkpoint into the store as GGUF)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import Settings
from ..convert import OUTTYPES, convert_source
from ..store import Manifest, Store, parse_name
from ..units import format_bytes
from .output import print_json, status

if TYPE_CHECKING:
    from ..convert.to_mlx import MlxRecipe
    from ..convert.to_onnx import Method, Precision


def configure(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "convert", help="convert a Hugging Face checkpoint to GGUF, or a stored model to ONNX or MLX, in the store"
    )
    p.set_defaults(run=cmd_convert)
    p.add_argument(
        "source", help="a local Hugging Face model folder, or hf.co/ORG/REPO; with --to onnx or mlx, a stored model"
    )
    p.add_argument("--to", choices=("gguf", "onnx", "mlx"), default="gguf", help="gguf (default); onnx or mlx: an "
                   "ONNX Runtime GenAI or MLX folder built from a stored model")
    p.add_argument("--outtype", default="auto", help=f"{', '.join(OUTTYPES)} (auto: keep the checkpoint's precision)")
    _folder_options(p, "--to", "float16 on Apple silicon, float32 elsewhere, where MLX's CPU build emulates "
                    "float16 slowly")
    p.add_argument("--name", help="store it under this name (default: the folder's or repo's name; onnx: NAME:onnx-…)")
    p.add_argument("--json", action="store_true")


def _folder_options(p: argparse.ArgumentParser, flag: str, dtype_default: str) -> None:
    """The ONNX and MLX build options, shared by convert and export."""
    p.add_argument("--precision", default="int4", help=f"with {flag} onnx: fp32, int8 or int4 (default)")
    p.add_argument("--method", default="builder", help=f"with {flag} onnx: builder (default); dynamic or static: "
                   "Olive-style INT8 from the fp32 graph (fusions + quantize_dynamic, or quantize_static)")
    p.add_argument("--calibration", type=Path, help="with --method static: a UTF-8 text (default: the bundled sample)")
    p.add_argument("--q-bits", type=int, default=0, help=f"with {flag} mlx: quantize to 2, 3, 4, 5, 6 or 8 bits")
    p.add_argument("--q-group-size", type=int, default=64, help=f"with {flag} mlx: 32, 64 (default) or 128")
    p.add_argument("--q-recipe", help=f"with {flag} mlx: one of mlx-lm's mixed recipes (mixed_3_6, mixed_4_6, ...)")
    p.add_argument("--dtype", help=f"with {flag} mlx: float16, bfloat16 or float32 (default: {dtype_default})")


def _mlx_recipe(args: argparse.Namespace, default_dtype: str) -> MlxRecipe:
    from ..convert.to_mlx import MlxRecipe

    return MlxRecipe(dtype=args.dtype or default_dtype, bits=args.q_bits, group_size=args.q_group_size,
                     mixed=args.q_recipe)


def _onnx_options(args: argparse.Namespace) -> tuple[Precision, Method]:
    from ..convert.to_onnx import parse_method, parse_precision

    precision = parse_precision(args.precision)
    return precision, parse_method(args.method, precision)


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
    from ..convert.to_onnx import convert_to_onnx
    from ..pull import pull_missing

    precision, method = _onnx_options(args)
    store = Store.open(settings.models_dir)
    pull_missing(store, args.source, settings)
    result = convert_to_onnx(
        store, parse_name(args.source), precision=precision, method=method,
        target=parse_name(args.name) if args.name else None, calibration=args.calibration,
        progress=None if args.json else status,
    )
    _print_built(args.json, result.manifest, f"{result.precision.value}, {result.method.value}", result.seconds)
    return 0


def _convert_mlx(args: argparse.Namespace, settings: Settings) -> int:
    from ..convert.to_mlx import AUTO_DTYPE, convert_to_mlx
    from ..pull import pull_missing

    recipe = _mlx_recipe(args, AUTO_DTYPE)
    store = Store.open(settings.models_dir)
    pull_missing(store, args.source, settings)
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
                    "seconds": seconds, "files": files, "source": dict(m.source)})
    else:
        status(f"stored {m.name} ({m.format.value} {what}, {format_bytes(m.size)}, {len(m.layers)} files, "
               f"{seconds:.1f} s)")


def configure_export(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "export", help="write a stored model out as a folder: hf (float32), mlx or onnx, for another machine"
    )
    p.set_defaults(run=cmd_export)
    p.add_argument("name")
    p.add_argument("--format", required=True, choices=("hf", "mlx", "onnx"), help="hf: config, safetensors and "
                   "tokenizer files; mlx: what mlx_lm.load opens (a GGUF model is converted first); onnx: what "
                   "onnxruntime-genai opens (likewise)")
    p.add_argument("folder", type=Path, help="a new (or empty) folder")
    _folder_options(p, "--format", "float16, for Apple silicon")


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    if args.format != "hf":
        return _export_folder(args, settings)
    from ..export import export_hf

    result = export_hf(Store.open(settings.models_dir), args.name, args.folder)
    status(f"wrote {result.folder} ({result.architecture}, {result.tensors} tensors in float32)")
    return 0


def _export_folder(args: argparse.Namespace, settings: Settings) -> int:
    from ..export_folder import FolderVariant, export_folder
    from ..formats.model_format import ModelFormat

    if args.format == "mlx":
        from ..convert.to_mlx import convert_to_mlx

        recipe = _mlx_recipe(args, "float16")
        variant = FolderVariant(recipe.tag, recipe.requested, lambda store, parent, name, say: convert_to_mlx(
            store, parent.name, recipe, target=name, progress=say).manifest)
    else:
        from ..convert.to_onnx import convert_to_onnx, default_tag, onnx_requested

        precision, method = _onnx_options(args)
        variant = FolderVariant(default_tag(precision, method), onnx_requested(precision, method),
                                lambda store, parent, name, say: convert_to_onnx(
                                    store, parent.name, precision=precision, method=method, target=name,
                                    calibration=args.calibration, progress=say).manifest)
    store = Store.open(settings.models_dir)
    result = export_folder(store, args.name, ModelFormat(args.format), args.folder, variant, progress=status)
    how = "built for this export" if result.built else "as stored"
    status(f"wrote {result.folder} ({result.name}, {how}: {result.files} files, {format_bytes(result.size)})")
    return 0

"""CLI: edgeslm convert (a Hugging Face checkpoint into the store as GGUF)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..config import Settings
from ..convert import OUTTYPES, convert_source
from ..store import Store
from ..units import format_bytes
from .output import print_json, status


def configure(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "convert", help="convert a Hugging Face checkpoint (folder or hf.co/ORG/REPO) to GGUF in the store"
    )
    p.set_defaults(run=cmd_convert)
    p.add_argument("source", help="a local Hugging Face model folder, or hf.co/ORG/REPO")
    p.add_argument("--outtype", default="auto", help=f"{', '.join(OUTTYPES)} (auto: keep the checkpoint's precision)")
    p.add_argument("--name", help="store it under this name (default: the folder's or repo's name)")
    p.add_argument("--json", action="store_true")


def cmd_convert(args: argparse.Namespace, settings: Settings) -> int:
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

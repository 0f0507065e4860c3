"""CLI commands for custom models: create (from a Modelfile)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import InputFileError
from .output import print_json, status


def configure(sub: Any) -> None:
    help_text = "create a model from a Modelfile: a base, LoRA adapters, system prompt, parameters, messages"
    p = sub.add_parser("create", help=help_text, description=help_text)
    p.add_argument("name", help="name[:tag] of the new model")
    p.add_argument("-f", "--file", type=Path, default=Path("Modelfile"), help="the Modelfile (default: ./Modelfile)")
    p.add_argument("-q", "--quantize", help="quantize the base first (a llama.cpp type, e.g. q4_k_m)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_create)


def cmd_create(args: argparse.Namespace, settings: Settings) -> int:
    from ..modelfile import create_model, decode, parse, spec_from_modelfile
    from ..modelfile.parser import MAX_MODELFILE_BYTES
    from ..store import Store, parse_name

    name = parse_name(args.name)
    path: Path = args.file
    try:
        with open(path, "rb") as fp:
            raw = fp.read(MAX_MODELFILE_BYTES + 1)
    except OSError as exc:
        raise InputFileError(f"cannot read the Modelfile {path}: {exc.strerror}; give one with -f") from None
    spec = spec_from_modelfile(parse(decode(raw, str(path)), str(path)), path.resolve().parent, str(path))
    store = Store.open(settings.models_dir)
    report = (lambda _: None) if args.json else status
    manifest = create_model(store, name, spec, settings, quantize=args.quantize, report=report)
    if args.json:
        print_json({"name": str(manifest.name), "digest": manifest.digest,
                    "adapters": [a.digest for a in manifest.adapters]})  # fmt: skip
    else:
        extra = f" with {len(manifest.adapters)} adapter(s)" if manifest.adapters else ""
        status(f"created {manifest.name}{extra}")
    return 0

"""CLI: edgeslm quantize."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..config import Settings
from ..formats.quant_types import QUANT_TYPES, QuantizeOptions, QuantType, parse_ggml_type, parse_quant_types
from ..quantize import parse_tensor_type, quantize, quantize_to_file
from ..store import Store, parse_name
from ..units import format_bytes
from .output import print_json, print_table, status


def configure(sub: Any) -> None:
    types_help = "; ".join(q.describe() for q in QUANT_TYPES.values())
    p: argparse.ArgumentParser = sub.add_parser(
        "quantize",
        help="make quantized variants of a stored model with llama.cpp's quantizer",
        description=f"Types: {types_help}.",
    )
    p.set_defaults(run=cmd_quantize)
    p.add_argument("name")
    p.add_argument("--type", dest="types", required=True, help="one or more, comma-separated: q8_0,q5_1,q4_0")
    p.add_argument("--allow-requantize", action="store_true", help="quantize an already quantized model")
    p.add_argument("--force", action="store_true", help="rebuild variants that exist")
    p.add_argument("--pure", action="store_true", help="every tensor gets the type (no mixed recipe)")
    p.add_argument("--leave-output-tensor", action="store_true", help="do not quantize output.weight")
    p.add_argument("--output-tensor-type", help="type of output.weight")
    p.add_argument("--token-embedding-type", help="type of token_embd.weight")
    p.add_argument(
        "--tensor-type",
        action="append",
        default=[],
        metavar="PATTERN=TYPE",
        help="type for tensors whose name matches the regex (repeatable)",
    )
    p.add_argument("--threads", type=int)
    p.add_argument("--tag", help="store the one variant under NAME:TAG (default: the type, e.g. q4_k_m)")
    p.add_argument("--output", type=Path, help="write the one variant to this file instead of the store")
    p.add_argument("--imatrix", metavar="NAME|FILE", help="importance matrix: the model's own (edgeslm calibrate "
                   "NAME) or a llama-imatrix file; the IQ1/IQ2 types and Q2_K_S need one")
    p.add_argument("--calibrate", metavar="TEXT_FILE", help="calibrate on this text first, then use it")
    p.add_argument("--json", action="store_true")


def _imatrix(args: argparse.Namespace, settings: Settings) -> str | None:
    """The importance matrix file to use: --imatrix's, or one --calibrate computes now."""
    from ..errors import UsageError

    if args.imatrix and args.calibrate:
        raise UsageError("give --imatrix or --calibrate, not both")
    if not (args.imatrix or args.calibrate):
        return None
    from ..calibrate import calibrate, resolve_imatrix

    store = Store.open(settings.models_dir)
    if args.imatrix:
        return str(resolve_imatrix(store, store.get(parse_name(args.name)), args.imatrix))
    done = calibrate(store, parse_name(args.name), Path(args.calibrate), threads=args.threads)
    status(f"calibrated {done.model} on {done.text}: {done.chunks} chunks of {done.ctx} tokens")
    return str(done.path)


@contextmanager
def tensor_progress(enabled: bool) -> Iterator[Callable[[QuantType, int, int, str], None] | None]:
    """One tqdm bar per variant, advanced per tensor, on a terminal only."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def update(qtype: QuantType, done: int, total: int, tensor: str) -> None:
        bar = bars.get(qtype.name)
        if bar is None:
            bar = bars[qtype.name] = tqdm(total=total, desc=qtype.name, unit="tensor", leave=False)
        bar.set_postfix_str(tensor[:32], refresh=False)
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        for bar in bars.values():
            bar.close()


def cmd_quantize(args: argparse.Namespace, settings: Settings) -> int:
    from ..errors import InvalidParameterError

    types = parse_quant_types(args.types)
    imatrix = _imatrix(args, settings)
    options = QuantizeOptions(
        allow_requantize=args.allow_requantize, force=args.force, pure=args.pure,
        leave_output_tensor=args.leave_output_tensor,
        output_tensor_type=parse_ggml_type(args.output_tensor_type) if args.output_tensor_type else None,
        token_embedding_type=parse_ggml_type(args.token_embedding_type) if args.token_embedding_type else None,
        tensor_types=tuple(parse_tensor_type(t) for t in args.tensor_type), threads=args.threads, imatrix=imatrix,
    )
    if args.output is not None:
        if len(types) != 1:
            raise InvalidParameterError("--output takes exactly one --type")
        warnings = quantize_to_file(
            Store.open(settings.models_dir), parse_name(args.name), types[0], options, args.output
        )
        for warning in warnings:
            status(f"warning: {warning}")
        status(f"wrote {args.output} ({format_bytes(args.output.stat().st_size)})")
        return 0
    if args.tag is not None and len(types) != 1:
        raise InvalidParameterError("--tag takes exactly one --type")
    name = parse_name(args.name)
    target = (lambda _q: name.with_tag(args.tag)) if args.tag is not None else None
    with tensor_progress(enabled=not args.json) as progress:
        results = quantize(Store.open(settings.models_dir), name, types, options, target=target, progress=progress)
    for r in results:
        for warning in r.warnings:
            status(f"warning: {r.manifest.name}: {warning}")
    if args.json:
        print_json(
            [
                {
                    "name": str(r.manifest.name),
                    "requested": r.quant_type.name,
                    "built": r.built,
                    "size": r.manifest.size,
                    "digest": r.manifest.digest,
                    "warnings": list(r.warnings),
                    "type_mix": [s.__dict__ for s in r.manifest.info.type_mix],
                }
                for r in results
            ]
        )
        return 0
    rows = [
        (
            str(r.manifest.name),
            r.quant_type.name,
            "built" if r.built else "kept",
            format_bytes(r.manifest.size),
            f"{r.manifest.info.bits_per_weight:.2f}",
            r.manifest.info.type_mix_summary(4),
        )
        for r in results
    ]
    print_table(("NAME", "ASKED", "", "SIZE", "BPW", "GOT (share of parameters)"), rows, right=(3, 4))
    return 0

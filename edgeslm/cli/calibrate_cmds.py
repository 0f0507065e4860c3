"""CLI: calibrate (a model's importance matrix, as llama-imatrix computes it)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..config import Settings
from ..store import Store, parse_name
from .output import print_json, progress_bar, status


def configure(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "calibrate", help="compute a model's importance matrix (llama-imatrix's), for quantize --imatrix"
    )
    p.set_defaults(run=cmd_calibrate)
    p.add_argument("name")
    p.add_argument("--text", type=Path, metavar="FILE", help="UTF-8 text (default: the bundled WikiText-2 sample)")
    p.add_argument("--ctx", type=int, default=512, help="tokens per chunk (default 512, as llama-imatrix)")
    p.add_argument("--chunks", type=int, help="chunks to use (default: all the text holds; at least 2 needed)")
    p.add_argument("--from-chunk", type=int, default=0, metavar="N", help="skip the text's first N chunks")
    p.add_argument("--process-output", action="store_true", help="also output.weight (llama-imatrix's flag)")
    p.add_argument("--threads", type=int)
    p.add_argument("--json", action="store_true")


def cmd_calibrate(args: argparse.Namespace, settings: Settings) -> int:
    from ..calibrate import calibrate

    store = Store.open(settings.models_dir)
    with progress_bar(None, "chunks", enabled=not args.json) as bar:
        done = calibrate(store, parse_name(args.name), args.text, ctx=args.ctx, chunks=args.chunks,
                         from_chunk=args.from_chunk, threads=args.threads, process_output=args.process_output,
                         progress=bar)
    if args.json:
        print_json({**done.__dict__, "path": str(done.path), "tokens_per_second": done.tokens_per_second})
        return 0
    status(f"{done.model}: {done.entries} weights from {done.chunks} chunks of {done.ctx} tokens of {done.text} "
           f"in {done.seconds:.1f} s ({done.tokens_per_second:,.0f} tokens/s)")
    print(done.path)
    status(f"use it: edgeslm quantize {done.model} --type iq2_xs --imatrix {done.model}")
    return 0

"""CLI: optimize."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..config import DEFAULT_CONTEXT, Settings
from ..convert.to_mlx import parse_recipes
from ..convert.to_onnx import parse_variants
from ..errors import InvalidParameterError, OutputFileError
from ..evaluate.core import EvalSettings, load_text
from ..formats.model_format import parse_runtimes
from ..formats.quant_types import parse_quant_types
from ..optimize.constraints import Constraints, parse_fraction, parse_kld, parse_size, parse_tps
from ..optimize.core import DEFAULT_TYPES, OptimizeParams, Progress, optimize
from ..optimize.report import HEADERS, cleanup, reasons, summary, table_rows, to_json, write_report
from ..optimize.sensitivity import CalibrationParams
from ..store import Store, parse_name
from .output import print_json, print_table, status


def configure(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "optimize",
        help="build and measure variants, pick the best that meets your constraints, tag it NAME:best",
        description="Candidates: the reference, the model as stored, each --types variant and (with --mixed, or when "
        "--max-size falls between the candidates) a per-tensor mix planned for the budget.",
    )
    p.set_defaults(run=cmd_optimize)
    p.add_argument("name")
    g = p.add_argument_group("constraints")
    g.add_argument("--max-size", metavar="SIZE", help="largest file, e.g. 80MB")
    g.add_argument("--max-memory", metavar="SIZE", help="largest weights + KV cache at --ctx-memory tokens, e.g. 1GB")
    g.add_argument(
        "--ctx-memory", type=int, metavar="N", default=DEFAULT_CONTEXT,
        help=f"context length for --max-memory (default {DEFAULT_CONTEXT})",
    )
    g.add_argument("--min-tps", dest="min_tg_tps", metavar="TPS", help="least generation tok/s (as bench's tg128)")
    g.add_argument("--min-pp-tps", metavar="TPS", help="least prompt-processing tok/s (as bench's pp512)")
    kld_help = "largest KL-divergence: mean by default, or median, p90, p95, p99, p99.9, max (repeatable)"
    g.add_argument("--max-kld", action="append", default=[], metavar="[STAT=]X", help=kld_help)
    g.add_argument(
        "--min-same-top", metavar="SHARE", help="least share of tokens whose top-1 matches the reference: 0.9 or 90%%"
    )
    g.add_argument(
        "--max-ppl-increase", metavar="SHARE", help="largest perplexity increase over the reference: 0.05 or 5%%"
    )
    g.add_argument("--min-pass", metavar="SHARE", help="least HumanEval pass@1 (eval --task humaneval): 0.55 or 55%%; "
                   "measured on the best candidates until one meets it")
    g.add_argument("--min-tool-acc", metavar="SHARE", help="least tool-call accuracy (eval --task tools): 0.8 or 80%%")
    g.add_argument("--task-limit", type=int, metavar="N", help="with --min-pass/--min-tool-acc: only the first N "
                   "problems of each task (a quick, rougher answer)")
    p.add_argument("--types", default=DEFAULT_TYPES, help=f"uniform types to try (default {DEFAULT_TYPES})")
    p.add_argument("--runtimes", default="llama.cpp", help="runtimes whose variants compete: llama.cpp (default), "
                   "onnxruntime, mlx, or several: llama.cpp,onnxruntime,mlx")
    p.add_argument("--onnx", default="int4,int8", metavar="VARIANTS", help="with onnxruntime: ONNX variants to build "
                   "(default int4,int8; also fp32, int8-dynamic, int8-static)")
    p.add_argument("--mlx", default="4bit,8bit", metavar="VARIANTS", help="with mlx: MLX variants to build (default "
                   "4bit,8bit; also 3bit, 6bit, 4bit-g32, mixed_3_6, fp16, bf16, fp32)")
    mixed = p.add_mutually_exclusive_group()
    mixed.add_argument("--mixed", action="store_true", default=None, help="also plan a per-tensor mix for the budget")
    mixed.add_argument("--no-mixed", dest="mixed", action="store_false", help="never plan a mix")
    p.add_argument("--imatrix", action="store_true", help="calibrate the reference on the calibration chunks and "
                   "quantize every llama.cpp candidate (-imat) and the mix with its importance matrix; IQ1/IQ2/IQ3 "
                   "types become possible (--types iq2_xs,...) and join the mix")
    p.add_argument("--reference", help="the model to compare against (default: an f32/bf16/f16 variant, else built)")
    p.add_argument(
        "--text",
        type=Path,
        metavar="TEXT_FILE",
        help="evaluation text (default: bundled WikiText-2 sample); its first chunks",
    )
    p.add_argument(
        "--calibration",
        type=Path,
        metavar="TEXT_FILE",
        help="calibration text for the mix (default: the last chunks of --text)",
    )
    p.add_argument("--ctx", type=int, default=512, help="tokens per evaluation chunk (default 512)")
    p.add_argument("--chunks", type=int, metavar="N", default=8, help="evaluation chunks (default 8)")
    p.add_argument("--calibration-chunks", type=int, metavar="N", default=1, help="calibration chunks (default 1)")
    p.add_argument("--threads", type=int)
    p.add_argument("--report", type=Path, metavar="DIR", default=Path("optimize-report"), help="folder for the report")
    p.add_argument("--tag", default="best", help="tag for the winner (default best)")
    p.add_argument("--no-tag", dest="tag", action="store_const", const=None, help="do not tag the winner")
    p.add_argument("--json", action="store_true")


def _constraints(args: argparse.Namespace) -> Constraints:
    return Constraints(
        max_size=parse_size("--max-size", args.max_size) if args.max_size else None,
        max_memory=parse_size("--max-memory", args.max_memory) if args.max_memory else None,
        memory_ctx=args.ctx_memory,
        min_pp_tps=parse_tps("--min-pp-tps", args.min_pp_tps),
        min_tg_tps=parse_tps("--min-tps", args.min_tg_tps),
        max_kld=tuple(parse_kld(k) for k in args.max_kld),
        min_same_top=parse_fraction("--min-same-top", args.min_same_top) if args.min_same_top else None,
        max_ppl_increase=parse_fraction("--max-ppl-increase", args.max_ppl_increase) if args.max_ppl_increase else None,
        min_pass=_share("--min-pass", args.min_pass),
        min_tool_acc=_share("--min-tool-acc", args.min_tool_acc),
    )


def _share(flag: str, text: str | None) -> float | None:
    if text is None:
        return None
    value = parse_fraction(flag, text)
    if value > 1:
        raise InvalidParameterError(f"{flag} {text!r}: a share is at most 1 (100%)", params=flag.lstrip("-"))
    return value


@contextmanager
def step_display(enabled: bool) -> Iterator[Progress]:
    """One status line on stderr: which candidate, which step, how far, time so far. On a terminal
    it is rewritten in place; otherwise a line is printed each time the candidate or step changes."""
    start, last = time.monotonic(), [("", "")]
    tty = sys.stderr.isatty()

    def show(candidate: str, step: str, done: int | None, total: int | None) -> None:
        if not enabled:
            return
        count = f" {done}/{total}" if done is not None and total else ""
        line = f"[{time.monotonic() - start:5.0f}s] {candidate}: {step}{count}"
        if tty:
            print(f"\r\033[K{line[:150]}", end="", file=sys.stderr, flush=True)
        elif (candidate, step) != last[0]:
            print(line, file=sys.stderr, flush=True)
        last[0] = (candidate, step)

    try:
        yield show
    finally:
        if enabled and tty:
            print("\r\033[K", end="", file=sys.stderr, flush=True)


def cmd_optimize(args: argparse.Namespace, settings: Settings) -> int:
    params = OptimizeParams(
        constraints=_constraints(args),
        types=tuple(parse_quant_types(args.types)),
        mixed=args.mixed,
        imatrix=args.imatrix,
        eval=EvalSettings(ctx=args.ctx, chunks=args.chunks, threads=args.threads),
        calibration=CalibrationParams(ctx=args.ctx, chunks=args.calibration_chunks, threads=args.threads),
        reference=parse_name(args.reference) if args.reference else None,
        tag=args.tag,
        threads=args.threads,
        runtimes=parse_runtimes(args.runtimes),
        onnx=parse_variants(args.onnx),
        mlx=parse_recipes(args.mlx),
        task_limit=args.task_limit,
        home=str(settings.home),
    )
    if args.report.exists() and not args.report.is_dir():
        raise OutputFileError(f"--report {args.report} is a file; give a folder for the report")
    text = load_text(args.text)
    calibration = load_text(args.calibration) if args.calibration else None
    store = Store.open(settings.models_dir)
    with step_display(enabled=not args.json) as progress:
        result = optimize(
            store, parse_name(args.name), text, params, calibration_text=calibration, progress=progress,
            engine_name=settings.engine,
        )
    written = write_report(result, args.report)
    if args.json:
        print_json(to_json(result))
    else:
        print_table(HEADERS, table_rows(result), right=(0, 4, 5, 6, 7, 8, 9, 10, 11, 12))
        print()
        for line in reasons(result):
            print(f"  {line}")
        print()
        for line in summary(result):
            print(line)
        if rm := cleanup(result):
            print(f"To remove the candidates that lost: {rm}")
    for note in result.notes:
        status(f"note: {note}")
    status(f"report: {', '.join(str(p) for p in written)} ({result.seconds:.0f} s)")
    return 0 if result.ranking.winner is not None else 1

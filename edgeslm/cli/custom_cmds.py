"""CLI commands for custom models: create (from a Modelfile)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
                    "adapters": [a.digest for a in manifest.adapters]})
    else:
        extra = f" with {len(manifest.adapters)} adapter(s)" if manifest.adapters else ""
        status(f"created {manifest.name}{extra}")
    return 0


@contextmanager
def step_progress(enabled: bool) -> Iterator[Callable[[int, int, float], None] | None]:
    """Steps with their loss: a bar on a terminal, else a line at every tenth of the run."""
    if not enabled:
        yield None
        return
    if not sys.stderr.isatty():

        def line(step: int, total: int, loss: float) -> None:
            if step == total or step % max(1, total // 10) == 0:
                status(f"step {step}/{total}  loss {loss:.3f}")

        yield line
        return
    from tqdm import tqdm

    with tqdm(desc="finetune", unit="step", leave=False) as bar:

        def update(step: int, total: int, loss: float) -> None:
            bar.total = total
            bar.set_postfix_str(f"loss {loss:.3f}")
            bar.update(step - bar.n)

        yield update


def configure_finetune(sub: Any) -> None:
    from ..finetune.train import DEFAULT_TARGETS, FinetuneOptions

    o = FinetuneOptions()
    help_text = (
        "train a LoRA adapter on your JSONL data (on the CPU) and store it as a model: the base plus the adapter"
    )
    p = sub.add_parser("finetune", help=help_text, description=help_text)
    p.add_argument("model", help="the stored base model (an instruct model: its chat template renders the data)")
    p.add_argument(
        "--data", type=Path, required=True, help='JSONL: {"messages": [...]} or {"prompt": ..., "completion": ...}'
    )
    p.add_argument("--name", required=True, help="name[:tag] to store the tuned model as")
    p.add_argument("--rank", type=int, default=o.rank, help=f"LoRA rank (default {o.rank})")
    p.add_argument("--alpha", type=float, default=o.alpha, help=f"LoRA alpha (default {o.alpha:g})")
    p.add_argument("--dropout", type=float, default=o.dropout, help=f"LoRA dropout (default {o.dropout:g})")
    p.add_argument("--target-modules", default=",".join(DEFAULT_TARGETS), help="comma-separated layer names")
    p.add_argument("--learning-rate", "--lr", type=float, default=o.learning_rate, help=f"default {o.learning_rate:g}")
    p.add_argument("--epochs", type=int, default=o.epochs, help=f"default {o.epochs}")
    p.add_argument("--batch-size", type=int, default=o.batch_size, help=f"default {o.batch_size}")
    p.add_argument("--max-length", type=int, default=o.max_length, help=f"tokens per example (default {o.max_length})")
    p.add_argument(
        "--held-out", type=float, default=o.held_out, help=f"fraction kept for evaluation (default {o.held_out:g})"
    )
    p.add_argument("--seed", type=int, default=o.seed)
    p.add_argument("--checkpoint-every", type=int, default=o.checkpoint_every, help="steps between checkpoints")
    p.add_argument("--threads", type=int, help="CPU threads (default: physical cores)")
    p.add_argument("--resume", action="store_true", help="continue the last run of this --name from its checkpoint")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_finetune)


def cmd_finetune(args: argparse.Namespace, settings: Settings) -> int:
    from ..finetune import FinetuneOptions, finetune
    from ..store import Store

    options = FinetuneOptions(
        rank=args.rank, alpha=args.alpha, dropout=args.dropout,
        target_modules=tuple(t.strip() for t in args.target_modules.split(",") if t.strip()),
        learning_rate=args.learning_rate, epochs=args.epochs, batch_size=args.batch_size, max_length=args.max_length,
        held_out=args.held_out, seed=args.seed, checkpoint_every=args.checkpoint_every, threads=args.threads,
    )
    store = Store.open(settings.models_dir)
    with step_progress(enabled=not args.json) as progress:
        result = finetune(store, args.model, args.data, args.name, options, settings, resume=args.resume,
                          progress=progress)
    summary = {
        "name": result.name, "base": result.base, "steps": result.steps, "train_examples": result.train_examples,
        "held_out_examples": result.held_out_examples, "held_out_loss_before": result.held_out_before,
        "held_out_loss_after": result.held_out_after, "last_loss": result.last_loss, "seconds": result.seconds,
        "resumed_from_step": result.resumed_from, "truncated_examples": result.truncated,
    }
    if args.json:
        print_json(summary)
        return 0
    resumed = f" (resumed at step {result.resumed_from})" if result.resumed_from else ""
    status(f"trained {result.name} on {result.base}: {result.steps} steps over {result.train_examples} examples "
           f"in {result.seconds:.0f} s{resumed}")
    if result.held_out_before is not None and result.held_out_after is not None:
        drop = result.held_out_drop or 0.0
        status(f"held-out loss ({result.held_out_examples} examples): {result.held_out_before:.3f} -> "
               f"{result.held_out_after:.3f} ({drop:.0%} lower)")
    status(f"run it: edgeslm run {result.name}; or name it in a Modelfile: ADAPTER {result.name}")
    return 0

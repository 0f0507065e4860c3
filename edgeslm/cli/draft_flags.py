"""The speculative-decoding flags that ``run``, ``bench`` and ``serve`` share."""

from __future__ import annotations

import argparse

from ..errors import UsageError
from ..speculation.config import DEFAULTS, KINDS, N_MIN, LookupConfig, LookupKind


def add_draft_flags(p: argparse.ArgumentParser, *, models: bool, per_model: bool = False) -> None:
    what = f"{'|'.join(KINDS)}{'|MODEL' if models else ''}"
    lookup, simple = DEFAULTS[LookupKind.LOOKUP], DEFAULTS[LookupKind.NGRAM_SIMPLE]
    help_text = (
        "speculative decoding: 'lookup' drafts from the text so far (the longest of its last n..n_min tokens "
        "seen before), 'ngram-simple' and 'ngram-map-k' as llama.cpp's"
        + (", a MODEL with the same vocabulary drafts with its own decoding" if models else "")
        + "; a draft is verified in one batch only when the cost measured at load says it pays"
    )
    if per_model:
        help_text += " (greedy requests of llama.cpp models; MODEL=: that model only; repeatable)"
        p.add_argument("--draft", action="append", default=[], metavar=f"[MODEL=]{'|'.join(KINDS)}", help=help_text)
    else:
        p.add_argument("--draft", metavar=what, help=help_text)
    p.add_argument("--draft-n", type=_positive, metavar="N",
                   help=f"the n-gram looked up (default: lookup {lookup[0]}, the others {simple[0]})")
    p.add_argument("--draft-m", type=_positive, metavar="M", help=f"the most tokens drafted (default {lookup[1]})")
    p.add_argument("--draft-n-min", type=_positive, metavar="N", help=f"lookup: the shortest n-gram (default {N_MIN})")
    p.add_argument("--draft-min-hits", type=_positive, metavar="H",
                   help="ngram-map-k: lookups of a key before it drafts (default 1, as llama.cpp)")


def lookup_config(args: argparse.Namespace, kind: str) -> LookupConfig:
    return LookupConfig.of(kind, args.draft_n, args.draft_m, args.draft_n_min, args.draft_min_hits)


def is_lookup(value: str) -> bool:
    return value in KINDS


def serve_drafts(args: argparse.Namespace) -> tuple[tuple[str, LookupConfig], ...]:
    """``serve --draft [MODEL=]KIND``: ("*" for every model, or the model's name, its config)."""
    out = []
    for spec in args.draft:
        model, _, kind = spec.rpartition("=")
        if not is_lookup(kind):
            raise UsageError(
                f"--draft {spec!r}: serve drafts by prompt lookup ({', '.join(KINDS)}), for every model or as "
                "MODEL=KIND; draft models are for 'edgeslm run --draft MODEL' for now",
                params="draft",
            )
        out.append((model or "*", lookup_config(args, kind)))
    return tuple(out)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is out of range; valid: 1 or more")
    return value

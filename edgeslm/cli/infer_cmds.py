"""CLI commands that run models: run (and interactive chat), embed, bench."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

from ..bench import BenchParams, BenchResult, bench_models
from ..config import DEFAULT_CONTEXT, DEFAULT_MODEL, Settings
from ..device_speed import Ceilings
from ..engines.base import SamplingParams
from ..errors import InvalidNameError, ModelNotFoundError
from ..generation import GenerationChunk, Model, embed, load, load_draft, stream_generate
from ..pull import ensure_pulled
from ..speculation import LookupConfig, SpecStats
from ..store import Store
from ..store.resolve import ResolvedModel
from ..units import format_mib, format_params
from .chat_loop import chat_loop
from .draft_flags import add_draft_flags, is_lookup, lookup_config
from .kv_flags import add_kv_flag
from .output import print_json, print_table, status
from .tuned import add_batch_flags, tuned_threads, tuning

Handler = Callable[[argparse.Namespace, Settings], int]


def _command(sub: Any, name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
    parser.set_defaults(run=handler)
    return parser


def _add_load_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ctx", type=int, help=f"context length (default: the model's, at most {DEFAULT_CONTEXT})")
    p.add_argument("--threads", type=int, help="CPU threads (default: physical cores)")
    add_kv_flag(p)


def configure(sub: Any) -> None:
    p = _command(sub, "run", cmd_run, "generate from a model: one prompt, or an interactive chat without one")
    p.add_argument(
        "words",
        nargs="*",
        metavar="[MODEL] [PROMPT]",
        help=f"a stored or builtin model (default {DEFAULT_MODEL}), then the prompt",
    )
    p.add_argument("--model", help="the model, when the first word could be read as either")
    p.add_argument("--system", help="system message (chat models)")
    p.add_argument("-i", "--interactive", action="store_true", help="chat even when stdin is not a terminal")
    p.add_argument("--verbose", dest="timings", action="store_true", help="print Ollama-style timings")
    add_draft_flags(p, models=True)
    _add_load_flags(p)
    add_batch_flags(p)
    # Unset flags take the model's stored parameters (``create``), then llama.cpp's defaults.
    s = SamplingParams()
    p.add_argument("--temperature", type=float, help=f"0 is greedy (default {s.temperature})")
    p.add_argument("--top-k", type=int, help=f"default {s.top_k}")
    p.add_argument("--top-p", type=float, help=f"default {s.top_p}")
    p.add_argument("--min-p", type=float, help=f"default {s.min_p}")
    p.add_argument("--repeat-penalty", type=float, help=f"default {s.repeat_penalty} (off)")
    p.add_argument("--repeat-last-n", type=int, help=f"the penalties' window (0: off; default {s.repeat_last_n})")
    p.add_argument("--frequency-penalty", type=float, help="-2 to 2 (0: off, the default)")
    p.add_argument("--presence-penalty", type=float, help="-2 to 2 (0: off, the default)")
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", action="append", help="stop string (repeatable)")
    p.add_argument("--max-tokens", type=int, help="-1: until the model stops or the context is full (the default)")

    p = _command(sub, "embed", cmd_embed, "embedding vectors (the model's pooling, else mean; L2-normalized) as JSON")
    p.add_argument("model")
    p.add_argument("texts", nargs="+", metavar="TEXT")
    p.add_argument("--truncate", action="store_true", help="cut a text longer than the model embeds (else refused)")
    _add_load_flags(p)

    p = _command(sub, "bench", cmd_bench, "prompt processing and generation speed, like llama-bench")
    p.add_argument("models", nargs="*", metavar="MODEL", default=[DEFAULT_MODEL])
    p.add_argument("-p", "--n-prompt", type=int, default=512)
    p.add_argument("-n", "--n-gen", type=int, default=128)
    p.add_argument("-r", "--repetitions", type=int, default=5)
    p.add_argument("-t", "--threads", type=int)
    add_batch_flags(p)
    add_kv_flag(p, default="f16, as llama-bench")
    add_draft_flags(p, models=True)
    fmt = p.add_mutually_exclusive_group()
    for name in ("json", "csv", "markdown"):
        fmt.add_argument(f"--{name}", dest="format", action="store_const", const=name)


_SAMPLING_FLAGS = ("temperature", "top_k", "top_p", "min_p", "repeat_penalty", "repeat_last_n", "frequency_penalty",
                   "presence_penalty", "seed")


def _sampling(args: argparse.Namespace, stored: Mapping[str, Any] | None = None) -> SamplingParams:
    """The flags given, over the model's stored parameters, over llama.cpp's defaults."""
    return SamplingParams.over(stored or {}, {k: getattr(args, k) for k in _SAMPLING_FLAGS})


@dataclass(frozen=True)
class Turn:
    """What one reply is asked for: the flags given, over a created model's stored defaults."""

    system: str | None
    stop: list[str]
    max_tokens: int
    sampling: SamplingParams


def _turn(args: argparse.Namespace, defaults: Mapping[str, Any]) -> Turn:
    """A created model's system prompt, stop strings and token limit where the flags say nothing."""
    stored = dict(defaults.get("parameters") or {})
    system = args.system if args.system is not None else defaults.get("system")
    stop = args.stop if args.stop is not None else list(stored.get("stop") or [])
    limit = stored.get("num_predict", -1)
    max_tokens = args.max_tokens if args.max_tokens is not None else (limit if limit > 0 else -1)
    return Turn(system, stop, max_tokens, _sampling(args, stored))


def _is_model(word: str, settings: Settings, store: Store) -> ResolvedModel | None:
    """``word`` resolved (a builtin pulled) when it names a model, else None: it starts the prompt.
    A .gguf path is a model whether it exists or not (the loader says what is wrong with it)."""
    try:
        return ensure_pulled(word, settings, store=store)
    except (ModelNotFoundError, InvalidNameError):
        if word.endswith(".gguf"):
            raise
        return None


def split_model_and_prompt(
    args: argparse.Namespace, settings: Settings, store: Store
) -> tuple[ResolvedModel, str | None]:
    """``run [MODEL] [PROMPT]``: the first word is the model only if it names one; the model
    comes back resolved, looked up once."""
    words = list(args.words)
    if args.model:
        return ensure_pulled(args.model, settings, store=store), " ".join(words) or None
    if words and (found := _is_model(words[0], settings, store)) is not None:
        return found, " ".join(words[1:]) or None
    return ensure_pulled(DEFAULT_MODEL, settings, store=store), " ".join(words) or None


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    _sampling(args)  # validate before loading anything
    lookup = lookup_config(args, args.draft) if args.draft and is_lookup(args.draft) else None
    store = Store.open(settings.models_dir)  # opened once: the model, its draft
    found, prompt = split_model_and_prompt(args, settings, store)
    args.threads = tuned_threads(args, settings)  # edgeslm tune's, where it measured this machine
    model = load(found, ctx=args.ctx, threads=args.threads, settings=settings, kv=args.kv_type,
                 tuning=tuning(args, settings))
    draft: LookupConfig | Model | None = lookup
    try:
        turn = _turn(args, model.defaults)
        history = list(model.defaults.get("messages") or [])
        if args.draft and lookup is None:
            draft = load_draft(ensure_pulled(args.draft, settings, store=store), model, threads=args.threads,
                               settings=settings)
        model.info.check_generates(model.name)
        if not model.has_chat_template:
            status(f"{model.name} has no chat template: running as plain completion")
        if prompt is None and not args.interactive and not sys.stdin.isatty():
            prompt = sys.stdin.read()
        if prompt is None:
            return chat_loop(model, partial(_stream, model, turn=turn, draft=draft, timings=args.timings),
                             system=turn.system, examples=history)
        messages = ([{"role": "system", "content": turn.system}] if turn.system else []) + history
        request: Any = messages + [{"role": "user", "content": prompt}] if model.has_chat_template else prompt
        _stream(model, request, turn=turn, draft=draft, timings=args.timings)
        return 0
    finally:
        if isinstance(draft, Model):
            draft.close()
        model.close()


def _stream(model: Model, prompt: Any, *, turn: Turn, draft: LookupConfig | Model | None, timings: bool) -> str:
    """Print tokens as they come; Ctrl-C stops generation (the caller's loop goes on)."""
    parts: list[str] = []
    last: GenerationChunk | None = None
    stats = SpecStats()
    try:
        for last in stream_generate(model, prompt, max_tokens=turn.max_tokens, sampling=turn.sampling,
                                    stop=turn.stop, draft=draft, spec_stats=stats):
            sys.stdout.write(last.text)
            sys.stdout.flush()
            parts.append(last.text)
    except KeyboardInterrupt:
        status("\n[generation stopped]")
    sys.stdout.write("\n")
    sys.stdout.flush()
    if timings and last is not None:
        _print_timings(model, last)
        if draft is not None:
            _print_speculation(draft, stats, turn.sampling)
    return "".join(parts)


def _print_speculation(draft: LookupConfig | Model, stats: SpecStats, sampling: SamplingParams) -> None:
    if sampling.penalized:
        status(f"{'draft:':22}off (penalties decode plainly: their history is not replayed in a batch)")
        return
    kind = f"model {draft.name}" if isinstance(draft, Model) else draft.describe()
    status(f"{'draft:':22}{kind}")
    status(f"{'draft accepted:':22}{stats.accepted}/{stats.drafted} token(s) ({stats.rate:.0%}) in {stats.verifies} "
           f"verify batch(es); {stats.declined} draft(s) not worth verifying")


def _print_timings(model: Model, last: GenerationChunk) -> None:
    total = model.load_seconds + last.prompt_seconds + last.generation_seconds
    rows = [
        ("total duration", f"{total:.3f}s"),
        ("load duration", f"{model.load_seconds * 1000:.2f}ms"),
        ("prompt eval count", f"{last.prompt_tokens} token(s)"),
        ("prompt eval duration", f"{last.prompt_seconds * 1000:.2f}ms"),
        ("prompt eval rate", f"{last.prompt_tps:.2f} tokens/s"),
        ("eval count", f"{last.generation_tokens} token(s)"),
        ("eval duration", f"{last.generation_seconds * 1000:.2f}ms"),
        ("eval rate", f"{last.generation_tps:.2f} tokens/s"),
        ("peak memory", format_mib(last.peak_memory)),
    ]
    for key, value in rows:
        status(f"{key + ':':22}{value}")


def cmd_embed(args: argparse.Namespace, settings: Settings) -> int:
    threads = tuned_threads(args, settings)
    model = load(ensure_pulled(args.model, settings), ctx=args.ctx, threads=threads, settings=settings, kv=args.kv_type)
    try:
        vectors = embed(model, args.texts, truncate=args.truncate)
    finally:
        model.close()
    print(json.dumps(vectors[0] if len(vectors) == 1 else vectors))
    return 0


def cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    draft: dict[str, Any] | None = None
    store = Store.open(settings.models_dir)
    if args.draft and is_lookup(args.draft):
        draft = lookup_config(args, args.draft).as_args()
    elif args.draft:
        draft_model = ensure_pulled(args.draft, settings, store=store)
        draft = {"model": str(draft_model.path), "name": draft_model.name}
    kv = str(args.kv_type) if args.kv_type else "f16"
    threads = tuned_threads(args, settings)
    tuned = tuning(args, settings)
    params = BenchParams(args.n_prompt, args.n_gen, args.repetitions, threads, draft, kv_type=kv,
                         n_ubatch=tuned.n_ubatch, flash_attn=tuned.flash_attn, use_mmap=tuned.use_mmap is not False)
    targets = [ensure_pulled(name, settings, store=store) for name in args.models]
    for target in targets:
        target.info.check_has_logits(target.name)
    results = bench_models(targets, params)
    if args.format == "csv":  # llama-bench's columns
        print(_bench_csv(results), end="")
        return 0
    ceilings = _ceilings(settings, results[0].threads if results else 1)
    if args.format == "json":
        print_json([{**r.to_dict(), "of_limit": [_of_limit(r, t, ceilings) for t in r.tests],
                     "ceilings": asdict(ceilings)} for r in results])
    else:
        _bench_table(results, ceilings, markdown=args.format == "markdown")
    return 0


def _ceilings(settings: Settings, threads: int) -> Ceilings:
    """The machine's memory bandwidth and matmul rate: ``tune``'s where it measured them, else now."""
    from ..device_speed import measure
    from ..plan.profile import profile_ceilings

    kept = profile_ceilings(settings.home)
    if kept is not None:
        return kept
    status("measuring this machine's memory bandwidth and matmul rate (edgeslm tune keeps them)")
    return measure(threads)


def _of_limit(r: BenchResult, t: Any, ceilings: Ceilings) -> float | None:
    """The share of the machine's ceiling a test reached: decode of the read bandwidth (the weights a
    token reads × tok/s), prefill of the matmul rate (2 × parameters × tok/s)."""
    from ..device_speed import decode_fraction, prefill_fraction

    if t.test.startswith("tg") and r.decode_bytes:
        return decode_fraction(t.mean, r.decode_bytes, ceilings)
    if t.test.startswith("pp"):
        return prefill_fraction(t.mean, r.n_params, ceilings)
    return None


def _bench_rows(results: list[BenchResult], ceilings: Ceilings) -> list[tuple[Any, ...]]:
    return [
        (
            r.model,
            r.runtime,
            format_mib(r.file_size),
            format_params(r.n_params),
            f"{r.bits_per_weight:.2f}",
            r.threads,
            t.test + (f" ({t.accepted}/{t.drafted} accepted)" if t.drafted else "")
            + (f" kv {r.kv_type}" if r.kv_type != "f16" else ""),
            f"{t.mean:.2f} ± {t.stdev:.2f}",
            "" if (share := _of_limit(r, t, ceilings)) is None else f"{100 * share:.0f} %",
            f"{r.load_seconds * 1000:.0f}",
            format_mib(r.peak_rss),
        )
        for r in results
        for t in r.tests
    ]


_BENCH_HEADERS = ("model", "runtime", "size", "params", "bpw", "threads", "test", "t/s", "of limit", "load ms",
                  "peak RSS")
_BENCH_RIGHT = (2, 3, 4, 5, 7, 8, 9, 10)


def _bench_table(results: list[BenchResult], ceilings: Ceilings, *, markdown: bool) -> None:
    rows = _bench_rows(results, ceilings)
    if not markdown:
        print_table(_BENCH_HEADERS, rows, right=_BENCH_RIGHT)
        return
    print("| " + " | ".join(_BENCH_HEADERS) + " |")
    print("|" + "|".join("---:" if i in _BENCH_RIGHT else "---" for i in range(len(_BENCH_HEADERS))) + "|")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")


def _bench_csv(results: list[BenchResult]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        [
            "model",
            "file_size",
            "n_params",
            "bits_per_weight",
            "threads",
            "test",
            "mean_tps",
            "stdev_tps",
            "load_seconds",
            "peak_rss",
            "samples_tps",
            "drafted",
            "accepted",
        ]
    )
    for r in results:
        for t in r.tests:
            writer.writerow(
                [
                    r.model,
                    r.file_size,
                    r.n_params,
                    r.bits_per_weight,
                    r.threads,
                    t.test,
                    f"{t.mean:.3f}",
                    f"{t.stdev:.3f}",
                    f"{r.load_seconds:.4f}",
                    r.peak_rss,
                    json.dumps(list(t.samples_tps)),
                    t.drafted,
                    t.accepted,
                ]
            )
    return out.getvalue()


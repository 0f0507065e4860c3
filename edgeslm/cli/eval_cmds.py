"""CLI: eval and compare."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import InvalidParameterError, ModelNotFoundError
from ..evaluate.core import REFERENCE_TAGS, EvalSettings, evaluate, load_text
from ..evaluate.kept import latest_results
from ..evaluate.report import HEADERS, markdown_table, plot, result_row
from ..evaluate.result import EvalResult
from ..formats.kv_cache import KVCache
from ..store import ModelName, Store, parse_name
from .kv_flags import add_kv_flag
from .output import print_json, print_table, progress_bar, status, task_progress


def configure(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "eval",
        help="perplexity, and KL-divergence against a reference, of stored models",
        description="Scores like llama-perplexity: chunks of --ctx tokens, second half of each scored.",
    )
    p.set_defaults(run=cmd_eval)
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--reference", help="the model to compare against (default: its f32/bf16/f16 variant)")
    p.add_argument("--all-variants", action="store_true", help="evaluate every tag of NAME against the reference")
    p.add_argument("--text", type=Path, help="UTF-8 text file (default: bundled WikiText-2 sample)")
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--chunks", type=int, help="at most this many chunks (default: all)")
    p.add_argument("--threads", type=int)
    add_kv_flag(p, default="f16; alone, the reference is the model itself with an f16 cache: what the type adds")
    p.add_argument("--no-speed", action="store_true", help="skip the tok/s and memory measurement")
    p.add_argument("--force", action="store_true", help="re-run even when a result is kept")
    p.add_argument("--task", help="task accuracy instead of KLD, comma-separated: humaneval (greedy pass@1, each "
                   "completion run sandboxed), tools (the tool-call suite through the OpenAI route's path), "
                   "retrieval (an embedding model: recall@5 and MRR on the kept WikiText set)")
    p.add_argument("--limit", type=int, help="with --task: only the first N problems (a quick look)")
    p.add_argument("--slots", type=int, default=4, help="with --task: problems decoded side by side (default 4)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", dest="format", action="store_const", const="json")
    fmt.add_argument("--markdown", dest="format", action="store_const", const="markdown")

    p = sub.add_parser("compare", help="table (and plot) of kept evaluation results")
    p.set_defaults(run=cmd_compare)
    p.add_argument("names", nargs="+", metavar="NAME", help="models, or ':tag' for another tag of the first")
    p.add_argument("--plot", type=Path, metavar="PNG", help="write size vs KLD (tok/s shown) to this PNG")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", dest="format", action="store_const", const="json")
    fmt.add_argument("--markdown", dest="format", action="store_const", const="markdown")


def _expand(names: list[str]) -> list[ModelName]:
    """'m:q8_0 :q5_1 :q4_0' -> m:q8_0, m:q5_1, m:q4_0."""
    out: list[ModelName] = []
    for text in names:
        if text.startswith(":"):
            if not out:
                raise InvalidParameterError(f"{text}: a ':tag' needs a full name before it")
            out.append(out[0].with_tag(text[1:]))
        else:
            out.append(parse_name(text))
    return out


def _default_reference(store: Store, name: ModelName) -> ModelName:
    model = store.find(name)
    if model is not None and model.adapters:  # a tuned model is compared with its base: before and after
        plain = [m for m in store.manifests() if m.digest == model.digest and not m.adapters]
        named = [m for m in plain if str(m.name) == model.source.get("base_name")]
        if named or plain:
            return (named or plain)[0].name
    for tag in REFERENCE_TAGS:
        for candidate in (name.variant(tag), name.with_tag(tag)):
            if store.find(candidate) is not None:
                return candidate
    raise ModelNotFoundError(
        f"no reference for {name}: give --reference (the file you pulled, say: --reference {name}), or make "
        f"one with 'edgeslm quantize {name} --type f16 --allow-requantize'"
    )


def cmd_eval(args: argparse.Namespace, settings: Settings) -> int:
    store = Store.open(settings.models_dir)
    if args.task:
        return _eval_tasks(args, settings, store)
    kv = args.kv_type or KVCache()
    eval_settings = EvalSettings(ctx=args.ctx, chunks=args.chunks, threads=args.threads, speed=not args.no_speed,
                                 kv=str(kv))
    text = load_text(args.text)
    names = _expand(args.names)
    # a KV cache type alone: the reference is the model itself with llama.cpp's F16 cache (what the type adds)
    default = names[0] if not kv.default else None
    reference = parse_name(args.reference) if args.reference else default or _default_reference(store, names[0])
    if args.all_variants:
        names = [m.name for parent in names for m in store.manifests() if parent.owns(m.name)]
    results = []
    for name in names:
        ref = None if name == reference and kv.default else reference
        with progress_bar(None, f"{name}", enabled=args.format is None) as bar:
            tick = (lambda done, total: bar(1)) if bar else None  # noqa: E731
            results.append(
                evaluate(
                    store, name, ref, text, eval_settings, force=args.force, progress=tick, engine_name=settings.engine
                )
            )
    _print(results, args.format)
    return 0


TASK_HEADERS = ("model", "task", "problems", "passed", "score", "seconds", "sandbox / MRR")


def _eval_tasks(args: argparse.Namespace, settings: Settings, store: Store) -> int:
    from ..pull import ensure_pulled
    from ..tasks.core import parse_tasks, run_task
    from ..tasks.sandbox import FULL

    tasks = parse_tasks(args.task)
    names = _expand(args.names)
    if args.all_variants:
        names = [m.name for parent in names for m in store.manifests() if parent.owns(m.name)]
    results = []
    for name in names:
        model = ensure_pulled(str(name), settings, store=store)
        for task in tasks:
            with task_progress(f"{name} {task.value}", enabled=args.format is None) as tick:
                results.append(run_task(
                    store, model, task, limit=args.limit, slots=args.slots, threads=args.threads,
                    home=str(settings.home), force=args.force, progress=tick,
                ))
    if args.format == "json":
        print_json([_task_summary(r) for r in results])
        return 0
    rows = [[r.model, r.task, str(r.problems), str(r.passed), f"{100 * r.score:.1f} %", f"{r.seconds:.0f}",
             f"MRR {_mrr(r):.3f}" if r.task == "retrieval" else "—" if not r.isolation
             else "isolated" if all(p in r.isolation for p in FULL) else "rlimits only: " + ",".join(r.isolation)]
            for r in results]
    print_table(TASK_HEADERS, rows, right=(2, 3, 4, 5))
    return 0


def _print(results: list[EvalResult], fmt: str | None, tasks: Mapping[str, Mapping[Any, Any]] | None = None) -> None:
    """The results; with ``tasks`` (compare), each model's kept task accuracy beside them."""
    cells = {name: _task_cells(kept) for name, kept in (tasks or {}).items()}
    extra = TASK_COLUMNS if tasks is not None else ()
    if fmt == "json":
        print_json([{**r.to_dict(), **({"tasks": {t.value: _task_summary(k) for t, k in tasks.get(r.model, {}).items()}}
                                      if tasks is not None else {})} for r in results])
    elif fmt == "markdown":
        print(markdown_table(results, cells, extra), end="")
    else:
        rows = [(*result_row(r), *cells.get(r.model, ("",) * len(extra))) for r in results]
        print_table((*HEADERS, *extra), rows, right=tuple(range(2, len(HEADERS) + len(extra))))


TASK_COLUMNS = ("pass@1", "tools", "recall@5")


def _task_cells(kept: Mapping[Any, Any]) -> tuple[str, ...]:
    """'61.6% (164)' per task column, blank where never measured."""
    from ..evaluate.task_results import Task

    def cell(task: Task) -> str:
        r = kept.get(task)
        return "" if r is None else f"{100 * r.score:.1f}% ({r.problems})"

    return cell(Task.HUMANEVAL), cell(Task.TOOLS), cell(Task.RETRIEVAL)


def _mrr(r: Any) -> float:
    from ..tasks.retrieval import mrr

    return mrr([a.outcome for a in r.answers])


def _task_summary(r: Any) -> dict[str, Any]:
    """A task result without its answers (they stay in the kept file); retrieval's MRR beside its recall@5."""
    return {**{k: v for k, v in r.to_dict().items() if k != "answers"},
            **({"mrr": round(_mrr(r), 4)} if r.task == "retrieval" else {})}


def cmd_compare(args: argparse.Namespace, settings: Settings) -> int:
    store = Store.open(settings.models_dir)
    wanted = _expand(args.names)
    if len(wanted) == 1:  # one model: all its variants
        wanted = [m.name for m in store.manifests() if wanted[0].owns(m.name)]
    kept = latest_results(store, [m for n in wanted if (m := store.find(n)) is not None])
    missing = [str(n) for n in wanted if str(n) not in kept]
    if missing:
        status(f"no kept results for {', '.join(missing)}; run 'edgeslm eval' on them first")
    results = sorted(kept.values(), key=lambda r: r.file_size)
    if not results:
        raise ModelNotFoundError("nothing to compare: no evaluation results are kept for these models")
    from ..evaluate.task_results import latest_task_results

    tasks = latest_task_results(store, [m for n in wanted if (m := store.find(n)) is not None])
    _print(results, args.format, tasks)
    if args.plot:
        notes = {name: " ".join(f"{label} {c.split(' ')[0]}" for label, c in zip(TASK_COLUMNS, _task_cells(k),
                                                                                  strict=True) if c)
                 for name, k in tasks.items()}
        plot(results, args.plot, f"{wanted[0].base}: size vs KL-divergence", notes)
        status(f"wrote {args.plot}")
    return 0

"""``edgeslm optimize``: build candidates, measure them, keep those that meet the constraints, rank.

Candidates are the reference (F16/BF16/F32, built from the model when the store has none),
the model as stored, one variant per uniform type (``quantize``), and — with ``mixed`` or when
a size budget falls between the candidates — a per-tensor mix planned for that budget
(``sensitivity`` + ``mixed``). Each is measured by ``evaluate`` (quality against the reference
on the first chunks of the text, tok/s and peak RSS by the bench worker); everything built or
measured is kept in the store, so a run that is interrupted resumes where it stopped. The
winner is tagged ``NAME:best``; nothing is deleted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from ..convert.to_mlx import MlxRecipe, convert_to_mlx
from ..convert.to_onnx import Method, Precision, convert_to_onnx, default_tag, onnx_requested
from ..convert.variants import stored_build
from ..engines.base import DEFAULT_ENGINE, LoadParams, open_engine
from ..errors import InvalidParameterError
from ..evaluate.core import REFERENCE_TAGS, EvalSettings, EvalText, evaluate
from ..evaluate.result import EvalResult
from ..formats.gguf_header import read_gguf_header
from ..formats.model_format import Runtime
from ..formats.model_info import estimate_memory
from ..formats.quant_types import QUANT_TYPES, QuantizeOptions, QuantType, parse_quant_types
from ..quantize import check_request, is_quantized, quantize
from ..store import ModelName, Store, parse_name
from ..store.records import Manifest
from ..store.resolve import from_manifest
from ..units import format_bytes
from .constraints import Constraints, Metrics, Ranking, rank
from .history import remember
from .mixed import (
    IMATRIX_PALETTE,
    PALETTE,
    MixPlan,
    find_slots,
    fixed_bytes,
    mismatches,
    plan_mix,
    plan_options,
    predicted_costs,
    relative_errors,
    smallest_size,
)
from .sensitivity import CalibrationParams, calibration_chunks, check_reference, measure_sensitivity

log = logging.getLogger(__name__)
DEFAULT_TYPES = "Q8_0,Q6_K,Q5_K_M,Q5_1,Q4_K_M,Q4_0"
SNUG = 0.98  # a fitting candidate this close to the size budget leaves no room for a mix
# (candidate, step, done, total): 'smollm2:q4_0', 'evaluating', 3, 8
Progress = Callable[[str, str, int | None, int | None], None]


@dataclass(frozen=True)
class OptimizeParams:
    """What ``optimize`` tries and how: the constraints, the uniform types, the mix, the runtimes and
    their variants, the evaluation and calibration settings, and the tag for the winner."""

    constraints: Constraints = field(default_factory=Constraints)
    types: tuple[QuantType, ...] = tuple(parse_quant_types(DEFAULT_TYPES))
    mixed: bool | None = None  # None: plan a mix when a size budget falls between the candidates
    imatrix: bool = False  # calibrate the reference on the calibration chunks; every llama.cpp candidate uses it
    eval: EvalSettings = field(default_factory=lambda: EvalSettings(ctx=512, chunks=8))
    calibration: CalibrationParams = field(default_factory=CalibrationParams)
    reference: ModelName | None = None
    tag: str | None = "best"
    threads: int | None = None
    runtimes: tuple[Runtime, ...] = (Runtime.LLAMA_CPP,)
    onnx: tuple[tuple[Precision, Method], ...] = ((Precision.INT4, Method.BUILDER), (Precision.INT8, Method.BUILDER))
    mlx: tuple[MlxRecipe, ...] = (MlxRecipe(bits=4), MlxRecipe(bits=8))
    task_limit: int | None = None  # with --min-pass / --min-tool-acc: the first N problems of each task
    task_slots: int = 4
    home: str | None = None  # the home the task runner's worker opens (default: as the environment says)


CandidateKind = Literal["reference", "source", "uniform", "mixed", "onnx", "mlx"]


@dataclass(frozen=True)
class Candidate:
    name: str
    kind: CandidateKind
    recipe: str
    command: str  # how to make it again
    result: EvalResult
    metrics: Metrics


@dataclass(frozen=True)
class MixedReport:
    name: str
    budget: int
    plan: MixPlan
    types: dict[str, int]  # parameters per type
    calibration_tokens: int
    sensitivity: dict[str, float]  # probe -> KLD at the injected error
    mismatches: tuple[str, ...]


@dataclass(frozen=True)
class OptimizeResult:
    model: str
    reference: str
    text: str
    calibration_text: str
    params: OptimizeParams
    candidates: tuple[Candidate, ...]
    ranking: Ranking
    mixed: MixedReport | None
    tagged: str | None
    notes: tuple[str, ...]
    seconds: float

    def candidate(self, name: str) -> Candidate:
        return next(c for c in self.candidates if c.name == name)


class _Run:
    """One optimize run's state: what was found, built and measured so far."""

    def __init__(
        self,
        store: Store,
        source: Manifest,
        text: EvalText,
        params: OptimizeParams,
        progress: Progress | None,
        engine: str,
    ) -> None:
        self.store, self.source, self.text, self.params, self.engine = store, source, text, params, engine
        self.progress = progress or (lambda *_: None)
        self.notes: list[str] = []
        self.candidates: list[Candidate] = []
        self.requantize = is_quantized(source)
        self.imatrix: str | None = None  # the importance matrix file, once calibrated

    def note(self, text: str) -> None:
        log.info("%s", text)
        self.notes.append(text)

    # -- reference ----------------------------------------------------------------------------

    def reference(self) -> Manifest:
        if self.params.reference is not None:
            return self.store.get(self.params.reference)
        for tag in REFERENCE_TAGS:
            if (found := self.store.find(self.source.name.variant(tag))) is not None:
                return found
        if not self.requantize:
            return self.source
        self.note(
            f"no F32/BF16/F16 variant of {self.source.name.base} was stored: built {self.source.name.base}:f16 from "
            f"{self.source.name}; as {self.source.name} is already {self.source.info.file_type or 'quantized'}, the "
            "reference is its dequantized weights, so quality is measured against it, not the original checkpoint"
        )
        return self.build(QUANT_TYPES["F16"], QuantizeOptions(allow_requantize=True), None)

    def build(self, qtype: QuantType, options: QuantizeOptions, name: ModelName | None) -> Manifest:
        label = str(name or self.source.name.variant(qtype.name.lower()))

        def report(_q: QuantType, done: int, total: int, _tensor: str) -> None:
            self.progress(label, "quantizing", done, total)

        self.progress(label, "quantizing", None, None)
        target = (lambda _q: name) if name is not None else None
        results = quantize(self.store, self.source.name, [qtype], options, target=target, progress=report)
        return results[0].manifest

    # -- measuring ----------------------------------------------------------------------------

    def measure(
        self, manifest: Manifest, reference: Manifest, kind: CandidateKind, recipe: str, command: str
    ) -> Candidate:
        label = str(manifest.name)
        same = next((c for c in self.candidates if c.result.model_digest == manifest.digest), None)
        if same is not None:
            self.note(f"{label} is the same file as {same.name}; measured once")
            return same
        settings = replace(self.params.eval, threads=self.params.threads)

        def report(done: int, total: int) -> None:
            step = "measuring tok/s and memory" if done == total and settings.speed else "evaluating"
            self.progress(label, step, done, total)

        self.progress(label, "evaluating", 0, settings.chunks)
        ref = None if manifest.digest == reference.digest else reference.name
        result = evaluate(self.store, manifest.name, ref, self.text, settings, progress=report, engine_name=self.engine)
        memory = estimate_memory(manifest.info, self.params.constraints.memory_ctx).total_bytes
        candidate = Candidate(label, kind, recipe, command, result, Metrics.from_result(result, memory))
        self.candidates.append(candidate)
        return candidate


def optimize(
    store: Store,
    name: ModelName,
    text: EvalText,
    params: OptimizeParams,
    *,
    calibration_text: EvalText | None = None,
    progress: Progress | None = None,
    engine_name: str = DEFAULT_ENGINE,
) -> OptimizeResult:
    """Measure the candidates for ``name`` and rank them under ``params.constraints``."""
    start = time.perf_counter()
    run = _Run(store, store.get(name), text, params, progress, engine_name)
    run.source.info.check_has_logits(str(name))  # not yet: an embedding model's variants ranked by recall
    calibration = calibration_text or text
    budget = _check_budget(run)  # refuse what cannot work before building anything
    if params.mixed and budget is None:
        raise InvalidParameterError(
            "mixed plans for a size budget: give max_size or max_memory", params=("mixed", "max_size", "max_memory")
        )
    if params.mixed or budget is not None or params.imatrix:
        _check_split(run, text, calibration)
    reference = run.reference()
    if params.imatrix:
        run.imatrix = _calibrate(run, reference, calibration)
    _measure_uniform(run, reference)
    if Runtime.ONNXRUNTIME in params.runtimes:
        _measure_folders(run, reference, _onnx_variants(run))
    if Runtime.MLX in params.runtimes:
        _measure_folders(run, reference, _mlx_variants(run))
    mixed = None
    if Runtime.LLAMA_CPP in params.runtimes and _wants_mix(run, budget):
        assert budget is not None
        mixed = _measure_mixed(run, reference, calibration, budget)
    _measure_tasks(run)
    ranking = rank(params.constraints, [c.metrics for c in run.candidates])
    tagged = _tag(run, ranking) if params.tag else None
    winner = ranking.winner.metrics.name if ranking.winner else None
    remember(store, run.source.name.base, params.constraints, budget, winner, tagged)
    return OptimizeResult(
        str(run.source.name), str(reference.name), text.label, calibration.label, params, tuple(run.candidates),
        ranking, mixed, tagged, tuple(run.notes), time.perf_counter() - start,
    )


def _measure_tasks(run: _Run) -> None:
    """Task accuracy, where the constraints ask for it: the candidates that meet every other
    constraint, best first, until one meets the task thresholds too (each costs a task run; kept
    results are reused). Those after it are not measured: the winner is already found."""
    constraints = run.params.constraints
    if not constraints.tasks:
        return
    from ..evaluate.task_results import Task
    from ..tasks.core import kept_task, run_task

    p = run.params
    fitting = [v for v in rank(constraints.without_tasks(), [c.metrics for c in run.candidates]).verdicts if v.fits]
    for verdict in fitting:
        i = next(i for i, c in enumerate(run.candidates) if c.name == verdict.metrics.name)
        candidate = run.candidates[i]
        model = from_manifest(run.store, run.store.get(parse_name(candidate.name)))
        scores = {}
        for task in constraints.tasks:

            def report(done: int, total: int, passed: int, task: str = task, name: str = candidate.name) -> None:
                run.progress(name, f"{task}, {passed} passing", done, total)

            result = run_task(run.store, model, Task(task), limit=p.task_limit, slots=p.task_slots,
                              threads=p.threads, home=p.home, progress=report)
            scores[task] = result.score
        metrics = replace(candidate.metrics, pass_at_1=scores.get("humaneval"), tool_acc=scores.get("tools"))
        run.candidates[i] = replace(candidate, metrics=metrics)
        if not constraints.check(metrics):
            break
    for i, candidate in enumerate(run.candidates):  # the others: what the store measured before, nothing run
        if candidate.metrics.pass_at_1 is None and candidate.metrics.tool_acc is None:
            manifest = next((m for m in run.store.manifests() if str(m.name) == candidate.name), None)
            if manifest is None:  # not stored: nothing kept for it
                continue
            model = from_manifest(run.store, manifest)
            kept = {t: kept_task(run.store, model, Task(t), p.task_limit) for t in constraints.tasks}
            run.candidates[i] = replace(candidate, metrics=replace(
                candidate.metrics, pass_at_1=(r.score if (r := kept.get("humaneval")) else None),
                tool_acc=(r.score if (r := kept.get("tools")) else None)))
    unmeasured = len(run.candidates) - sum(
        c.metrics.pass_at_1 is not None or c.metrics.tool_acc is not None for c in run.candidates)
    if unmeasured:
        run.note(f"task accuracy measured on the candidates meeting every other constraint, best first, until one met "
                 f"the task thresholds (kept results shown for the others); {unmeasured} other candidate(s) not "
                 "measured on tasks")


def _check_budget(run: _Run) -> int | None:
    """The size budget the constraints imply, refused at once when no file can meet it."""
    c = run.params.constraints
    header = read_gguf_header(run.store.gguf_path(run.source, "optimize"), label=str(run.source.name))
    kv = estimate_memory(run.source.info, c.memory_ctx).kv_cache_bytes
    budget = c.size_budget(kv)
    smallest = smallest_size(header, find_slots(header))
    if budget is not None and budget < smallest:
        if c.max_memory is not None and c.max_memory - kv == budget:
            raise InvalidParameterError(
                f"max_memory {format_bytes(c.max_memory)} at {c.memory_ctx:,} tokens of context is below what "
                f"{run.source.name.base} can take: the KV cache alone is {format_bytes(kv)} and the smallest file is "
                f"{format_bytes(smallest)}, so at least {format_bytes(kv + smallest)}; raise it or lower ctx_memory",
                params=("max_memory", "ctx_memory"),
            )
        raise InvalidParameterError(
            f"max_size {format_bytes(budget)} is below the smallest file {run.source.name.base} can be made into: "
            f"{format_bytes(smallest)} (every tensor at its smallest type); raise max_size",
            params="max_size",
        )
    return budget


def _check_split(run: _Run, text: EvalText, calibration: EvalText) -> None:
    """Refuse at once a text too short for evaluation and calibration chunks kept apart."""
    if calibration.digest != text.digest:
        return
    p, e = run.params.calibration, run.params.eval
    engine = open_engine(run.engine, run.store.gguf_path(run.source, "optimize"), LoadParams(n_ctx=64))
    try:
        n_tokens = len(engine.tokenize(text.text, add_special=True, parse_special=False))
    finally:
        engine.close()
    evaluation = (e.chunks or 0) * e.ctx
    if n_tokens - evaluation < p.chunks * p.ctx or e.chunks is None:
        raise InvalidParameterError(
            f"{text.label} has {n_tokens:,} tokens: too few for {e.chunks or 'all'} evaluation chunk(s) of {e.ctx} "
            f"plus {p.chunks} calibration chunk(s) of {p.ctx} kept apart; give a longer text, fewer chunks, "
            "or a separate calibration text",
            params=("text", "chunks", "calibration"),
        )


def _measure_uniform(run: _Run, reference: Manifest) -> None:
    ref_cmd = "(stored)" if reference.source.get("kind") != "quantize" else _command(run, "F16")
    run.measure(reference, reference, "reference", f"reference ({reference.info.file_type or 'F16'})", ref_cmd)
    if run.source.digest != reference.digest:
        run.measure(run.source, reference, "source", f"as stored ({run.source.info.file_type or '?'})", "(stored)")
    if Runtime.LLAMA_CPP not in run.params.runtimes:
        return
    options = QuantizeOptions(allow_requantize=run.requantize, threads=run.params.threads, imatrix=run.imatrix)
    if run.requantize:
        run.note(
            f"{run.source.name} is already {run.source.info.file_type or 'quantized'}: every variant is made from its "
            "dequantized weights, so its error adds to the source's"
        )
    for qtype in run.params.types:
        if qtype.name == reference.info.file_type:
            continue
        try:
            warnings = check_request(run.store, run.source, qtype, options)
        except InvalidParameterError as exc:
            run.note(f"{qtype.name} skipped: {exc}")
            continue
        for warning in warnings:
            if "dequantized weights" not in warning:  # said once, below
                run.note(f"{qtype.name}: {warning}")
        name = run.source.name.variant(f"{qtype.name.lower()}-imat") if run.imatrix else None
        manifest = run.build(qtype, options, name)
        recipe = f"{qtype.name} (imatrix)" if run.imatrix else qtype.name
        run.measure(manifest, reference, "uniform", recipe, _command(run, qtype.name))


@dataclass(frozen=True)
class _FolderVariant:
    """An ONNX or MLX variant of the source: how it is tagged, asked for, shown, and built."""

    kind: CandidateKind
    tag: str
    requested: str  # as lineage records it: a stored build asked for otherwise is rebuilt
    recipe: str
    command: str
    build: Callable[[ModelName, Callable[[str], None]], Manifest]


def _onnx_variants(run: _Run) -> list[_FolderVariant]:
    def variant(precision: Precision, method: Method) -> _FolderVariant:
        def build(name: ModelName, say: Callable[[str], None]) -> Manifest:
            return convert_to_onnx(run.store, run.source.name, precision=precision, method=method, target=name,
                                   progress=say).manifest

        command = f"edgeslm convert {run.source.name} --to onnx --precision {precision.value} --method {method.value}"
        return _FolderVariant("onnx", default_tag(precision, method), onnx_requested(precision, method),
                              f"ONNX {precision.value.upper()} ({method.value})", command, build)

    return [variant(precision, method) for precision, method in run.params.onnx]


def _mlx_variants(run: _Run) -> list[_FolderVariant]:
    def variant(recipe: MlxRecipe) -> _FolderVariant:
        def build(name: ModelName, say: Callable[[str], None]) -> Manifest:
            return convert_to_mlx(run.store, run.source.name, recipe, target=name, progress=say).manifest

        what = recipe.tag.removeprefix("mlx-")
        flags = f"--q-recipe {recipe.mixed}" if recipe.mixed else f"--q-bits {recipe.bits}" if recipe.bits else ""
        if recipe.bits and recipe.group_size != 64:
            flags += f" --q-group-size {recipe.group_size}"
        command = f"edgeslm convert {run.source.name} --to mlx {flags} --dtype {recipe.dtype}".replace("  ", " ")
        return _FolderVariant("mlx", recipe.tag, recipe.requested, f"MLX {what}", command, build)

    return [variant(recipe) for recipe in run.params.mlx]


def _measure_folders(run: _Run, reference: Manifest, variants: list[_FolderVariant]) -> None:
    """Each variant: reused when the store holds one built from these bytes as asked, else built."""
    for v in variants:
        name = run.source.name.variant(v.tag)
        manifest = stored_build(run.store, name, run.source, v.requested)
        if manifest is None:
            manifest = v.build(name, _step_reporter(run, str(name)))
        run.measure(manifest, reference, v.kind, v.recipe, v.command)


def _step_reporter(run: _Run, label: str) -> Callable[[str], None]:
    def report(step: str) -> None:
        run.progress(label, step, None, None)

    return report


def _command(run: _Run, type_name: str) -> str:
    flag = " --allow-requantize" if run.requantize else ""
    return f"edgeslm quantize {run.source.name} --type {type_name.lower()}{flag}"


def _wants_mix(run: _Run, budget: int | None) -> bool:
    if run.params.mixed is False:
        return False
    if budget is None:
        return False
    if run.params.mixed:
        return True
    sizes = [c.metrics.file_size for c in run.candidates]
    snug = any(budget * SNUG <= s <= budget for s in sizes)
    if any(s > budget for s in sizes) and not snug:
        run.note(
            f"the size budget {format_bytes(budget)} falls between the candidates: planning a mixed variant for it"
        )
        return True
    return False


def _calibrate(run: _Run, reference: Manifest, calibration: EvalText) -> str:
    """The reference's importance matrix from the calibration chunks (the text's last ones, kept
    apart from the evaluation's: ``calibration_chunks`` refuses otherwise)."""
    from ..calibrate import calibrate_chunks
    from ..engines.llamacpp.engine import open_llamacpp

    p, e = run.params.calibration, run.params.eval
    reserved = (e.chunks or 0) * e.ctx if calibration.digest == run.text.digest else 0
    run.progress(str(reference.name), "calibrating", None, None)
    path = run.store.gguf_path(reference, "optimize")
    engine = open_llamacpp(path, LoadParams(n_ctx=p.ctx, n_threads=run.params.threads))
    try:
        chunks = calibration_chunks(engine, calibration, p, reserved)
        done = calibrate_chunks(run.store, reference, engine, chunks, calibration)
    finally:
        engine.close()
    where = "a separate text" if reserved == 0 else f"after the {reserved:,} evaluation tokens"
    run.note(f"importance matrix of {reference.name} from {done.chunks} chunk(s) of {done.ctx} tokens of "
             f"{calibration.label} ({where}); every llama.cpp candidate (-imat) is quantized with it")
    return str(done.path)


def _importance(path: str) -> dict[str, Any]:
    """Per dense weight, the importance of each input column (llama-quantize's sums / count)."""
    from pathlib import Path

    from ..formats.imatrix import read_imatrix

    return {n: e.importance()[0] for n, e in read_imatrix(Path(path)).entries.items() if e.sums.shape[0] == 1}


def _measure_mixed(run: _Run, reference: Manifest, calibration: EvalText, budget: int) -> MixedReport | None:
    header = read_gguf_header(run.store.gguf_path(reference, "optimize"), label=str(reference.name))
    covered = set(_importance(run.imatrix)) if run.imatrix else None  # embeddings have no entry
    slots = find_slots(header, IMATRIX_PALETTE if run.imatrix else PALETTE, covered)
    try:
        check_reference(reference, header, slots)
    except InvalidParameterError as exc:
        if run.params.mixed:
            raise
        run.note(f"no mixed variant: {exc}")
        return None
    label = f"mixed plan for {format_bytes(budget)}"

    def report(done: int, total: int, probe: str) -> None:
        run.progress(label, f"sensitivity: {probe}", done, total)

    params = replace(run.params.calibration, threads=run.params.threads)
    e = run.params.eval
    reserved = (e.chunks or 0) * e.ctx if calibration.digest == run.text.digest else 0
    sens = measure_sensitivity(
        run.store, reference, calibration, params, reserved_tokens=reserved, progress=report, engine_name=run.engine
    )
    errors = sens.errors
    if run.imatrix:  # weighted by importance, with the IQ1/IQ2/IQ3 types
        errors = relative_errors(run.store.gguf_path(reference, "optimize"), header, slots, _importance(run.imatrix))
    plan = plan_mix(
        slots, predicted_costs(slots, sens.per_unit, errors), budget, fixed_bytes(header, slots), header.alignment
    )
    ftype, options = plan_options(plan, slots, run.params.threads, run.imatrix)
    size = f"{budget / 1e6:.0f}mb" if budget >= 10**7 else f"{budget / 1e3:.0f}kb"
    name = run.source.name.variant(f"mix-{size}-{plan.digest()}")
    manifest = run.build(ftype, options, name)
    wrong = tuple(mismatches(plan, read_gguf_header(run.store.gguf_path(manifest, "optimize"), label=str(name))))
    if wrong:
        run.note(f"{name}: llama.cpp did not follow the plan for {len(wrong)} tensor(s), e.g. {wrong[0]}")
    types = plan.type_summary(slots)
    recipe = "mixed: " + ", ".join(f"{t} {100 * n / sum(types.values()):.0f}%" for t, n in types.items())
    run.measure(manifest, reference, "mixed", recipe, _mix_command(run, ftype, options, name))
    return MixedReport(str(name), budget, plan, types, sens.tokens, sens.measured, wrong)


def _mix_command(run: _Run, ftype: QuantType, options: QuantizeOptions, name: ModelName) -> str:
    overrides = " ".join(f"--tensor-type '{p}={t.name.lower()}'" for p, t in options.tensor_types)
    head = f"edgeslm quantize {run.source.name} --type {ftype.name.lower()} --allow-requantize --pure"
    return f"{head} {overrides} --tag {name.tag}"


def _tag(run: _Run, ranking: Ranking) -> str | None:
    winner = ranking.winner
    if winner is None or run.params.tag is None:
        return None
    target = run.source.name.with_tag(run.params.tag)
    chosen = run.store.get(parse_name(winner.metrics.name))
    previous = run.store.find(target)
    if previous is not None and previous.digest == chosen.digest:
        return str(target)  # already tagged
    if previous is not None:
        others = [m for m in run.store.manifests() if m.digest == previous.digest and m.name != target]
        if not others:
            run.note(
                f"{target} names a model no other tag names; it was not replaced (that would delete it). "
                f"Run 'edgeslm cp {chosen.name} {target}' to replace it"
            )
            return None
    run.store.copy(chosen.name, target)
    return str(target)

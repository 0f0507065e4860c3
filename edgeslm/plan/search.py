"""``plan --ram``: over the stored variants of every runtime (llama.cpp's GGUF files, ONNX Runtime's
and MLX's folders), KV cache types, contexts and slot counts, the configuration a use case wants
that fits a memory budget and meets its quality floors.

Memory is the plan of each configuration (``memory.plan_memory``; ``memory.FOLDER_PLANS``: an ONNX
or MLX runner keeps its KV cache in the model's own type, so it has one KV choice); quality is what the store
measured: the variant's mean KLD (``eval``), plus what its KV cache type adds where ``eval
--kv-type`` measured it, and HumanEval pass@1 where ``eval --task humaneval`` did. Nothing is
guessed: a configuration whose quality was not measured is shown as such and ranked after the
measured ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..config import DEFAULT_ENGINE
from ..engines.base import MAX_CONTEXT, Tuning
from ..errors import InvalidParameterError
from ..evaluate.kept import kv_costs, measured_by_digest
from ..evaluate.result import EvalResult
from ..evaluate.task_results import Task, TaskResult, latest_task_results
from ..formats.gguf_header import read_gguf_header
from ..formats.kv_cache import KVCache
from ..formats.model_format import RUNTIME_OF
from ..store import Store, parse_name
from ..store.records import Manifest
from ..units import format_bytes
from .memory import FOLDER_PLANS, MemoryConstants, MemoryPlan, plan_memory

CONTEXTS = tuple(2048 << i for i in range(5))  # 2,048 to 32,768 tokens
KV_TYPES = ("f16", "q8_0", "q4_0")
# what the configuration is for -> what ranks first (the rest break ties). A KL-divergence compares the
# variants of one model (each against its own reference), never two models: across models the larger
# ranks first, as recommend's rule, unless HumanEval (one scale for all) was measured.
USE_CASES = {
    "chat": "the largest model, then its variant with the lowest KL-divergence (weights and KV cache), then speed",
    "code": "the most HumanEval problems passed where measured, then the largest model, then the lowest KLD",
    "rag": "the longest context (documents in the prompt), then the largest model, then the lowest KLD",
}


@dataclass(frozen=True)
class Config:
    name: str
    runtime: str
    base: str  # the model whose variants these are: KLDs compare within it
    n_params: int
    ctx: int
    slots: int
    kv: str
    memory: int
    kld: float | None  # the weights' mean KLD plus the KV type's; None: not measured
    pass_at_1: float | None
    tg_tps: float | None

    def key(self, use_case: str) -> tuple[float, ...]:
        """Smaller is better."""
        kld = math.inf if self.kld is None else self.kld
        passed = -1.0 if self.pass_at_1 is None else self.pass_at_1
        speed = self.tg_tps or 0.0
        if use_case == "code":
            return (-passed, -self.n_params, kld, -self.ctx, self.memory)
        if use_case == "rag":
            return (-self.ctx, -self.n_params, kld, self.memory)
        return (-self.n_params, kld, -speed, -self.ctx, self.memory)


@dataclass(frozen=True)
class Choice:
    budget: int
    use_case: str
    considered: int
    fitting: int
    pareto: tuple[Config, ...]  # per model: no other of its configurations uses less memory, loses less, holds more
    chosen: Config

    @property
    def serve_command(self) -> str:
        c = self.chosen
        kv = f" --kv-type {c.name}={c.kv}" if c.runtime == DEFAULT_ENGINE and c.kv != "f16" else ""
        return f"edgeslm serve --pin {c.name} --ctx {c.ctx} --parallel {c.slots}{kv}"

    @property
    def modelfile(self) -> str:
        c = self.chosen
        kv = f"PARAMETER kv_type {c.kv}\n" if c.runtime == DEFAULT_ENGINE else ""  # ONNX, MLX: the model's own
        return f"FROM {c.name}\nPARAMETER num_ctx {c.ctx}\n{kv}"


def choose(store: Store, budget: int, use_case: str = "chat", *, names: Sequence[str] = (), ctx: int | None = None,
           parallel: int | None = None, min_pass: float | None = None, max_kld: float | None = None,
           constants: MemoryConstants | None = None, tuning: Tuning | None = None, shorter_ok: bool = False) -> Choice:
    """The configuration ``use_case`` wants under ``budget``. ``ctx``: the context per slot (None: 2,048
    to 32,768 tried); a model trained for less cannot hold it and is left out, unless ``shorter_ok`` (a
    default context, not one asked for: such a model is planned at its own length)."""
    if use_case not in USE_CASES:
        raise InvalidParameterError(f"use case {use_case!r} is unknown; valid: {', '.join(USE_CASES)}")
    if parallel is not None and not 1 <= parallel <= 256:
        raise InvalidParameterError(f"parallel {parallel} is out of range; valid: 1 to 256", params="parallel")
    if ctx is not None and not 16 <= ctx <= MAX_CONTEXT:
        raise InvalidParameterError(f"ctx {ctx} is out of range; valid: 16 to {MAX_CONTEXT:,}", params="ctx")
    variants = [m for m in store.manifests() if not names or any(parse_name(n).owns(m.name) for n in names)]
    if not variants:
        raise InvalidParameterError("no stored model to plan for" + (f" named {', '.join(names)}" if names
                                    else "; 'edgeslm pull qwen2.5-coder:0.5b' adds one"))
    kept = _Kept(measured_by_digest(store), kv_costs(store), latest_task_results(store, variants))  # read once
    configs = [c for m in variants for c in _configs(store, m, kept, _held(m, ctx, shorter_ok), parallel, constants,
                                                      tuning or Tuning())]
    if not configs:
        longest = max(variants, key=lambda m: m.info.context_length or 0)
        raise InvalidParameterError(
            f"ctx {ctx or 0:,} is longer than any of these models was trained for; the longest is {longest.name}'s "
            f"{longest.info.context_length or 0:,} tokens (edgeslm does not stretch a context with RoPE scaling)",
            params="ctx")
    fitting = [c for c in configs if c.memory <= budget]
    if not fitting:
        least = min(configs, key=lambda c: c.memory)
        raise InvalidParameterError(
            f"nothing fits in {format_bytes(budget)}; the smallest is {least.name} at {least.ctx:,} tokens with a "
            f"{least.kv} KV cache: {format_bytes(least.memory)}", params="ram")
    floored = [c for c in fitting if (min_pass is None or (c.pass_at_1 is not None and c.pass_at_1 >= min_pass))
               and (max_kld is None or (c.kld is not None and c.kld <= max_kld))]
    if not floored:
        raise InvalidParameterError(
            f"{len(fitting)} configurations fit in {format_bytes(budget)}, but none measured meets the floors "
            f"({_floors(min_pass, max_kld)}); 'edgeslm eval NAME --task humaneval' and 'edgeslm eval NAME "
            "--kv-type q8_0' measure what is missing")
    ranked = sorted(floored, key=lambda c: c.key(use_case))
    return Choice(budget, use_case, len(configs), len(fitting), _pareto(floored), ranked[0])


def _held(m: Manifest, ctx: int | None, shorter_ok: bool) -> int | None:
    trained = m.info.context_length
    return min(ctx, trained) if ctx and shorter_ok and trained else ctx


@dataclass(frozen=True)
class _Kept:
    """What the store measured, read once per search: KLD per digest, KV costs, task results per name."""

    measured: dict[str, EvalResult]
    costs: dict[tuple[str, str], float]
    tasks: dict[str, dict[Task, TaskResult]]


def _configs(store: Store, m: Manifest, kept: _Kept, ctx: int | None, parallel: int | None,
             constants: MemoryConstants | None, tuning: Tuning) -> list[Config]:
    trained = m.info.context_length or CONTEXTS[0]
    if ctx and ctx > trained:
        return []  # it cannot hold that context (no RoPE scaling)
    contexts = [ctx] if ctx else [c for c in CONTEXTS if c <= trained] or [trained]  # a short-context model: its own
    slots = parallel or 1
    measured = kept.measured.get(m.digest)
    task = kept.tasks.get(str(m.name), {}).get(Task.HUMANEVAL)

    def config(plan: MemoryPlan, added: float | None) -> Config:
        weights = measured.kld_mean if measured else None
        kld = None if weights is None or added is None else weights + added
        return Config(str(m.name), RUNTIME_OF[m.format].value, m.name.family, m.info.n_params, plan.ctx_per_slot,
                      slots, plan.kv_type, plan.total, kld, task.score if task else None,
                      measured.speed.tg_tps if measured and measured.speed else None)

    folder_plan = FOLDER_PLANS.get(RUNTIME_OF[m.format].value)
    if folder_plan is not None:  # one KV choice: the model's own type
        return [config(folder_plan(str(m.name), m.info, ctx_per_slot=n, slots=slots, constants=constants), 0.0)
                for n in contexts]
    header = read_gguf_header(store.model_path(m))
    out = []
    for n_ctx in contexts:
        for kv in KV_TYPES:
            cache = KVCache.parse(kv)
            try:
                cache.check_head(m.info.key_length or 0, m.info.value_length or 0, str(m.name))
            except InvalidParameterError:
                continue
            plan = plan_memory(store.model_path(m), str(m.name), ctx_per_slot=n_ctx, slots=slots, kv=cache,
                               constants=constants, header=header, tuning=tuning)
            out.append(config(plan, 0.0 if kv == "f16" else kept.costs.get((m.digest, kv))))
    return out


def _pareto(configs: Sequence[Config]) -> tuple[Config, ...]:
    """Per model, the configurations none of its others beats on memory, KLD and context at once
    (unmeasured KLD: worst), the largest model first."""
    def worse(a: Config, b: Config) -> bool:  # b dominates a
        ka, kb = (math.inf if a.kld is None else a.kld), (math.inf if b.kld is None else b.kld)
        return (a.base == b.base and b.memory <= a.memory and kb <= ka and b.ctx >= a.ctx
                and (b.memory, kb, -b.ctx) != (a.memory, ka, -a.ctx))
    front = [a for a in configs if not any(worse(a, b) for b in configs)]
    return tuple(sorted(front, key=lambda c: (-c.n_params, c.memory)))


def _floors(min_pass: float | None, max_kld: float | None) -> str:
    parts = ([f"HumanEval pass@1 >= {min_pass:.0%}"] if min_pass is not None else []) + \
            ([f"mean KLD <= {max_kld:g}"] if max_kld is not None else [])
    return ", ".join(parts)

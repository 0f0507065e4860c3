"""Constraints on a variant and the ranking among those that meet them.

A candidate's metrics come from its kept evaluation result (quality against the reference,
tok/s and peak RSS from the bench worker) and its manifest (file size, memory estimate at a
context length). Among the candidates that meet every constraint the best quality wins (lowest
mean KLD); candidates whose mean KLDs are within each other's standard error are tied, and a
tie goes to the faster generation, then the smaller file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ..config import DEFAULT_CONTEXT
from ..errors import InvalidParameterError
from ..units import format_bytes, parse_bytes

if TYPE_CHECKING:
    from ..evaluate.result import EvalResult

KLD_STATS = {"mean": None, "median": "median", "p90": "p90", "p95": "p95", "p99": "p99", "p99.9": "p99.9", "max": "max"}


@dataclass(frozen=True)
class Metrics:
    """What the constraints are checked against, for one candidate."""

    name: str
    file_size: int
    memory: int  # weights + KV cache at the constraints' context length
    kld: dict[str, float]  # 'mean', 'p99', ... (0 for the reference itself)
    kld_err: float
    same_top: float
    ppl_increase: float  # ppl / reference ppl - 1
    pp_tps: float | None
    tg_tps: float | None
    pass_at_1: float | None = None  # HumanEval, greedy (eval --task humaneval), when measured
    tool_acc: float | None = None  # the tool-call suite (eval --task tools), when measured

    @classmethod
    def from_result(cls, result: EvalResult, memory: int) -> Metrics:
        if result.kld_mean is None:  # the reference: compared with itself
            kld, err, same, increase = {s: 0.0 for s in KLD_STATS}, 0.0, 1.0, 0.0
        else:
            mean, dist = result.kld_mean, result.kld
            kld = {s: float(mean if key is None else dist.get(key, math.nan)) for s, key in KLD_STATS.items()}
            err, same = result.kld_err or 0.0, result.same_top or 0.0
            increase = result.ppl / (result.ppl_base or result.ppl) - 1
        speed = result.speed
        return cls(
            result.model, result.file_size, memory, kld, err, same, increase,
            speed.pp_tps if speed else None, speed.tg_tps if speed else None,
        )


@dataclass(frozen=True)
class Violation:
    flag: str  # the option that sets the limit: '--max-size'
    text: str  # 'size 91.7 MB > 80.0 MB'
    excess: float  # relative: how far past the limit, 0.15 = 15 %


@dataclass(frozen=True)
class Constraints:
    max_size: int | None = None
    max_memory: int | None = None
    memory_ctx: int = DEFAULT_CONTEXT
    min_pp_tps: float | None = None
    min_tg_tps: float | None = None
    max_kld: tuple[tuple[str, float], ...] = ()  # (statistic, limit)
    min_same_top: float | None = None  # fraction
    max_ppl_increase: float | None = None  # fraction
    min_pass: float | None = None  # HumanEval pass@1, fraction
    min_tool_acc: float | None = None  # tool-call accuracy, fraction

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks these constraints need measured (``evaluate.task_results.Task`` values)."""
        limits = (("humaneval", self.min_pass), ("tools", self.min_tool_acc))
        return tuple(task for task, limit in limits if limit is not None)

    def without_tasks(self) -> Constraints:
        return replace(self, min_pass=None, min_tool_acc=None)

    def __post_init__(self) -> None:
        for stat, _ in self.max_kld:
            if stat not in KLD_STATS:
                valid = ", ".join(KLD_STATS)
                raise InvalidParameterError(f"max_kld {stat}=...: unknown statistic; valid: {valid}", params="max_kld")

    def describe(self) -> list[str]:
        out = []
        if self.max_size is not None:
            out.append(f"file size ≤ {format_bytes(self.max_size)}")
        if self.max_memory is not None:
            out.append(f"memory at {self.memory_ctx:,} tokens of context ≤ {format_bytes(self.max_memory)}")
        if self.min_pp_tps is not None:
            out.append(f"prompt processing ≥ {self.min_pp_tps:g} tok/s")
        if self.min_tg_tps is not None:
            out.append(f"generation ≥ {self.min_tg_tps:g} tok/s")
        out += [f"{stat} KLD ≤ {limit:g}" for stat, limit in self.max_kld]
        if self.min_same_top is not None:
            out.append(f"same top-1 as the reference ≥ {100 * self.min_same_top:g} %")
        if self.max_ppl_increase is not None:
            out.append(f"perplexity increase ≤ {100 * self.max_ppl_increase:g} %")
        if self.min_pass is not None:
            out.append(f"HumanEval pass@1 ≥ {100 * self.min_pass:g} %")
        if self.min_tool_acc is not None:
            out.append(f"tool-call accuracy ≥ {100 * self.min_tool_acc:g} %")
        return out

    def check(self, m: Metrics) -> list[Violation]:
        out: list[Violation] = []
        _at_most(out, "--max-size", "size", m.file_size, self.max_size, format_bytes)
        _at_most(out, "--max-memory", f"memory at {self.memory_ctx:,} ctx", m.memory, self.max_memory, format_bytes)
        _at_least(out, "--min-pp-tps", "prompt tok/s", m.pp_tps, self.min_pp_tps)
        _at_least(out, "--min-tps", "generation tok/s", m.tg_tps, self.min_tg_tps)
        for stat, limit in self.max_kld:
            _at_most(out, "--max-kld", f"{stat} KLD", m.kld[stat], limit, lambda v: f"{v:.4g}")
        _at_least(out, "--min-same-top", "same top-1", m.same_top, self.min_same_top, lambda v: f"{100 * v:.2f} %")
        _at_most(out, "--max-ppl-increase", "PPL increase", m.ppl_increase, self.max_ppl_increase, _percent)
        share = lambda v: f"{100 * v:.1f} %"  # noqa: E731
        _at_least(out, "--min-pass", "HumanEval pass@1", m.pass_at_1, self.min_pass, share)
        _at_least(out, "--min-tool-acc", "tool-call accuracy", m.tool_acc, self.min_tool_acc, share)
        return out

    def size_budget(self, kv_bytes: int) -> int | None:
        """The file-size budget these constraints imply for a variant whose KV cache takes ``kv_bytes``."""
        budgets = [b for b in (self.max_size, self.max_memory and self.max_memory - kv_bytes) if b is not None]
        return min(budgets) if budgets else None


def _percent(v: float) -> str:
    return f"{100 * v:+.2f} %"


def _at_most(out: list[Violation], flag: str, what: str, value: float, limit: float | None, fmt: Any = str) -> None:
    if limit is not None and (math.isnan(value) or value > limit):
        excess = (value - limit) / max(abs(limit), 1e-12) if not math.isnan(value) else math.inf
        out.append(Violation(flag, f"{what} {fmt(value)} > {fmt(limit)}", excess))


def _at_least(
    out: list[Violation], flag: str, what: str, value: float | None, limit: float | None, fmt: Any = "{:.1f}".format
) -> None:
    if limit is None:
        return
    if value is None:
        out.append(Violation(flag, f"{what} not measured", math.inf))
    elif value < limit:
        out.append(Violation(flag, f"{what} {fmt(value)} < {fmt(limit)}", (limit - value) / max(abs(limit), 1e-12)))


# -- parsing ----------------------------------------------------------------------------------


def parse_size(flag: str, text: str) -> int:
    try:
        value = parse_bytes(text)
    except ValueError as exc:
        raise InvalidParameterError(f"{flag} {text!r}: {exc}") from None
    if value <= 0:
        raise InvalidParameterError(f"{flag} {text!r}: a budget must be more than 0 bytes")
    return value


def parse_fraction(flag: str, text: str) -> float:
    """'5%' -> 0.05, '0.05' -> 0.05."""
    t = text.strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise InvalidParameterError(f"{flag} {text!r}: write a fraction (0.9) or a percentage (90%)") from None
    if not math.isfinite(value) or value < 0:
        raise InvalidParameterError(f"{flag} {text!r}: must be a finite number ≥ 0")
    return value


def parse_kld(text: str) -> tuple[str, float]:
    """'0.05' (mean) or 'p99=0.5'."""
    stat, sep, number = text.rpartition("=")
    stat = stat.strip().lower() if sep else "mean"
    if stat not in KLD_STATS:
        raise InvalidParameterError(f"--max-kld {text!r}: unknown statistic {stat!r}; valid: {', '.join(KLD_STATS)}")
    try:
        value = float(number)
    except ValueError:
        raise InvalidParameterError(f"--max-kld {text!r}: write a number, or STAT=NUMBER such as p99=0.5") from None
    if not math.isfinite(value) or value < 0:
        raise InvalidParameterError(f"--max-kld {text!r}: must be a finite number ≥ 0")
    return stat, value


def parse_tps(flag: str, text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise InvalidParameterError(f"{flag} {text!r}: write tokens per second as a number, e.g. 100") from None
    if not math.isfinite(value) or value <= 0:
        raise InvalidParameterError(f"{flag} {text!r}: must be a positive number of tokens per second")
    return value


# -- ranking ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    metrics: Metrics
    violations: tuple[Violation, ...]
    rank: int | None = None  # 1 = winner, among those that fit
    reason: str = ""

    @property
    def fits(self) -> bool:
        return not self.violations


@dataclass(frozen=True)
class Ranking:
    verdicts: tuple[Verdict, ...]  # fitting ones by rank, then the others by closeness
    binding: str | None = None  # when nothing fits: what stands in the way
    closest: str | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def winner(self) -> Verdict | None:
        return self.verdicts[0] if self.verdicts and self.verdicts[0].fits else None


def _tied(a: Metrics, b: Metrics) -> bool:
    return abs(a.kld["mean"] - b.kld["mean"]) <= max(a.kld_err, b.kld_err)


def _order(fitting: list[Metrics]) -> list[Metrics]:
    """Best mean KLD first; among those tied with the best left, fastest generation, then smallest."""
    left, out = sorted(fitting, key=lambda m: m.kld["mean"]), []
    while left:
        group = [m for m in left if _tied(m, left[0])]
        pick = min(group, key=lambda m: (-(m.tg_tps or 0.0), m.file_size))
        out.append(pick)
        left.remove(pick)
    return out


def rank(constraints: Constraints, candidates: Sequence[Metrics]) -> Ranking:
    checked = [(m, tuple(constraints.check(m))) for m in candidates]
    ordered = _order([m for m, v in checked if not v])
    if ordered:
        return Ranking(tuple(_fitting_verdicts(ordered)) + tuple(_failing(checked)))
    failing = sorted(checked, key=lambda mv: sum(v.excess for v in mv[1]))
    closest = failing[0][0] if failing else None
    return Ranking(tuple(_failing(checked)), _binding(checked), closest.name if closest else None)


def _fitting_verdicts(ordered: list[Metrics]) -> list[Verdict]:
    best = ordered[0]
    out = [Verdict(best, (), 1, "best quality among the candidates that meet every constraint")]
    for i, m in enumerate(ordered[1:], start=2):
        if _tied(m, best):
            reason = (
                f"meets every constraint and ties the winner on mean KLD ({m.kld['mean']:.4g} vs "
                f"{best.kld['mean']:.4g}, within the uncertainty), but generates slower "
                f"({m.tg_tps or 0:.1f} vs {best.tg_tps or 0:.1f} tok/s) or is larger"
            )
        else:
            reason = f"meets every constraint; mean KLD {m.kld['mean']:.4g} vs the winner's {best.kld['mean']:.4g}"
        out.append(Verdict(m, (), i, reason))
    return out


def _failing(checked: list[tuple[Metrics, tuple[Violation, ...]]]) -> list[Verdict]:
    out = [Verdict(m, v, None, "; ".join(x.text for x in v)) for m, v in checked if v]
    return sorted(out, key=lambda x: sum(v.excess for v in x.violations))


def _binding(checked: list[tuple[Metrics, tuple[Violation, ...]]]) -> str:
    """The constraint that alone excludes the most candidates, else the one most often violated."""
    alone: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    for m, violations in checked:
        flags = {v.flag for v in violations}
        for flag in flags:
            counts[flag] = counts.get(flag, 0) + 1
        if len(flags) == 1:
            alone.setdefault(flags.pop(), []).append(m.name)
    if alone:
        flag, names = max(alone.items(), key=lambda kv: len(kv[1]))
        return f"{flag}: without it {len(names)} candidate(s) would fit ({', '.join(names)})"
    flag = max(counts, key=lambda f: counts[f])
    return f"{flag}: {counts[flag]} of {len(checked)} candidates miss it, and no single constraint frees any of them"

"""An evaluation's result as a typed record, serialised in one place (``to_dict``/``from_dict``).

The stored JSON keeps the key names results have always had (schema 1), so results kept by an
earlier edgeslm are read unchanged. Quality against a reference (KLD, Δp, same top token) is
None for the reference itself and for a run without one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

RESULTS_SCHEMA = 1


@dataclass(frozen=True)
class Speed:
    """pp/tg tok/s and peak RSS, measured by bench's worker in its own process."""

    pp_tps: float | None
    tg_tps: float | None
    peak_rss: int  # bytes
    threads: int
    pp: int  # prompt tokens of the pp test
    tg: int  # generated tokens of the tg test


@dataclass(frozen=True)
class EvalResult:
    key: str
    created: str
    model: str  # the name asked for (results are shared by content; see ``renamed``)
    model_digest: str
    text: str
    text_digest: str
    settings: Mapping[str, Any]  # EvalSettings as a dict
    chunks: int
    eval_seconds: float
    eval_tokens_per_second: float
    file_size: int
    n_params: int
    bits_per_weight: float
    type_mix: tuple[Mapping[str, Any], ...]
    file_type: str | None
    tokens: int
    ppl: float
    ppl_err: float
    reference: str | None = None
    reference_digest: str | None = None
    runtime: str = "llama.cpp"  # the engine that ran the model (the reference may run on another)
    ppl_base: float | None = None
    ppl_base_err: float | None = None
    ln_ppl_correlation: float | None = None
    ln_ppl_ratio: float | None = None
    ln_ppl_ratio_err: float | None = None
    kld_mean: float | None = None
    kld_err: float | None = None
    kld: Mapping[str, float] = field(default_factory=dict)  # max, p99.9 … p1, median, min
    dp_mean: float | None = None
    dp_err: float | None = None
    dp: Mapping[str, float] = field(default_factory=dict)
    dp_rms: float | None = None
    dp_rms_err: float | None = None
    same_top: float | None = None  # fraction of positions with the reference's top token
    same_top_err: float | None = None
    speed: Speed | None = None
    schema: int = RESULTS_SCHEMA

    @property
    def has_reference(self) -> bool:
        return self.kld_mean is not None

    def renamed(self, model: str) -> EvalResult:
        return replace(self, model=model)

    def with_speed(self, speed: Speed) -> EvalResult:
        return replace(self, speed=speed)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["type_mix"] = [dict(t) for t in self.type_mix]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalResult:
        """A stored result; unknown keys are ignored, a missing required one raises KeyError/TypeError."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["type_mix"] = tuple(values.get("type_mix") or ())
        speed = values.get("speed")
        values["speed"] = Speed(**{k: speed[k] for k in _SPEED_FIELDS}) if isinstance(speed, Mapping) else None
        return cls(**values)


_SPEED_FIELDS = tuple(f.name for f in dataclasses.fields(Speed))

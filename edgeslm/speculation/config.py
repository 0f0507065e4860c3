"""Prompt lookup's kinds and settings, checked (no numpy here: the CLI and the server read them)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

from ..errors import InvalidParameterError

MAX_N = 256


class LookupKind(str, Enum):
    """How a draft is found in the text so far."""

    LOOKUP = "lookup"  # edgeslm: the longest match of the last n down to n_min tokens, the most recent
    NGRAM_SIMPLE = "ngram-simple"  # llama.cpp's common_ngram_simple_draft: exactly n tokens, the most recent
    NGRAM_MAP_K = "ngram-map-k"  # llama.cpp's common_ngram_map_draft (key only): a hash of n-grams, per-key depth


# kind -> (n, m) by default: llama.cpp's (--spec-ngram-*-size-n/-m) for all three, so that a 12-token
# match drafts as ngram-simple's does; edgeslm's lookup goes on down to N_MIN where none is found.
DEFAULTS = {LookupKind.LOOKUP: (12, 48), LookupKind.NGRAM_SIMPLE: (12, 48), LookupKind.NGRAM_MAP_K: (12, 48)}
N_MIN = 2  # lookup: the shortest n-gram matched
KINDS = tuple(kind.value for kind in LookupKind.__members__.values())


def _kind(value: str) -> LookupKind:
    try:
        return LookupKind(value)
    except ValueError:
        raise InvalidParameterError(f"draft kind {value!r} is not known; valid: {', '.join(KINDS)}",
                                    params="draft") from None


@dataclass(frozen=True)
class LookupConfig:
    n: int = DEFAULTS[LookupKind.LOOKUP][0]  # the n-gram looked up (lookup: the longest)
    m: int = DEFAULTS[LookupKind.LOOKUP][1]  # the most tokens drafted
    kind: LookupKind = LookupKind.LOOKUP
    n_min: int = N_MIN  # lookup: the shortest n-gram matched
    min_hits: int = 1  # ngram-map-k: times a key must have been looked up before it drafts

    def __post_init__(self) -> None:
        kind = _kind(self.kind)
        n, m = DEFAULTS[kind]
        object.__setattr__(self, "kind", kind)
        for name in ("n", "m", "n_min", "min_hits"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_N:
                raise InvalidParameterError(
                    f"draft {name} {value!r} is out of range; valid: 1 to {MAX_N} "
                    f"(defaults: n {n}, m {m}, n_min {N_MIN}, min_hits 1)", params=f"draft_{name}",
                )
        object.__setattr__(self, "n_min", min(self.n_min, self.n))  # --draft-n 1: single tokens

    @classmethod
    def of(cls, kind: str = "lookup", n: int | None = None, m: int | None = None,
           n_min: int | None = None, min_hits: int | None = None) -> LookupConfig:
        """A kind with its own defaults for what is not given (the CLI's flags)."""
        dn, dm = DEFAULTS[_kind(kind)]
        return cls(dn if n is None else n, dm if m is None else m, _kind(kind),
                   N_MIN if n_min is None else n_min, 1 if min_hits is None else min_hits)

    def describe(self) -> str:
        extra = {LookupKind.LOOKUP: f", n_min {self.n_min}", LookupKind.NGRAM_MAP_K: f", min_hits {self.min_hits}"}
        return f"{self.kind.value} (n {self.n}, m {self.m}{extra.get(self.kind, '')})"

    def as_args(self) -> dict[str, Any]:
        """Plain values, for a runner's JSON arguments (``LookupConfig(**args)`` reads them back)."""
        return {**asdict(self), "kind": self.kind.value}

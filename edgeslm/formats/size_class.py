"""Size classes by parameter count, as the seed defines them.

The seed names micro 100M-1.4B, small 1.5B-13.9B and medium 14B-30B. Its bounds are rounded
to one decimal of a billion, so the gaps between them (1.4B-1.5B, 13.9B-14B) belong to the
class whose rounded range holds the count: 1.44B is micro, 1.46B is small, 30.4B is medium.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class SizeClass(str, enum.Enum):
    BELOW_MICRO = "below-micro"
    MICRO = "micro"
    SMALL = "small"
    MEDIUM = "medium"
    ABOVE_MEDIUM = "above-medium"


@dataclass(frozen=True)
class SizeClassInfo:
    size_class: SizeClass
    lower: int  # inclusive parameter count
    upper: int | None  # exclusive; None: no upper bound
    label: str  # as the seed states the range


SIZE_CLASSES: tuple[SizeClassInfo, ...] = (
    SizeClassInfo(SizeClass.BELOW_MICRO, 0, 100_000_000, "below 100M (smaller than micro)"),
    SizeClassInfo(SizeClass.MICRO, 100_000_000, 1_450_000_000, "micro, 100M-1.4B"),
    SizeClassInfo(SizeClass.SMALL, 1_450_000_000, 13_950_000_000, "small, 1.5B-13.9B"),
    SizeClassInfo(SizeClass.MEDIUM, 13_950_000_000, 30_500_000_000, "medium, 14B-30B"),
    SizeClassInfo(SizeClass.ABOVE_MEDIUM, 30_500_000_000, None, "above 30B (larger than medium)"),
)


def classify(n_params: int) -> SizeClassInfo:
    """The size class of a model with ``n_params`` parameters."""
    if n_params < 0:
        raise ValueError(f"parameter count cannot be negative: {n_params}")
    for info in SIZE_CLASSES:
        if info.upper is None or n_params < info.upper:
            return info
    raise AssertionError("unreachable: the last class has no upper bound")

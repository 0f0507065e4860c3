"""Prompt lookup's settings, checked (no numpy here: the CLI and the server read them)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidParameterError

MAX_N = 256


@dataclass(frozen=True)
class LookupConfig:
    n: int = 12  # llama.cpp's --spec-ngram-simple-size-n: the n-gram looked up
    m: int = 48  # --spec-ngram-simple-size-m: the most tokens drafted

    def __post_init__(self) -> None:
        for name, value in (("n", self.n), ("m", self.m)):
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_N:
                raise InvalidParameterError(
                    f"draft {name} {value!r} is out of range; valid: 1 to {MAX_N} tokens "
                    f"(llama.cpp's defaults: n 12, m 48)", params=f"draft_{name}",
                )  # fmt: skip

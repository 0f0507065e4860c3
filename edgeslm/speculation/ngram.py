"""Prompt lookup: drafts copied from the text so far, as llama.cpp's ``ngram-simple``
(``common/ngram-map.cpp``, ``common_ngram_simple_draft``).

The last ``n`` tokens (the one just sampled included) are looked up in the history, the most
recent earlier occurrence first; the up to ``m`` tokens that followed it are the draft, if there
are at least ``n`` of them. No index is kept: each lookup scans the history once with numpy
(about 50 us for 100k tokens), so memory is the history itself, 4 bytes a token.
"""

from __future__ import annotations

import numpy as np

from .config import LookupConfig


def ngram_simple_draft(config: LookupConfig, history: np.ndarray, sampled: int) -> list[int]:
    """llama.cpp's ``common_ngram_simple_draft``: ``history`` holds every token before ``sampled``."""
    n, m, length = config.n, config.m, len(history)
    if length <= n + m + 1:
        return []
    pattern = np.append(history[length - n + 1 :], sampled)
    # Candidates j in 1..length-n-1 (position 0 is "no match"), the most recent first.
    for j in np.flatnonzero(history[1 : length - n] == pattern[0])[::-1] + 1:
        if np.array_equal(history[j : j + n], pattern):
            copy = min(m, length - (j + n))
            return [int(t) for t in history[j + n : j + n + copy]] if copy >= n else []
    return []


class LookupDrafter:
    """The history of one generation (prompt, then every token decoded) and its drafts."""

    def __init__(self, config: LookupConfig, prompt: list[int] | tuple[int, ...]) -> None:
        self.config = config
        self._tokens = np.empty(max(1024, 2 * len(prompt)), dtype=np.int32)
        self._tokens[: len(prompt)] = prompt
        self._length = len(prompt)

    def add(self, tokens: list[int]) -> None:
        end = self._length + len(tokens)
        if end > len(self._tokens):
            grown = np.empty(2 * end, dtype=np.int32)
            grown[: self._length] = self._tokens[: self._length]
            self._tokens = grown
        self._tokens[self._length : end] = tokens
        self._length = end

    def draft(self, sampled: int) -> list[int]:
        return ngram_simple_draft(self.config, self._tokens[: self._length], sampled)

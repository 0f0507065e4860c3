"""Prompt lookup: drafts copied from the text so far (``LookupKind``).

- ``ngram-simple`` is llama.cpp's ``common_ngram_simple_draft`` (``common/ngram-map.cpp``): the
  last ``n`` tokens (the one just sampled included) are looked up in the history, the most recent
  earlier occurrence first; the up to ``m`` tokens that followed it are the draft, if there are
  at least ``n`` of them.
- ``ngram-map-k`` is llama.cpp's ``common_ngram_map_draft`` in key-only mode: n-grams are found
  through a 2^18-entry hash table (the first position stored for a hash stays), new positions by a
  scan; the m tokens after the match are the draft, cut to what the last draft from the same key
  had accepted (``common_ngram_map_accept``).
- ``lookup`` (edgeslm's) tries the last n tokens, then n - 1, down to ``n_min``, the most recent
  occurrence of the longest that matches; each length's acceptance is learnt apart (``key``).

Scans use numpy (about 50 us for 100k tokens); memory is the history (4 bytes a token) and, for
ngram-map-k, its 1 MiB hash table and one entry per key looked up.
"""

from __future__ import annotations

import numpy as np

from .config import LookupConfig, LookupKind

LCG_FACTOR = 2654435761  # common_ngram_map_hash's multiplier
HASH_MAP_SIZE = 262144  # COMMON_NGRAM_HASH_MAP_SIZE
MAX_VALUE_COUNT = 16380  # COMMON_NGRAM_MAX_VALUE_COUNT


def _last_match(history: np.ndarray, pattern: np.ndarray, lo: int, hi: int) -> int:
    """The largest j in [lo, hi] where ``history[j:j + len(pattern)]`` is ``pattern``; -1 if none."""
    if hi < lo:
        return -1
    starts = np.flatnonzero(history[lo : hi + 1] == pattern[0]) + lo
    for k in range(1, len(pattern)):  # every candidate at once, one token further each time
        if not len(starts):
            break
        starts = starts[history[starts + k] == pattern[k]]
    return int(starts[-1]) if len(starts) else -1


def ngram_simple_draft(config: LookupConfig, history: np.ndarray, sampled: int) -> list[int]:
    """llama.cpp's ``common_ngram_simple_draft``: ``history`` holds every token before ``sampled``."""
    n, m, length = config.n, config.m, len(history)
    if length <= n + m + 1:
        return []
    pattern = np.append(history[length - n + 1 :], sampled)
    j = _last_match(history, pattern, 1, length - n - 1)  # position 0 is "no match"
    if j < 0:
        return []
    copy = min(m, length - (j + n))
    return [int(t) for t in history[j + n : j + n + copy]] if copy >= n else []


def longest_match_draft(config: LookupConfig, history: np.ndarray, sampled: int) -> tuple[list[int], int]:
    """edgeslm's lookup: (draft, n-gram length matched) for the longest of the last n .. n_min
    tokens that occurred before, its most recent occurrence; up to m tokens that followed it.
    Every earlier occurrence of ``sampled`` is extended backwards at once (n numpy steps)."""
    length = len(history)
    whole = np.append(history, sampled)
    ends = np.flatnonzero(history == sampled)  # where a match could end: at least one token follows
    if not len(ends):
        return [], 0
    matched = np.ones(len(ends), dtype=np.int32)
    alive = np.ones(len(ends), dtype=bool)
    for back in range(1, min(config.n, length)):
        alive &= ends >= back
        alive[alive] = whole[ends[alive] - back] == whole[length - back]
        if not alive.any():
            break
        matched[alive] += 1
    best = int(matched.max())
    if best < config.n_min:
        return [], 0
    end = int(ends[np.flatnonzero(matched == best)[-1]])  # the most recent of the longest
    return [int(t) for t in whole[end + 1 : end + 1 + config.m]], best


def _hashes(tokens: np.ndarray, starts: np.ndarray, n: int) -> np.ndarray:
    """common_ngram_map_hash of the n-gram at each start (uint32 arithmetic), modulo the table."""
    h = np.zeros(len(starts), dtype=np.uint64)
    for i in range(n):
        h = (h * np.uint64(LCG_FACTOR) + tokens[starts + i].astype(np.uint64)) & np.uint64(0xFFFFFFFF)
    slots: np.ndarray = (h % np.uint64(HASH_MAP_SIZE)).astype(np.int64)
    return slots


class NgramMapK:
    """llama.cpp's ``common_ngram_map`` with ``key_only`` (``--spec-type ngram-map-k``), one per
    request (``common_ngram_map_begin`` on a fresh map). ``min_hits`` above 1 is edgeslm's: a key
    drafts once it has been looked up that often (llama.cpp reads it only in ngram-map-k4v)."""

    def __init__(self, config: LookupConfig, prompt_length: int) -> None:
        self.n, self.m, self.min_hits = config.n, config.m, config.min_hits
        self.size_last_begin = prompt_length
        self.key_map = np.zeros(HASH_MAP_SIZE, dtype=np.uint32)  # positions, as the C++ keeps them
        self.key_map_last_idx = 0
        self.keys: dict[tuple[int, ...], list[int]] = {}  # key tokens -> [key_num, n_accepted]
        self.last_key: tuple[int, ...] | None = None

    def draft(self, inp: np.ndarray, sampled: int) -> list[int]:
        self.last_key = None
        n, m, cur_len = self.n, self.m, len(inp)
        if cur_len < 2 * n + m:
            return []
        key = np.append(inp[cur_len - n + 1 :], sampled)
        top, begin = cur_len - n - m - 1, self.size_last_begin
        match_pos = 0
        idx_key = int(self.key_map[_hashes(key, np.zeros(1, dtype=np.int64), n)[0]])
        if idx_key != 0 and idx_key < top and np.array_equal(inp[idx_key : idx_key + n], key):
            match_pos = idx_key
        old = (begin - n - m - 1, self.key_map_last_idx + 1) if begin > n + m + 1 else None
        new = (top, max(begin, self.key_map_last_idx) + 1)
        if not match_pos and old is not None:
            match_pos = max(_last_match(inp, key, old[1], old[0]), 0)
        if not match_pos:
            match_pos = max(_last_match(inp, key, new[1], new[0]), 0)
        for hi, lo in [r for r in (old, new) if r is not None]:  # each range as the C++ loops walk it
            self._register(inp, lo, hi)
        self.key_map_last_idx = max(top, self.key_map_last_idx)
        if not match_pos:
            return []
        entry = self.keys.setdefault(tuple(int(t) for t in key), [0, m])
        entry[0] = min(entry[0] + 1, MAX_VALUE_COUNT)
        if entry[0] < self.min_hits:
            return []
        self.last_key = tuple(int(t) for t in key)
        return [int(t) for t in inp[match_pos + n : match_pos + n + min(m, entry[1])]]

    def _register(self, inp: np.ndarray, lo: int, hi: int) -> None:
        """Positions hi down to lo into the table; a hash keeps the first position stored."""
        if hi < lo:
            return
        starts = np.arange(hi, lo - 1, -1, dtype=np.int64)
        slots, first = np.unique(_hashes(inp, starts, self.n), return_index=True)
        free = self.key_map[slots] == 0
        self.key_map[slots[free]] = starts[first[free]]

    def accept(self, n_accepted: int) -> None:
        """The last draft's accepted tokens: that key's next drafts are at most this long."""
        if self.last_key is not None:
            self.keys[self.last_key][1] = n_accepted


class LookupDrafter:
    """The history of one generation (prompt, then every token decoded) and its drafts."""

    def __init__(self, config: LookupConfig, prompt: list[int] | tuple[int, ...]) -> None:
        self.config = config
        self._tokens = np.empty(max(1024, 2 * len(prompt)), dtype=np.int32)
        self._tokens[: len(prompt)] = prompt
        self._length = len(prompt)
        self._map = NgramMapK(config, len(prompt)) if config.kind is LookupKind.NGRAM_MAP_K else None
        self.key = 0  # the last draft's matched length (lookup), for the policy's acceptance per length

    def add(self, tokens: list[int]) -> None:
        end = self._length + len(tokens)
        if end > len(self._tokens):
            grown = np.empty(2 * end, dtype=np.int32)
            grown[: self._length] = self._tokens[: self._length]
            self._tokens = grown
        self._tokens[self._length : end] = tokens
        self._length = end

    def draft(self, sampled: int) -> list[int]:
        history = self._tokens[: self._length]
        if self._map is not None:
            return self._map.draft(history, sampled)
        if self.config.kind is LookupKind.NGRAM_SIMPLE:
            return ngram_simple_draft(self.config, history, sampled)
        found, self.key = longest_match_draft(self.config, history, sampled)
        return found

    def accepted(self, count: int) -> None:
        """How many tokens of the last draft were accepted (ngram-map-k keeps it per key)."""
        if self._map is not None:
            self._map.accept(count)

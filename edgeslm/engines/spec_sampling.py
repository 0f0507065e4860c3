"""Speculative sampling: llama.cpp's sampling distribution on one row of logits (top-k, top-p,
min-p, temperature, in its chain's order), and the acceptance rule that keeps the output's
distribution unchanged when a draft proposes a token (Leviathan et al., 2023; a lookup or greedy
draft proposes one token with certainty, so the rule is: accept it with probability p(token),
else sample from p without it).
"""

from __future__ import annotations

import numpy as np

from .base import SamplingParams


def distribution(row: np.ndarray, s: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """(token ids, probabilities) that llama.cpp's chain samples from: top_k, top_p (on the
    un-tempered softmax, at least one token), min_p (logit >= max + log min_p), temperature."""
    logits = row.astype(np.float64)
    if 0 < s.top_k < len(logits):
        ids = np.argpartition(-logits, s.top_k - 1)[: s.top_k]
    else:
        ids = np.arange(len(logits))
    ids = ids[np.argsort(-logits[ids], kind="stable")]
    kept = logits[ids]
    if s.top_p < 1.0:
        probs = np.exp(kept - kept[0])
        last = int(np.searchsorted(np.cumsum(probs / probs.sum()), s.top_p)) + 1  # the first reaching top_p
        ids, kept = ids[:last], kept[:last]
    if s.min_p > 0.0:
        keep = kept >= kept[0] + np.log(s.min_p)
        ids, kept = ids[keep], kept[keep]
    scaled = kept / s.temperature
    probs = np.exp(scaled - scaled.max())
    return ids, probs / probs.sum()


def sample(rng: np.random.Generator, ids: np.ndarray, probs: np.ndarray) -> int:
    return int(ids[rng.choice(len(ids), p=probs)])


def judge(rng: np.random.Generator, ids: np.ndarray, probs: np.ndarray, drafted: int) -> tuple[bool, int]:
    """A drafted token against the target's distribution: (accepted, the token that stands)."""
    where = np.flatnonzero(ids == drafted)
    p = float(probs[where[0]]) if len(where) else 0.0
    if p > 0.0 and rng.random() < p:
        return True, drafted
    if len(where):
        rest = probs.copy()
        rest[where[0]] = 0.0
        if rest.sum() <= 0.0:  # the draft was the only token the chain allows
            return True, drafted
        return False, sample(rng, ids, rest / rest.sum())
    return False, sample(rng, ids, probs)

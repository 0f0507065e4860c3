"""Perplexity and KL-divergence statistics, computed as ``llama-perplexity`` reports them.

Per scored token: the candidate's negative log-likelihood of the true next token, the
reference's, the KL divergence of the candidate's distribution from the reference's, Δp (the
candidate's probability of the true token minus the reference's) and whether both models'
top-1 agree. Element-wise work is float32 (as llama.cpp's expf), every sum float64; the
summary formulas follow ``kl_divergence()`` in llama.cpp's ``tools/perplexity/perplexity.cpp``
(mean ± standard error, covariance-corrected ln PPL ratio, percentiles by linear interpolation).
Unlike llama-perplexity, the reference distribution is exact: it is computed in the same pass,
not stored as 16-bit log-probabilities cut at -16.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

ROW_BLOCK = 32  # rows per pass: 32 x 262,144 x 4 bytes = 32 MiB per temporary for Gemma's vocabulary
KLD_PERCENTILES = (0.999, 0.99, 0.95, 0.90, 0.10, 0.05, 0.01, 0.001)
DP_PERCENTILES = (0.999, 0.99, 0.95, 0.90, 0.75, 0.25, 0.10, 0.05, 0.01, 0.001)
F32 = npt.NDArray[np.float32]


def _log_softmax(block: F32) -> F32:
    """Row-wise log-softmax: element work in float32 (as llama.cpp's expf), row sums in float64."""
    shifted = block - block.max(axis=1, keepdims=True)
    sums = np.exp(shifted).sum(axis=1, dtype=np.float64, keepdims=True)
    return np.asarray(shifted - np.log(sums).astype(np.float32), dtype=np.float32)


_POOL: list[ThreadPoolExecutor] = []


def _pool() -> ThreadPoolExecutor:
    if not _POOL:
        _POOL.append(ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="edgeslm-stats"))
    return _POOL[0]


BlockStats = tuple[list[float], list[float], list[float], list[float], int]


def _block_stats(logits: F32, targets: npt.NDArray[np.int64], ref_logits: F32 | None, lo: int) -> BlockStats:
    hi = min(lo + ROW_BLOCK, len(targets))
    rows, tok = np.arange(hi - lo), targets[lo:hi]
    logp = _log_softmax(logits[lo:hi])
    nll = (-logp[rows, tok].astype(np.float64)).tolist()
    if ref_logits is None:
        return nll, [], [], [], 0
    ref = _log_softmax(ref_logits[lo:hi])
    p_ref = np.exp(ref)
    kld = [float(v) for v in np.atleast_1d(_kld_rows(ref, logp, p_ref))]
    nll_base = (-ref[rows, tok].astype(np.float64)).tolist()
    p_diff = (np.exp(logp[rows, tok].astype(np.float64)) - p_ref[rows, tok]).tolist()
    same = int(np.sum(logits[lo:hi].argmax(axis=1) == ref_logits[lo:hi].argmax(axis=1)))
    return nll, nll_base, kld, p_diff, same


def _kld_rows(ref_logp: F32, logp: F32, p_ref: F32 | None = None) -> npt.NDArray[np.float64]:
    """Per row: KL(reference || model) from both log-probabilities, summed in float64."""
    p = np.exp(ref_logp) if p_ref is None else p_ref
    return np.asarray(np.sum(p * (ref_logp - logp), axis=1, dtype=np.float64))


def log_softmax_rows(logits: F32) -> F32:
    """Row-wise log-probabilities of a (rows x vocabulary) block, block by block on all cores."""
    starts = range(0, len(logits), ROW_BLOCK)
    return np.concatenate(list(_pool().map(lambda lo: _log_softmax(logits[lo : lo + ROW_BLOCK]), starts)))


def kld_sum(ref_logp: F32, logits: F32) -> float:
    """Sum over rows of KL(reference || model), the reference given as log-probabilities."""

    def block(lo: int) -> float:
        return float(_kld_rows(ref_logp[lo : lo + ROW_BLOCK], _log_softmax(logits[lo : lo + ROW_BLOCK])).sum())

    return sum(_pool().map(block, range(0, len(logits), ROW_BLOCK)))


@dataclass
class Accumulator:
    """Running per-token values over all chunks."""

    nll: list[float] = field(default_factory=list)
    nll_base: list[float] = field(default_factory=list)
    kld: list[float] = field(default_factory=list)
    p_diff: list[float] = field(default_factory=list)
    same_top: int = 0

    def add(self, logits: F32, targets: npt.NDArray[np.int64], ref_logits: F32 | None = None) -> None:
        """``logits[i]`` (and ``ref_logits[i]``) predict ``targets[i]``. Row blocks run on all cores
        (numpy releases the GIL in these loops), as llama-perplexity spreads them over threads."""
        starts = range(0, len(targets), ROW_BLOCK)
        blocks = list(_pool().map(lambda lo: _block_stats(logits, targets, ref_logits, lo), starts))
        for nll, nll_base, kld, p_diff, same in blocks:
            self.nll.extend(nll)
            self.nll_base.extend(nll_base)
            self.kld.extend(kld)
            self.p_diff.extend(p_diff)
            self.same_top += same

    @property
    def count(self) -> int:
        return len(self.nll)


def mean_and_uncertainty(values: npt.NDArray[np.float64]) -> tuple[float, float]:
    n = len(values)
    if n < 1:
        return 0.0, 0.0
    mean = float(values.sum() / n)
    var = float((values**2).sum() / n - mean * mean)
    return mean, (math.sqrt(var / (n - 1)) if var > 0 and n > 10 else 0.0)


def percentile(sorted_values: npt.NDArray[np.float64], fraction: float) -> float:
    """llama-perplexity's: linear interpolation at fraction x (n - 1)."""
    if fraction <= 0:
        return float(sorted_values[0])
    if fraction >= 1:
        return float(sorted_values[-1])
    p = fraction * (len(sorted_values) - 1)
    i = int(p)
    p -= i
    return float((1 - p) * sorted_values[i] + p * sorted_values[min(i + 1, len(sorted_values) - 1)])


def _median(sorted_values: npt.NDArray[np.float64]) -> float:
    n = len(sorted_values)
    return float(0.5 * (sorted_values[n // 2] + sorted_values[n // 2 - 1]) if n % 2 == 0 else sorted_values[n // 2])


def _distribution(values: list[float], fractions: tuple[float, ...]) -> dict[str, float]:
    v = np.sort(np.asarray(values, dtype=np.float64))
    out = {"max": float(v[-1])}
    out.update({f"p{100 * f:g}": percentile(v, f) for f in fractions})
    out.update({"median": _median(v), "min": float(v[0])})
    return out


def summarize(acc: Accumulator) -> dict[str, object]:
    """The statistics llama-perplexity prints, as a JSON-able dict."""
    nll = np.asarray(acc.nll, dtype=np.float64)
    log_ppl, log_ppl_err = mean_and_uncertainty(nll)
    out: dict[str, object] = {"tokens": acc.count, "ppl": math.exp(log_ppl), "ppl_err": math.exp(log_ppl) * log_ppl_err}
    if not acc.kld:
        return out
    base = np.asarray(acc.nll_base, dtype=np.float64)
    log_base, log_base_err = mean_and_uncertainty(base)
    n = acc.count
    cov = float(((nll * base).sum() / n - (nll.sum() / n) * (base.sum() / n)) / (n - 1)) if n >= 10 else 0.0
    ratio_err = math.sqrt(max(log_ppl_err**2 + log_base_err**2 - 2 * cov, 0.0))
    kld_mean, kld_err = mean_and_uncertainty(np.asarray(acc.kld, dtype=np.float64))
    dp = np.asarray(acc.p_diff, dtype=np.float64)
    dp_mean, dp_err = mean_and_uncertainty(dp)
    mse, mse_err = mean_and_uncertainty(dp**2)
    rms = math.sqrt(mse)
    same = acc.same_top / n
    out.update({
        "ppl_base": math.exp(log_base), "ppl_base_err": math.exp(log_base) * log_base_err,
        "ln_ppl_correlation": cov / (log_ppl_err * log_base_err) if log_ppl_err and log_base_err else 0.0,
        "ln_ppl_ratio": log_ppl - log_base, "ln_ppl_ratio_err": ratio_err,
        "kld_mean": kld_mean, "kld_err": kld_err, "kld": _distribution(acc.kld, KLD_PERCENTILES),
        "dp_mean": dp_mean, "dp_err": dp_err, "dp": _distribution(acc.p_diff, DP_PERCENTILES),
        "dp_rms": rms, "dp_rms_err": 0.5 / rms * mse_err if rms else 0.0,
        "same_top": same, "same_top_err": math.sqrt(same * (1 - same) / (n - 1)) if n > 1 else 0.0,
    })
    return out

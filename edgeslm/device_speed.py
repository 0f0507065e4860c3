"""How fast this machine reads memory and multiplies matrices: the ceilings decode and prefill work under.

A decode step reads every weight the token passes through once, so generation cannot go faster
than ``read bandwidth ÷ bytes read per token``; prefill multiplies matrices, so it cannot go faster
than ``matmul rate ÷ 2 × parameters`` per token. Both are measured here, as STREAM measures a
machine: the read bandwidth by summing a buffer four times larger than a big last-level cache,
split over ``threads`` threads (numpy's reductions release the GIL), best of the passes; the matmul
rate by BLAS's F32 GEMM on square matrices, best of the passes. ``bench`` divides its tok/s by them
(``decode_fraction``, ``prefill_fraction``); ``tune`` keeps them in the device profile.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

READ_BYTES = 256 * 2**20  # the buffer summed: past a 64 MiB last-level cache four times over
MATMUL_N = 1024
PASSES = 5


@dataclass(frozen=True)
class Ceilings:
    read_bytes_per_s: float  # sustained memory read bandwidth, every thread reading
    matmul_flops: float  # F32 GEMM (BLAS), floating-point operations per second
    threads: int


def read_bandwidth(threads: int, size: int = READ_BYTES, passes: int = PASSES) -> float:
    """Bytes per second that ``threads`` threads read together (best of ``passes``)."""
    import numpy as np

    parts = [np.ones(size // 8 // threads, dtype=np.float64) for _ in range(threads)]
    total = sum(p.nbytes for p in parts)
    best = 0.0
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(np.sum, parts))  # first touch: the pages are mapped before the clock starts
        for _ in range(passes):
            start = time.perf_counter()
            list(pool.map(np.sum, parts))
            best = max(best, total / (time.perf_counter() - start))
    return best


def matmul_rate(n: int = MATMUL_N, passes: int = PASSES) -> float:
    """F32 GEMM operations per second with BLAS's own threads (best of ``passes``)."""
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    a @ b  # warm-up: BLAS's threads started
    best = 0.0
    for _ in range(passes):
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def measure(threads: int) -> Ceilings:
    return Ceilings(read_bandwidth(threads), matmul_rate(), threads)


def decode_bytes(tensors: Sequence[tuple[str, int]]) -> int:
    """Bytes a decode step reads: every tensor but the token embedding, of which one row is looked up
    (unless it is also the output matrix, as in a tied model with no ``output.weight``)."""
    names = {name for name, _ in tensors}
    tied = "output.weight" not in names
    return sum(n for name, n in tensors if tied or name != "token_embd.weight")


def decode_fraction(tokens_per_s: float, bytes_per_token: int, ceilings: Ceilings) -> float:
    return tokens_per_s * bytes_per_token / ceilings.read_bytes_per_s


def prefill_fraction(tokens_per_s: float, n_params: int, ceilings: Ceilings) -> float:
    return tokens_per_s * 2 * n_params / ceilings.matmul_flops

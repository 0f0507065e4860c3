"""The machine's ceilings (memory read bandwidth, matmul rate) and what a decode step reads: measured,
kept in the device profile, and divided into bench's speeds."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeslm.device_speed import Ceilings, decode_bytes, decode_fraction, matmul_rate, prefill_fraction, read_bandwidth
from edgeslm.plan.memory import MemoryConstants
from edgeslm.plan.profile import DeviceProfile, fingerprint, load_profile, profile_ceilings, save_profile
from edgeslm.version import __version__


def test_a_decode_step_reads_every_weight_but_a_separate_embedding_table() -> None:
    untied = [("token_embd.weight", 1000), ("blk.0.attn_q.weight", 10), ("output.weight", 1000)]
    tied = [("token_embd.weight", 1000), ("blk.0.attn_q.weight", 10)]
    assert decode_bytes(untied) == 1010  # one row of the table is looked up; the output matrix is read whole
    assert decode_bytes(tied) == 1010  # the table is the output matrix: read whole
    limits = Ceilings(read_bytes_per_s=1e9, matmul_flops=1e10, threads=2)
    assert decode_fraction(50.0, 10_000_000, limits) == pytest.approx(0.5)
    assert prefill_fraction(100.0, 25_000_000, limits) == pytest.approx(0.5)


def test_the_ceilings_are_measured() -> None:
    assert read_bandwidth(2, size=16 * 2**20, passes=2) > 1e8  # even a phone reads 100 MB/s
    assert matmul_rate(n=128, passes=2) > 1e7


def test_the_profile_keeps_the_ceilings(tmp_path: Path) -> None:
    assert profile_ceilings(tmp_path) is None
    kept = DeviceProfile(fingerprint(), __version__, "now", MemoryConstants(), threads=2,
                         read_bytes_per_s=2.5e10, matmul_flops=8e10)
    save_profile(tmp_path, kept)
    assert load_profile(tmp_path) == kept
    assert profile_ceilings(tmp_path) == Ceilings(2.5e10, 8e10, 2)

"""edgeslm tune and the device profile (#36): fitted on real loads, kept per machine and version,
used by plan, ignored (with a warning) when it is not this machine's."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from edgeslm import __version__
from edgeslm.plan.memory import MemoryConstants, MemoryPlan
from edgeslm.plan.profile import DeviceProfile, fingerprint, load_profile, memory_constants, save_profile
from edgeslm.tune import BatchRun, MmapRun, choose_batch, choose_mmap, fit

from .conftest import CliResult

Cli = Callable[..., CliResult]


def _plan(vocab: int, compute: int, rest: int) -> MemoryPlan:
    """A unit-constant plan: its vocabulary and compute parts are the multipliers."""
    return MemoryPlan("m", 512, 1, "f16", rest, 0, 0, compute, vocab, 0)


def test_fit_recovers_the_constants_from_three_shapes_and_the_base_from_fewer() -> None:
    truth = MemoryConstants(base=70_000_000, per_vocab=120.0, per_activation=15.0)
    shapes = [(49_152, 1_081_344), (151_936, 2_949_120), (151_936, 5_373_952), (32_000, 3_000_000)]
    rows = [(_plan(v, c, 10**8), int(10**8 + truth.base + truth.per_vocab * v + truth.per_activation * c))
            for v, c in shapes]
    got = fit(rows)
    assert got.base == pytest.approx(truth.base, rel=1e-6) and got.per_vocab == pytest.approx(120.0, rel=1e-6)
    assert got.per_activation == pytest.approx(15.0, rel=1e-6)
    one = fit(rows[:1], truth)  # one model: its two terms cannot be told apart; the base alone is fitted
    assert one.per_vocab == truth.per_vocab and one.base == pytest.approx(truth.base, abs=1)


def test_a_profile_from_elsewhere_or_unreadable_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = DeviceProfile(fingerprint(), __version__, "now", MemoryConstants(base=1234), threads=1)
    save_profile(tmp_path, mine)
    assert load_profile(tmp_path) == mine and memory_constants(tmp_path).base == 1234
    monkeypatch.setenv("EDGESLM_NO_PROFILE", "1")
    assert load_profile(tmp_path) is None
    monkeypatch.delenv("EDGESLM_NO_PROFILE")
    cases = [(replace(mine, machine="arm64, 8 cores, 16 GiB, 0123456789ab"), "measured on another machine"),
             (replace(mine, edgeslm="0.0.1"), "edgeslm 0.0.1 wrote it")]
    for other, says in cases:
        save_profile(tmp_path, other)
        with caplog.at_level(logging.WARNING):
            assert load_profile(tmp_path) is None
        assert says in caplog.text
    (tmp_path / "device-profile.json").write_text('{"machine": ')
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert memory_constants(tmp_path) == MemoryConstants()
    assert "cannot be read" in caplog.text


@pytest.mark.real_model
def test_tune_measures_the_runner_and_plan_uses_what_it_kept(builtin_home: Path, home: Path, cli: Cli) -> None:
    shutil.copytree(builtin_home, home)
    out = cli("tune", "smollm2-135m-instruct", "--json")
    assert out.code == 0, out.err
    kept = json.loads(out.out)
    assert Path(kept["path"]).is_file() and kept["machine"] == fingerprint()
    probes = [m for m in kept["measurements"] if "slots" in m]
    assert len(probes) == 2 and all(abs(m["predicted"] / m["peak"] - 1) < 0.05 for m in probes)
    speeds = [m for m in kept["measurements"] if "threads" in m]
    assert speeds and all(s["pp"] > 0 and s["tg"] > 0 for s in speeds) and kept["threads"] >= 1
    kv = {m["kv"]: m for m in kept["measurements"] if "kv" in m}  # each cache type's speed, measured
    batches = [m for m in kept["measurements"] if "ubatch" in m]  # llama.cpp's defaults, then 3 × 2 settings
    assert len(batches) == 7 and sum(m["default"] for m in batches) == 1 and all(m["pp"] > 0 for m in batches)
    assert (kept["n_ubatch"], kept["flash_attn"]) == choose_batch([BatchRun(**m) for m in batches])
    assert set(kv) == {"f16", "q8_0", "q4_0"} and all(m["pp"] > 0 and m["tg"] > 0 for m in kv.values())
    files = {m["mmap"]: MmapRun(**m) for m in kept["measurements"] if "mmap" in m}  # mapped and read in
    assert set(files) == {True, False} and all(r.peak > 0 and r.pp > 0 and r.load_seconds > 0 for r in files.values())
    assert kept["use_mmap"] is choose_mmap(list(files.values()))
    ceilings = [m["ceilings"] for m in kept["measurements"] if "ceilings" in m]  # the machine's, bench divides by
    assert len(ceilings) == 1 and kept["read_bytes_per_s"] == ceilings[0]["read_bytes_per_s"] > 1e8
    assert kept["matmul_flops"] == ceilings[0]["matmul_flops"] > 1e8
    plan = json.loads(cli("plan", "smollm2-135m-instruct", "--json").out)
    assert plan["base"] == kept["constants"]["base"]  # the profile's fitted base, not the default
    bad = cli("tune", "no-such-model")
    assert bad.code != 0 and "no-such-model" in bad.err


def test_a_batch_setting_replaces_llamacpps_defaults_only_where_it_clearly_beats_them() -> None:
    default = BatchRun(512, None, True, 100.0, 20.0)
    assert choose_batch([default, BatchRun(128, True, False, 102.0, 20.0)]) == (None, None)  # 2 %: noise
    assert choose_batch([default, BatchRun(128, True, False, 120.0, 20.0), BatchRun(256, False, False, 110.0,
                                                                                     20.0)]) == (128, True)


def test_the_file_is_read_in_only_where_that_clearly_holds_less_at_no_clear_cost() -> None:
    mapped = MmapRun(True, 0.1, 1000, 100.0, 20.0)
    assert choose_mmap([mapped, MmapRun(False, 0.2, 800, 99.0, 20.0)]) is False  # 20 % less, 1 % slower
    assert choose_mmap([mapped, MmapRun(False, 0.2, 980, 100.0, 20.0)]) is True  # 2 % less: not worth it
    assert choose_mmap([mapped, MmapRun(False, 0.2, 800, 80.0, 20.0)]) is True  # 20 % slower prompts


def test_run_bench_and_serve_take_the_profiles_tuning_unless_a_flag_says_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse

    from edgeslm.cli.tuned import tuned_threads, tuning, ubatch
    from edgeslm.config import resolve_settings
    from edgeslm.engines.base import Tuning

    settings = resolve_settings(home=tmp_path)
    flags = argparse.Namespace(threads=None, n_ubatch=None, flash_attn=None, mmap=None)
    assert tuning(flags, settings) == Tuning() and tuned_threads(flags, settings) is None  # no profile
    save_profile(tmp_path, DeviceProfile(fingerprint(), __version__, "now", MemoryConstants(), threads=2,
                                         n_ubatch=128, flash_attn=True, use_mmap=False))
    assert tuning(flags, settings) == Tuning(128, True, False) and tuned_threads(flags, settings) == 2
    given = argparse.Namespace(threads=1, n_ubatch=256, flash_attn="off", mmap="on")
    assert tuning(given, settings) == Tuning(256, False, True) and tuned_threads(given, settings) == 1
    monkeypatch.setenv("EDGESLM_NO_PROFILE", "1")
    assert tuning(flags, settings) == Tuning()
    for bad in ("0", "9000", "many"):
        with pytest.raises(argparse.ArgumentTypeError, match="-ub"):
            ubatch(bad)

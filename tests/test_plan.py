"""edgeslm plan (#36): the runner's memory predicted from the header, checked against a real runner."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgeslm.config import resolve_settings
from edgeslm.engines.base import SamplingParams, Tuning
from edgeslm.formats.kv_cache import KVCache
from edgeslm.generation import resolve_model
from edgeslm.plan.memory import MemoryConstants, plan_memory
from edgeslm.runner.messages import Job
from edgeslm.runner.process import Runner
from edgeslm.tune import measured_peak

from .conftest import CliResult

Cli = Callable[..., CliResult]


def _peak(home: Path, name: str, slots: int, ctx: int, kv: str) -> int:
    return measured_peak(resolve_model(name, resolve_settings(home=home, offline=True)), str(home), slots, ctx, kv)


@pytest.mark.real_model
def test_the_plan_predicts_a_real_runner_and_counts_the_repacked_copy(builtin_home: Path, home: Path,
                                                                      cli: Cli) -> None:
    """SmolLM2 as Q4_0: llama.cpp copies its Q4_0 layers into a repacked layout on x86-64, beside the
    mapped file; the plan counts both, and the KV cache's type."""
    shutil.copytree(builtin_home, home)
    assert cli("quantize", "smollm2-135m-instruct", "--type", "q4_0", "--allow-requantize").code == 0
    model = resolve_model("smollm2-135m-instruct:q4_0", resolve_settings(home=home, offline=True))
    constants = MemoryConstants(repacked_types=frozenset({"Q4_0"}))
    for slots, ctx, kv in ((1, 1024, "f16"), (4, 4096, "q8_0")):
        plan = plan_memory(model.path, model.name, ctx_per_slot=ctx, slots=slots, kv=KVCache.parse(kv),
                           constants=constants)
        peak = _peak(home, model.name, slots, ctx, kv)
        # the constants were fitted on another machine: a tolerance for its libraries, not for a missed part
        assert abs(plan.total / peak - 1) < 0.10, (plan, peak)
    assert plan.repacked > 50 * 2**20 and plan.kv_cache == pytest.approx(4 * 4096 * 30 * 3 * 64 * 2 * 34 / 32, rel=0.01)
    # read into memory instead of mapped (--mmap off): the repacked layers are read straight into their copy
    mapped = plan_memory(model.path, model.name, ctx_per_slot=1024, constants=constants)
    read = plan_memory(model.path, model.name, ctx_per_slot=1024, constants=constants, tuning=Tuning(use_mmap=False))
    assert read.total == mapped.total - mapped.repacked
    peaks = {mmap: measured_peak(model, str(home), 1, 1024, tuning=Tuning(use_mmap=mmap)) for mmap in (True, False)}
    assert peaks[True] - peaks[False] > mapped.repacked / 2 and abs(read.total / peaks[False] - 1) < 0.10, peaks
    shown = {flag: json.loads(cli("plan", model.name, "--ctx", "1024", "--mmap", flag, "--json").out) for flag in
             ("on", "off")}
    assert shown["on"]["mapped"] - shown["off"]["mapped"] == shown["on"]["repacked"] > 0  # plan --mmap off says so


def test_plan_prints_the_parts_and_refuses_what_cannot_load(builtin_home: Path, home: Path, cli: Cli) -> None:
    shutil.copytree(builtin_home, home)
    out = cli("plan", "smollm2-135m-instruct", "--ctx", "4096", "--parallel", "2", "--kv-type", "q8_0", "--json")
    assert out.code == 0, out.err
    plan = json.loads(out.out)
    assert plan["kv_type"] == "q8_0" and plan["slots"] == 2 and plan["runtime"] == "llama.cpp"
    assert plan["total"] == sum(plan[k] for k in ("mapped", "repacked", "kv_cache", "compute", "vocabulary", "base"))
    f16 = json.loads(cli("plan", "smollm2-135m-instruct", "--ctx", "4096", "--parallel", "2", "--json").out)
    assert plan["kv_cache"] == pytest.approx(f16["kv_cache"] * 34 / 64, rel=1e-3)
    long = cli("plan", "smollm2-135m-instruct", "--ctx", "100000")
    assert long.code != 0 and "8,192 tokens, its trained context" in long.err
    bad = cli("plan", "smollm2-135m-instruct", "--parallel", "0")
    assert bad.code != 0 and "parallel 0 is out of range" in bad.err
    table = cli("plan", "smollm2-135m-instruct")
    assert table.code == 0 and "weights, the mapped file" in table.out and "total" in table.out


def test_run_refuses_before_loading_what_the_machine_cannot_hold(builtin_home: Path, home: Path, cli: Cli,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """run plans the load against what the machine has available (its MemAvailable, here 64 MiB)."""
    import edgeslm.device
    import edgeslm.generation

    shutil.copytree(builtin_home, home)
    opened: list[Any] = []
    monkeypatch.setattr(edgeslm.device, "available_ram", lambda: 64 * 2**20)
    monkeypatch.setattr(edgeslm.generation, "open_engine", lambda *a, **k: opened.append(a))
    out = cli("run", "smollm2-135m-instruct", "Hi", "--ctx", "8192")
    assert out.code == 69 and opened == [], out.err
    assert "smollm2-135m-instruct:latest needs" in out.err
    assert "more than this machine has available now 64 MiB" in out.err
    assert "KV cache" in out.err and "1 slot(s) × 8,192 tokens, KV cache f16" in out.err and "--kv-type q8_0" in out.err


@pytest.mark.real_model
def test_plan_ram_chooses_by_measured_quality_under_the_budget(builtin_home: Path, home: Path, cli: Cli) -> None:
    shutil.copytree(builtin_home, home)
    name = "smollm2-135m-instruct"
    assert cli("quantize", name, "--type", "f16,q8_0,q4_0", "--allow-requantize").code == 0
    assert cli("eval", name, "--all-variants", "--chunks", "2", "--no-speed").code == 0
    assert cli("eval", f"{name}:q8_0", "--kv-type", "q8_0", "--chunks", "2", "--no-speed").code == 0

    def plan(*args: str) -> dict[str, Any]:
        out = cli("plan", name, "--json", "--ctx", "2048", *args)
        assert out.code == 0, out.err
        found: dict[str, Any] = json.loads(out.out)
        return found

    roomy = plan("--ram", "4GB")
    # chat: the lowest measured KLD of the model's variants (f16 itself, KLD 0), with an f16 cache
    assert roomy["chosen"]["name"] == f"{name}:f16" and roomy["chosen"]["kv"] == "f16"
    from edgeslm.evaluate.kept import kv_costs
    from edgeslm.store import Store, parse_name

    store = Store.open(home / "models")
    q8 = store.get(parse_name(f"{name}:q8_0"))
    assert kv_costs(store)[(q8.digest, "q8_0")] > 0  # what plan adds to the weights' KLD for that cache
    tight = roomy["chosen"]["memory"] - 1
    second = plan("--ram", str(tight))
    assert second["chosen"]["memory"] <= tight and second["chosen"]["name"] != f"{name}:f16"
    assert "PARAMETER num_ctx 2048" in second["modelfile"] and second["serve"].startswith("edgeslm serve --pin")
    nothing = cli("plan", name, "--ram", "50MB")
    assert nothing.code != 0 and "nothing fits in 50.0 MB; the smallest is" in nothing.err
    floors = cli("plan", name, "--ram", "4GB", "--use-case", "code", "--min-pass", "0.5")
    assert floors.code != 0 and "none measured meets the floors (HumanEval pass@1 >= 50%)" in floors.err


@pytest.mark.real_model
def test_a_served_model_stays_within_its_plan_under_load(builtin_home: Path, home: Path) -> None:
    """Soak: every slot busy with prompts from a few tokens to a full slot, replies to the end of the
    context, for many requests; the runner's peak never passes its plan (5 %: constants from another machine)."""
    shutil.copytree(builtin_home, home)
    model = resolve_model("smollm2-135m-instruct", resolve_settings(home=home, offline=True))
    slots, ctx, kv = 3, 1024, "q8_0"
    plan = plan_memory(model.path, model.name, ctx_per_slot=ctx, slots=slots, kv=KVCache.parse(kv))
    runner = Runner(model, slots=slots, ctx_per_slot=ctx, home=str(home), kv=kv)
    try:
        async def one(n: int) -> int:
            prompt = list(range(2000, 2000 + (n * 97) % (ctx - 40) + 8))
            count = 0
            async for _ in runner.agenerate(Job(prompt, SamplingParams(temperature=0.8, seed=n), 16 + n % 24)):
                count += 1
            return count

        async def soak() -> list[int]:
            return list(await asyncio.gather(*(one(n) for n in range(12))))

        assert all(c > 0 for c in asyncio.run(soak()))
        with open(f"/proc/{runner.pid}/status") as fp:
            peak = next(int(line.split()[1]) * 1024 for line in fp if line.startswith("VmHWM:"))
    finally:
        runner.close()
    assert peak <= plan.total * 1.05, (peak, plan)

"""``edgeslm tune``: measure this machine and keep what it found in the device profile (on the
runner's floor: it probe-loads runners as the server does).

- **memory**: each model's runner (the process ``serve`` starts) at two contexts, its peak resident
  memory after a full micro-batch of prefill; the constants of ``memory.plan_memory`` fitted by least
  squares (all three from three or more differently shaped models, the runner's base alone from fewer);
- **threads**: prompt processing and generation at 1 … physical cores threads (``bench``'s
  machinery, each in its own process), against llama.cpp's default (every physical core) in the same run;
- **micro-batch and flash attention**: prompt processing (pp512) and generation at the best thread count
  with a micro-batch of 128, 256 or 512 tokens and flash attention off or on, against llama.cpp's
  defaults (512, its own choice) in the same run; the best by pp × tg is kept and ``run``/``bench`` use it;
- **KV cache types**: prompt processing and generation with an f16, q8_0 and q4_0 cache at the
  generation's best thread count: what a quantized cache costs or saves in speed here (its quality
  cost is ``eval --kv-type``'s; the profile records it, the default stays f16);
- **ceilings**: the memory read bandwidth and the F32 matmul rate (``device_speed``), which ``bench``
  divides decode and prefill speed by;
- **busy**: the load average before and after, and each measurement's spread between repetitions:
  a busy machine's numbers are reported as such, not trusted silently.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

from . import device_speed
from .bench import BenchParams, bench_models
from .engines.base import SamplingParams, Tuning, physical_cores
from .formats.kv_cache import KVCache
from .plan.memory import MemoryConstants, MemoryPlan, plan_memory
from .plan.profile import DeviceProfile, fingerprint
from .store.records import now_iso
from .store.resolve import ResolvedModel
from .version import __version__

log = logging.getLogger(__name__)

PROBES = ((1, 512), (1, 2048))  # (slots, ctx per slot) per model
BUSY_LOAD = 0.5  # load average per core above which measurements are flagged
NOISY_SPREAD = 0.10  # repetitions further apart than this are flagged


@dataclass(frozen=True)
class BatchRun:
    """Prompt processing and generation (tok/s) at one micro-batch and flash attention setting."""

    ubatch: int
    flash_attn: bool | None  # None: llama.cpp decides
    default: bool  # llama.cpp's defaults (512, its own choice): what the gain is measured against
    pp: float
    tg: float


@dataclass(frozen=True)
class MmapRun:
    """The model mapped (llama.cpp's default) or read into memory: load time, peak memory, speed."""

    mmap: bool
    load_seconds: float
    peak: int  # bytes: the bench process's peak resident set
    pp: float
    tg: float


@dataclass(frozen=True)
class Tuned:
    profile: DeviceProfile
    notes: tuple[str, ...]  # what to know about the measurements (busy machine, noisy runs, what was fitted)
    memory: tuple[tuple[MemoryPlan, int], ...]  # each probe's plan (with the fitted constants) and measured peak
    speed: tuple[dict[str, float], ...]  # per thread count: pp and tg tok/s
    kv_speed: tuple[dict[str, object], ...] = ()  # per KV cache type: pp and tg tok/s at the best thread count
    batch_speed: tuple[BatchRun, ...] = ()  # per micro-batch × flash attention, and llama.cpp's defaults
    mmap_runs: tuple[MmapRun, ...] = ()  # mapped, then read into memory


def measured_peak(model: ResolvedModel, home: str, slots: int, ctx: int, kv: str | None = "f16",
                  requests: int = 1, tuning: Tuning | None = None, prompt: int | None = None) -> int:
    """The runner's peak resident memory (VmHWM) after ``requests`` concurrent requests, each a full
    micro-batch of prefill (or ``prompt`` tokens) and 8 tokens (``kv``: None on a runtime that keeps
    its own cache type)."""
    from .runner.messages import Job
    from .runner.process import Runner

    runner = Runner(model, slots=slots, ctx_per_slot=ctx, home=home, kv=kv, tuning=tuning)
    try:
        vocab = model.info.vocab_size or 2000
        ids = [(1000 + i) % vocab for i in range(prompt or min(ctx - 16, 600))]  # a full micro-batch where it fits

        async def ask(n: int) -> None:
            async for _ in runner.agenerate(Job([*ids[:-1], (ids[-1] + n) % vocab], SamplingParams(temperature=0), 8)):
                pass

        async def all_of() -> None:
            await asyncio.gather(*(ask(n) for n in range(requests)))

        asyncio.run(all_of())
        with open(f"/proc/{runner.pid}/status") as fp:
            return next(int(line.split()[1]) * 1024 for line in fp if line.startswith("VmHWM:"))
    finally:
        runner.close()


def fit(rows: Sequence[tuple[MemoryPlan, int]], start: MemoryConstants | None = None) -> MemoryConstants:
    """Constants from (plan made with unit constants, measured peak) pairs: all three by least squares
    when the models' shapes tell them apart, else the base alone (``start``'s per-entry terms kept)."""
    import numpy as np

    start = start or MemoryConstants()
    rest = [peak - p.mapped - p.repacked - p.kv_cache for p, peak in rows]
    shapes = {(p.vocabulary, p.compute) for p, _ in rows}
    if len({v for v, _ in shapes}) >= 3 and len({c for _, c in shapes}) >= 3:
        a = np.array([[1.0, p.vocabulary, p.compute] for p, _ in rows])
        (base, per_vocab, per_act), *_ = np.linalg.lstsq(a, np.array(rest, dtype=float), rcond=None)
        return replace(start, base=int(base), per_vocab=float(per_vocab), per_activation=float(max(per_act, 0.0)))
    own = [peak - p.mapped - p.repacked - p.kv_cache - start.per_vocab * p.vocabulary
           - start.per_activation * p.compute for p, peak in rows]
    return replace(start, base=int(sum(own) / len(own)))


def unit_plan(model: ResolvedModel, slots: int, ctx: int, kv: str = "f16") -> MemoryPlan:
    """The plan with unit constants: its vocabulary and compute parts are the fit's multipliers."""
    unit = MemoryConstants(base=0, per_vocab=1.0, per_activation=1.0)
    return plan_memory(model.path, model.name, ctx_per_slot=ctx, slots=slots, kv=KVCache.parse(kv), constants=unit)


def tune(models: Sequence[ResolvedModel], home: str, *, speed: bool = True,
         progress: Callable[[str], None] | None = None) -> Tuned:
    say = progress or (lambda _: None)
    notes = [busy_note("before")]
    rows = []
    for model in models:
        for slots, ctx in PROBES:
            say(f"memory: {model.name}, {slots} × {ctx:,} tokens")
            rows.append((unit_plan(model, slots, ctx), measured_peak(model, home, slots, ctx)))
    constants = fit(rows)
    shapes = len({(p.vocabulary, p.compute) for p, _ in rows})
    notes.append(f"memory constants fitted on {len(rows)} loads of {len(models)} model(s)" + (
        "" if shapes >= 3 else ": the runner's base only (three differently shaped models fit all three)"))
    fitted = tuple((replace(p, base=constants.base, vocabulary=round(constants.per_vocab * p.vocabulary),
                            compute=round(constants.per_activation * p.compute)), peak) for p, peak in rows)
    speeds: list[dict[str, float]] = []
    kv_speed: list[dict[str, object]] = []
    batch_speed: list[BatchRun] = []
    threads = threads_batch = n_ubatch = None
    flash_attn: bool | None = None
    use_mmap: bool | None = None
    mmap_runs: list[MmapRun] = []
    ceilings = None
    if speed:
        speeds, noisy = _thread_sweep(models[0], say)
        threads = int(max(speeds, key=lambda s: s["tg"])["threads"])
        threads_batch = int(max(speeds, key=lambda s: s["pp"])["threads"])
        notes += noisy
        kv_speed, noisy = _kv_sweep(models[0], threads, say)
        notes += noisy
        batch_speed, noisy = _batch_sweep(models[0], threads, say)
        notes += noisy
        n_ubatch, flash_attn = choose_batch(batch_speed)
        mmap_runs, noisy = _mmap_sweep(models[0], threads, say)
        notes += noisy
        use_mmap = choose_mmap(mmap_runs)
        say("ceilings: memory read bandwidth and matmul rate")
        ceilings = device_speed.measure(threads)
    notes = [n for n in [*notes, busy_note("after")] if n]
    measurements = tuple({"model": p.model, "slots": p.slots, "ctx": p.ctx_per_slot, "peak": peak,
                          "predicted": p.total} for p, peak in fitted) + tuple(speeds) + tuple(kv_speed) \
        + tuple(asdict(b) for b in batch_speed) + tuple(asdict(m) for m in mmap_runs) \
        + (({"ceilings": asdict(ceilings)},) if ceilings else ())
    profile = DeviceProfile(fingerprint(), __version__, now_iso(), constants, threads, threads_batch, measurements,
                            n_ubatch, flash_attn, use_mmap, ceilings.read_bytes_per_s if ceilings else None,
                            ceilings.matmul_flops if ceilings else None)
    return Tuned(profile, tuple(notes), fitted, tuple(speeds), tuple(kv_speed), tuple(batch_speed), tuple(mmap_runs))


def _thread_sweep(model: ResolvedModel, say: Callable[[str], None]) -> tuple[list[dict[str, float]], list[str]]:
    """pp128 and tg32 at 1 … physical cores threads, two repetitions each."""
    out, noisy = [], []
    for threads in range(1, physical_cores() + 1):
        say(f"speed: {model.name}, {threads} thread(s)")
        result = bench_models([model], BenchParams(n_prompt=128, n_gen=32, repetitions=2, threads=threads))[0]
        by_test = {t.test[:2]: t for t in result.tests}
        out.append({"threads": float(threads), "pp": by_test["pp"].mean, "tg": by_test["tg"].mean})
        for t in result.tests:
            if t.mean and t.stdev / t.mean > NOISY_SPREAD:
                noisy.append(f"{t.test} at {threads} thread(s) varied {100 * t.stdev / t.mean:.0f} % between "
                             "repetitions: the machine is busy or throttling")
    return out, noisy


KV_SWEEP = ("f16", "q8_0", "q4_0")


def _kv_sweep(model: ResolvedModel, threads: int, say: Callable[[str], None]) -> tuple[list[dict[str, object]],
                                                                                     list[str]]:
    """pp128 and tg32 with each KV cache type of ``KV_SWEEP`` (those the model's heads can hold)."""
    out: list[dict[str, object]] = []
    noisy = []
    for kv in KV_SWEEP:
        try:
            KVCache.parse(kv).check_head(model.info.key_length or 0, model.info.value_length or 0, model.name)
        except Exception:  # a head size the type cannot hold: not measurable here
            continue
        say(f"speed: {model.name}, KV cache {kv}")
        result = bench_models([model], BenchParams(n_prompt=128, n_gen=32, repetitions=2, threads=threads,
                                                   kv_type=kv))[0]
        by_test = {t.test[:2]: t for t in result.tests}
        out.append({"kv": kv, "pp": by_test["pp"].mean, "tg": by_test["tg"].mean})
        noisy += [f"{t.test} with a {kv} KV cache varied {100 * t.stdev / t.mean:.0f} % between repetitions: the "
                  "machine is busy or throttling" for t in result.tests if t.mean and t.stdev / t.mean > NOISY_SPREAD]
    return out, noisy


UBATCHES = (128, 256, 512)
CLEAR_GAIN = 0.05  # a setting replaces llama.cpp's defaults only when pp × tg beats them by this much


def choose_batch(runs: Sequence[BatchRun]) -> tuple[int | None, bool | None]:
    """The best micro-batch and flash attention by pp × tg, where they clearly beat llama.cpp's
    defaults (two repetitions on a busy machine differ by more than a setting does); else None,
    None: the defaults are kept."""
    default = next(b for b in runs if b.default)
    best = max((b for b in runs if not b.default), key=lambda b: b.pp * b.tg)
    if best.pp * best.tg < default.pp * default.tg * (1 + CLEAR_GAIN):
        return None, None
    return best.ubatch, best.flash_attn


def _batch_sweep(model: ResolvedModel, threads: int, say: Callable[[str], None]) -> tuple[list[BatchRun], list[str]]:
    """pp512 and tg32 at each micro-batch × flash attention off/on, and at llama.cpp's defaults."""
    out, noisy = [], []
    runs: list[tuple[int, bool | None, bool]] = [(512, None, True)]
    runs += [(u, fa, False) for u in UBATCHES for fa in (False, True)]
    for ubatch, flash, default in runs:
        label = ("llama.cpp's defaults" if default
                 else f"micro-batch {ubatch}, flash attention {'on' if flash else 'off'}")
        say(f"speed: {model.name}, {label}")
        result = bench_models([model], BenchParams(n_prompt=512, n_gen=32, repetitions=2, threads=threads,
                                                   n_ubatch=ubatch, flash_attn=flash))[0]
        by_test = {t.test[:2]: t for t in result.tests}
        out.append(BatchRun(ubatch, flash, default, by_test["pp"].mean, by_test["tg"].mean))
        noisy += [f"{t.test} with {label} varied {100 * t.stdev / t.mean:.0f} % between repetitions: the machine is "
                  "busy or throttling" for t in result.tests if t.mean and t.stdev / t.mean > NOISY_SPREAD]
    return out, noisy


def _mmap_sweep(model: ResolvedModel, threads: int, say: Callable[[str], None]) -> tuple[list[MmapRun], list[str]]:
    """pp512 and tg32, load time and peak memory with the file mapped and read into memory."""
    out, noisy = [], []
    for mmap in (True, False):
        label = "the file mapped" if mmap else "the file read into memory"
        say(f"speed and memory: {model.name}, {label}")
        result = bench_models([model], BenchParams(n_prompt=512, n_gen=32, repetitions=2, threads=threads,
                                                   use_mmap=mmap))[0]
        by_test = {t.test[:2]: t for t in result.tests}
        out.append(MmapRun(mmap, result.load_seconds, result.peak_rss, by_test["pp"].mean, by_test["tg"].mean))
        noisy += [f"{t.test} with {label} varied {100 * t.stdev / t.mean:.0f} % between repetitions: the machine is "
                  "busy or throttling" for t in result.tests if t.mean and t.stdev / t.mean > NOISY_SPREAD]
    return out, noisy


MMAP_SAVING = 0.05  # reading the file in is kept when it holds this much less memory at the peak …
MMAP_SLOWER = 0.05  # … and is not this much slower (pp × tg)


def choose_mmap(runs: Sequence[MmapRun]) -> bool:
    """Read the file into memory where that holds clearly less (llama.cpp repacks weights from a
    mapped file into a copy beside it) at no clear cost in speed; else map it, llama.cpp's default."""
    mapped, read = (next(r for r in runs if r.mmap is m) for m in (True, False))
    saves = read.peak < mapped.peak * (1 - MMAP_SAVING)
    return not (saves and read.pp * read.tg >= mapped.pp * mapped.tg * (1 - MMAP_SLOWER))


def busy_note(when: str) -> str:
    """'' on a quiet machine; else what the load average says."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return ""
    cores = physical_cores()
    if load / cores <= BUSY_LOAD:
        return ""
    return (f"{when}: load average {load:.1f} on {cores} cores: other work was running, so speeds measured now "
            "are lower than this machine's own (memory is not affected)")

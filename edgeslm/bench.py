"""``edgeslm bench``: prompt processing and generation speed, the way llama-bench measures them.

Each model runs in its own subprocess (``python -m edgeslm.bench MODEL ...``) so that one
model's memory cannot inflate another's peak RSS. Inside, as in llama-bench: one warm-up
run, then per repetition a ``pp N`` test (N prompt tokens decoded in batches, starting with
BOS) and a ``tg N`` test (N tokens generated one by one through the real generation loop,
greedy sampling in llama.cpp), each from an empty KV cache.

With ``--draft`` (llama.cpp models) two more tests run on a copy workload, as llama.cpp's
``llama-lookup`` and ``llama-speculative`` measure one prompt: a WikiText paragraph, then its
first lines again, so the model copies on; ``tg N copy`` generates N tokens from it plainly and
``tg N copy+DRAFT`` with the drafts (prompt lookup, or a draft model's file), reporting how many
drafted tokens were accepted.
"""

from __future__ import annotations

import json
import random
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .device_speed import decode_bytes
from .engines.base import DEFAULT_ENGINE, Engine, LoadParams, SamplingParams, Tuning, open_engine
from .errors import InvalidParameterError
from .formats.kv_cache import KVCache
from .framing import child_main, run_child

if TYPE_CHECKING:
    from .store.resolve import ResolvedModel


COPY_TEXT = Path(__file__).parent / "data" / "wikitext-2-sample.txt"


@dataclass(frozen=True)
class BenchParams:
    n_prompt: int = 512
    n_gen: int = 128
    repetitions: int = 5
    threads: int | None = None
    draft: dict[str, Any] | None = None  # LookupConfig.as_args(), or {"model": path, "name": name}
    adapters: tuple[tuple[str, float], ...] = ()  # a custom model's LoRA adapters (path, scale)
    kv_type: str = "f16"  # the KV cache (KVCache's spelling), as llama-bench's -ctk/-ctv
    n_ubatch: int | None = None  # prompt tokens per forward pass (None: llama.cpp's 512), as llama-bench's -ub
    flash_attn: bool | None = None  # None: what the KV type needs, else llama.cpp's choice; as llama-bench's -fa
    use_mmap: bool = True  # map the file (llama.cpp's default) or read it into memory; as llama-bench's -mmp

    def __post_init__(self) -> None:
        KVCache.parse(self.kv_type)
        if self.n_ubatch is not None and not (isinstance(self.n_ubatch, int) and 1 <= self.n_ubatch <= 8192):
            raise InvalidParameterError(f"-ub {self.n_ubatch} is out of range; valid: 1 to 8,192")
        for name, value, low in (("-p", self.n_prompt, 0), ("-n", self.n_gen, 0), ("-r", self.repetitions, 1)):
            if not isinstance(value, int) or not low <= value <= 65_536:
                raise InvalidParameterError(f"{name} {value} is out of range; valid: {low} to 65,536")
        if self.n_prompt == 0 and self.n_gen == 0:
            raise InvalidParameterError("nothing to measure: -p and -n are both 0")


@dataclass(frozen=True)
class TestResult:
    test: str  # "pp512", "tg128", "tg128 copy" or "tg128 copy+lookup"
    n_tokens: int
    samples_tps: tuple[float, ...]
    drafted: int = 0  # draft tests: drafted tokens verified (all repetitions), and of those accepted
    accepted: int = 0
    declined: int = 0  # drafts found but not verified: the cost measured at load said they would not pay

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples_tps)

    @property
    def stdev(self) -> float:
        return statistics.stdev(self.samples_tps) if len(self.samples_tps) > 1 else 0.0


@dataclass(frozen=True)
class BenchResult:
    model: str
    file_size: int
    n_params: int
    bits_per_weight: float
    threads: int
    load_seconds: float
    peak_rss: int  # bytes, of the subprocess that measured this model
    tests: tuple[TestResult, ...]
    runtime: str = DEFAULT_ENGINE
    kv_type: str = "f16"
    decode_bytes: int = 0  # weights a decode step reads (GGUF; 0: not known)

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["tests"] = [{**asdict(t), "mean_tps": t.mean, "stdev_tps": t.stdev} for t in self.tests]
        return data


def _time_prompt(engine: Engine, tokens: list[int]) -> float:
    start = time.perf_counter()
    engine.prefill(tokens)
    return time.perf_counter() - start


def reset_peak_rss() -> None:
    """Linux keeps a process's peak RSS across fork and exec, so a worker started by a big parent
    would report the parent's peak; resetting VmHWM (clear_refs 5) makes the peak the worker's own."""
    try:
        with open("/proc/self/clear_refs", "w") as fp:
            fp.write("5")
    except OSError:
        pass


def peak_rss() -> int:
    """Peak RSS in bytes since the last reset (VmHWM), else the rusage high-water mark."""
    try:
        with open("/proc/self/status") as fp:
            for line in fp:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(path: str, params: BenchParams, engine_name: str = DEFAULT_ENGINE) -> dict[str, Any]:
    """Run in the worker subprocess: load ``path`` and time pp/tg; return a JSON-able dict."""
    reset_peak_rss()
    n_ctx = max(params.n_prompt + params.n_gen + 8, 64, COPY_ROOM + params.n_gen if params.draft else 0)
    start = time.perf_counter()
    adapters = tuple((str(p), float(s)) for p, s in params.adapters)
    tuning = Tuning(params.n_ubatch, params.flash_attn, params.use_mmap)
    load = tuning.load_params(n_ctx=n_ctx, n_threads=params.threads, adapters=adapters,
                              kv=KVCache.parse(params.kv_type))
    engine = open_engine(engine_name, Path(path), load)
    load_seconds = time.perf_counter() - start
    if params.draft is not None and engine.name != "llama.cpp":  # before anything is timed
        engine.close()
        raise InvalidParameterError(
            f"bench --draft: drafts are verified by llama.cpp; this model runs on {engine.name}"
        )
    rng = random.Random(0)
    bos = engine.tokenize("", add_special=True)[:1] or [0]
    prompt = bos + [rng.randrange(engine.n_vocab) for _ in range(params.n_prompt - 1)] if params.n_prompt else []
    tests = []
    if params.n_prompt:
        _time_prompt(engine, prompt)  # warm-up, as llama-bench does
        samples = [params.n_prompt / _time_prompt(engine, prompt) for _ in range(params.repetitions)]
        tests.append({"test": f"pp{params.n_prompt}", "n_tokens": params.n_prompt, "samples_tps": samples})
    if params.n_gen:
        greedy = SamplingParams(temperature=0)
        _time_stream(engine.generate_tokens(bos[:1], greedy), min(params.n_gen, 16))  # warm-up
        samples = [
            _time_stream(engine.generate_tokens(bos[:1], greedy), params.n_gen) for _ in range(params.repetitions)
        ]
        tests.append({"test": f"tg{params.n_gen}", "n_tokens": params.n_gen, "samples_tps": samples})
    if params.draft is not None and params.n_gen:
        tests += _draft_tests(engine, params)
    engine.close()
    peak = peak_rss()
    return {
        "load_seconds": load_seconds,
        "peak_rss": peak,
        "tests": tests,
        "threads": LoadParams(n_ctx=n_ctx, n_threads=params.threads).threads,
    }


COPY_ROOM = 640  # context for the copy workload's prompt (300 to 450 tokens for the builtins' vocabularies)


def copy_prompt() -> str:
    """A paragraph, then its start: what a model asked to rewrite or edit its input copies on."""
    text = COPY_TEXT.read_bytes().decode()[2000:3200].replace("\r", "")
    return f"{text}\n\n{text[:300]}"


def _draft_tests(engine: Engine, params: BenchParams) -> list[dict[str, Any]]:
    from .engines.llamacpp.engine import LlamaCppEngine
    from .speculation import LookupConfig, SpecStats

    assert params.draft is not None and isinstance(engine, LlamaCppEngine)
    prompt = engine.tokenize(copy_prompt(), add_special=True)
    draft: LookupConfig | LlamaCppEngine
    if "model" in params.draft:
        draft = _open_draft(engine, params.draft, LoadParams(n_ctx=engine.n_ctx, n_threads=params.threads))
    else:
        draft = LookupConfig(**params.draft)
    label = params.draft.get("name") or params.draft["kind"]
    stats, plain, spec = SpecStats(), [], []
    try:
        for rep in range(params.repetitions + 1):  # the first of each: a warm-up (and the verify costs measured)
            p = _time_stream(engine.generate_tokens(prompt, SamplingParams(temperature=0)), params.n_gen)
            s = _time_stream(engine.generate_speculative(prompt, SamplingParams(temperature=0), draft,
                                                         stats if rep else SpecStats()), params.n_gen)
            if rep:
                plain.append(p)
                spec.append(s)
    finally:
        if isinstance(draft, LlamaCppEngine):
            draft.close()
    name = f"tg{params.n_gen} copy"
    return [
        {"test": name, "n_tokens": params.n_gen, "samples_tps": plain},
        {"test": f"{name}+{label}", "n_tokens": params.n_gen, "samples_tps": spec, "drafted": stats.drafted,
         "accepted": stats.accepted, "declined": stats.declined},
    ]


def _open_draft(target: Engine, spec: dict[str, Any], load: LoadParams) -> Any:
    from .engines.llamacpp.speculative import check_vocabulary

    draft = open_engine("llama.cpp", Path(spec["model"]), load)
    try:
        check_vocabulary(target, draft, ("the model", spec["name"]))  # type: ignore[arg-type]
    except BaseException:
        draft.close()
        raise
    return draft


def _time_stream(stream: Any, n_gen: int) -> float:
    """Tokens per second over ``n_gen`` tokens after the first (the first comes with the prompt's
    prefill and its first sample: not generation)."""
    next(stream)
    start, count = time.perf_counter(), 0
    for _ in range(n_gen):
        if next(stream, None) is None:  # the context is full
            break
        count += 1
    elapsed = time.perf_counter() - start
    stream.close()
    return count / elapsed


BENCH_TIMEOUT = 3600.0  # seconds: five pp512+tg128 runs of a 30B model on two cores take minutes


def run_worker(
    path: str, params: BenchParams, timeout: float = BENCH_TIMEOUT, engine: str = DEFAULT_ENGINE
) -> dict[str, Any]:
    """Measure ``path`` in a fresh subprocess (killed past ``timeout``) and return its report."""
    cmd = [sys.executable, "-m", "edgeslm.bench", path, json.dumps(asdict(params)), engine]
    return run_child(cmd, timeout=timeout, what=f"bench of {path}")


def bench_models(models: Sequence[ResolvedModel], params: BenchParams) -> list[BenchResult]:
    """Each model is measured in its own subprocess, in order, by its own runtime."""
    results = []
    for model in models:
        name, info, engine = model.name, model.info, model.engine(DEFAULT_ENGINE)
        report = run_worker(str(model.path), replace(params, adapters=model.adapters), engine=engine)
        tests = tuple(TestResult(t["test"], t["n_tokens"], tuple(t["samples_tps"]), t.get("drafted", 0),
                                 t.get("accepted", 0), t.get("declined", 0)) for t in report["tests"])
        results.append(
            BenchResult(
                name,
                info.file_size,
                info.n_params,
                info.bits_per_weight,
                int(report["threads"]),
                float(report["load_seconds"]),
                int(report["peak_rss"]),
                tests,
                engine,
                params.kv_type,
                _decode_bytes(model),
            )
        )
    return results


def _decode_bytes(model: ResolvedModel) -> int:
    """What a decode step of ``model`` reads (``device_speed.decode_bytes``), from its GGUF header."""
    from .formats.gguf_header import read_gguf_header
    from .formats.model_format import ModelFormat

    if model.format is not ModelFormat.GGUF:
        return 0
    header = read_gguf_header(model.path, label=model.name)
    return decode_bytes([(t.name, t.n_bytes) for t in header.tensors])


if __name__ == "__main__":
    child_main(lambda: measure(sys.argv[1], BenchParams(**json.loads(sys.argv[2])), *sys.argv[3:4]))

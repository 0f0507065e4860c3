"""The one ``Engine`` protocol, its parameter records, and the registry engines join.

An engine turns token ids into token ids (and logits, and embeddings); everything above it
(chat templates, stop strings, timings, the CLI and the server) is engine-independent.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from ..config import DEFAULT_CONTEXT, DEFAULT_ENGINE
from ..errors import ContextOverflowError, EngineError, InvalidParameterError
from ..formats.kv_cache import F16_CACHE, KVCache

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = ["DEFAULT_ENGINE", "ENGINES", "Engine", "LoadParams", "SamplingParams", "Tuning", "open_engine",
           "register_engine"]

MAX_CONTEXT = 1 << 20
MAX_STOP = 16  # stop strings per generation
MAX_STOP_CHARS = 256  # characters per stop string
MAX_SEED = 2**32 - 1
MAX_GRAMMAR = 1 << 20

log = logging.getLogger(__name__)


def _check(ok: bool, name: str, value: object, valid: str) -> None:
    if not ok:
        raise InvalidParameterError(f"{name}={value!r} is out of range; valid: {valid}")


def _finite(value: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class SamplingParams:
    """llama.cpp's samplers and their defaults (``common/common.h``); temperature 0 is greedy."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64  # the window of the penalties (repeat, frequency, presence)
    frequency_penalty: float = 0.0  # OpenAI's: minus count x this from a token's logit
    presence_penalty: float = 0.0  # OpenAI's: minus this from the logit of a token already there
    seed: int | None = None  # None: a fresh random seed per generation
    grammar: str | None = None  # GBNF: only text this grammar accepts (JSON mode, a JSON schema)
    grammar_triggers: tuple[str, ...] = ()  # regexes: the grammar waits for one (llama.cpp's lazy grammar)
    deterministic: bool = False  # decoded alone: the same sums, so the same reply, whatever runs beside it

    def __post_init__(self) -> None:
        _check(
            _finite(self.temperature) and 0 <= self.temperature <= 100,
            "temperature",
            self.temperature,
            "0 (greedy) to 100",
        )
        _check(_int(self.top_k) and 0 <= self.top_k <= 1_000_000, "top_k", self.top_k, "0 (off) to 1,000,000")
        _check(_finite(self.top_p) and 0 < self.top_p <= 1, "top_p", self.top_p, "greater than 0, at most 1")
        _check(_finite(self.min_p) and 0 <= self.min_p <= 1, "min_p", self.min_p, "0 to 1")
        _check(
            _finite(self.repeat_penalty) and 0 < self.repeat_penalty <= 10,
            "repeat_penalty",
            self.repeat_penalty,
            "greater than 0, at most 10 (1 is off)",
        )
        _check(
            _int(self.repeat_last_n) and 0 <= self.repeat_last_n <= MAX_CONTEXT,
            "repeat_last_n",
            self.repeat_last_n,
            "0 to 1,048,576",
        )
        for name in ("frequency_penalty", "presence_penalty"):
            value = getattr(self, name)
            _check(_finite(value) and -2 <= value <= 2, name, value, "-2 to 2 (0 is off)")
        _check(
            self.seed is None or (_int(self.seed) and 0 <= self.seed <= MAX_SEED), "seed", self.seed, f"0 to {MAX_SEED}"
        )
        _check(
            self.grammar is None or (isinstance(self.grammar, str) and 0 < len(self.grammar) <= MAX_GRAMMAR),
            "grammar",
            "(text)",
            f"1 to {MAX_GRAMMAR:,} characters of GBNF",
        )
        _check(
            isinstance(self.grammar_triggers, tuple) and len(self.grammar_triggers) <= 8
            and all(isinstance(t, str) and 0 < len(t) <= 256 for t in self.grammar_triggers)
            and (self.grammar is not None or not self.grammar_triggers),
            "grammar_triggers",
            "(patterns)",
            "up to 8 patterns of 1 to 256 characters, with a grammar",
        )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @classmethod
    def over(cls, stored: Mapping[str, Any], given: Mapping[str, Any]) -> SamplingParams:
        """The fields ``given`` sets (a request's, the CLI's flags; None is unset) over a created
        model's ``stored`` parameters, over llama.cpp's defaults; a seed of -1 is a fresh one."""
        names = {f.name for f in fields(cls)} - {"grammar", "grammar_triggers"}
        values = {k: v for k, v in stored.items() if k in names}
        values |= {k: v for k, v in given.items() if k in names and v is not None}
        if values.get("seed") == -1:
            values["seed"] = None
        return cls(**values)

    @property
    def penalized(self) -> bool:
        """Any of the penalties is on (within a window of ``repeat_last_n`` tokens)."""
        on = self.repeat_penalty != 1.0 or self.frequency_penalty != 0.0 or self.presence_penalty != 0.0
        return on and self.repeat_last_n > 0

    @property
    def plain_greedy(self) -> bool:
        """Greedy with no penalty: the argmax of the logits, no sampler needed."""
        return self.greedy and self.grammar is None and not self.penalized


@dataclass(frozen=True)
class Tuning:
    """How llama.cpp loads and runs a model where ``edgeslm tune`` measured better than its defaults,
    or a flag said (``-ub``, ``-fa``, ``--mmap``); None each: llama.cpp's own (512, its choice, mapped)."""

    n_ubatch: int | None = None
    flash_attn: bool | None = None
    use_mmap: bool | None = None

    def __post_init__(self) -> None:
        _check(self.n_ubatch is None or (_int(self.n_ubatch) and 1 <= self.n_ubatch <= MAX_UBATCH), "ubatch",
               self.n_ubatch, f"1 to {MAX_UBATCH:,}")

    def load_params(self, **given: Any) -> LoadParams:
        """``LoadParams(**given)`` with these settings (a KV type that needs flash attention on or off
        keeps it so)."""
        ubatch = self.n_ubatch or LoadParams.n_ubatch
        kv = given.get("kv", F16_CACHE)
        flash = self.flash_attn if kv.flash_attention is None else None
        mmap = LoadParams.use_mmap if self.use_mmap is None else self.use_mmap
        return LoadParams(n_batch=max(LoadParams.n_batch, ubatch), n_ubatch=ubatch, flash_attn=flash, use_mmap=mmap,
                          **given)


MAX_UBATCH = 8192


@dataclass(frozen=True)
class LoadParams:
    n_ctx: int = DEFAULT_CONTEXT
    n_threads: int | None = None  # None: physical cores
    n_batch: int = 2048
    n_ubatch: int = 512
    embeddings: bool = False
    kv: KVCache = F16_CACHE  # the KV cache's types (F16, llama.cpp's default; F32 for exact comparisons)
    adapters: tuple[tuple[str, float], ...] = ()  # LoRA adapters (GGUF path, scale), on every context
    flash_attn: bool | None = None  # None: what the KV type needs, else llama.cpp's choice (edgeslm tune's)
    use_mmap: bool = True  # llama.cpp maps the file (its default); False reads it into memory (edgeslm tune's)

    def __post_init__(self) -> None:
        _check(_int(self.n_ctx) and 16 <= self.n_ctx <= MAX_CONTEXT, "ctx", self.n_ctx, "16 to 1,048,576")
        _check(
            self.n_threads is None or (_int(self.n_threads) and 1 <= self.n_threads <= 1024),
            "threads",
            self.n_threads,
            "1 to 1024",
        )
        _check(_int(self.n_ubatch) and 1 <= self.n_ubatch <= self.n_batch, "ubatch", self.n_ubatch, "1 to n_batch")
        needs = self.kv.flash_attention
        _check(self.flash_attn is None or needs is None or self.flash_attn == needs, "flash_attn", self.flash_attn,
               f"{'on' if needs else 'off'} with a {self.kv} KV cache (a quantized V needs it on, F32 keeps it off)")

    @property
    def threads(self) -> int:
        return self.n_threads or physical_cores()


def physical_cores() -> int:
    """Physical cores (what llama.cpp's ``cpu_get_num_math`` prefers), else logical ones."""
    try:
        with open("/proc/cpuinfo") as fp:
            cores = set()
            physical = core = None
            for line in fp:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    physical = value.strip()
                elif key == "core id":
                    core = value.strip()
                elif not key and core is not None:
                    cores.add((physical, core))
                    physical = core = None
            if core is not None:
                cores.add((physical, core))
        if cores:
            return len(cores)
    except OSError:
        pass
    return os.cpu_count() or 1


@runtime_checkable
class Engine(Protocol):
    """What every engine provides. Token ids are the model's own vocabulary ids."""

    name: str
    n_ctx: int
    n_vocab: int

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]: ...

    def token_bytes(self, token: int, *, special: bool = False) -> bytes: ...

    def is_end_of_generation(self, token: int) -> bool: ...

    def chat_template(self) -> str | None: ...

    def bos_text(self) -> str: ...

    def eos_text(self) -> str: ...

    def prefill(self, tokens: Sequence[int]) -> None:
        """Evaluate ``tokens`` from an empty cache, keeping only the last position's logits."""
        ...

    def eval_logits(self, tokens: Sequence[int], first: int = 0, *, copy: bool = True) -> npt.NDArray[np.float32]:
        """Logits (rows x n_vocab, float32) of positions ``first..`` of ``tokens``, from an empty cache;
        with ``copy=False`` the engine may return a view valid only until its next call."""
        ...

    def generate_tokens(self, prompt: Sequence[int], sampling: SamplingParams) -> Generator[int, None, None]:
        """Prefill ``prompt`` (from an empty cache), then yield sampled tokens until the caller stops."""
        ...

    def embed(self, text: str | Sequence[int]) -> list[float]:
        """The text's (or the token ids') pooled, L2-normalised embedding."""
        ...

    def embed_many(self, texts: Sequence[str | Sequence[int]], *, truncate: bool = False) -> Embedded:
        """Each text's embedding, as many at a time as the engine can; a text longer than the model
        embeds is cut to fit when ``truncate``, else refused (``ContextOverflowError``)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Embedded:
    vectors: list[list[float]]
    tokens: int  # the tokens embedded (after any truncation)


@dataclass(frozen=True)
class StepEvent:
    """One token of one request, from a runner's batch decoder."""

    request: str
    token: int
    finish: str | None  # None while generating; 'stop' (end of generation) or 'length'
    logprob: float | None = None  # of ``token``, when the request asked for log-probabilities
    top: tuple[tuple[int, float], ...] = ()  # the most likely tokens and their log-probabilities


class BatchDecoderLike(Protocol):
    """Several generations at once on one loaded model (a runner's slots)."""

    ctx_per_slot: int
    grammars: bool  # whether a request's sampling may carry a GBNF grammar

    def free_slots(self) -> int: ...

    def add(
        self, request: str, prompt: list[int], sampling: SamplingParams, max_tokens: int, logprobs: int | None = None
    ) -> None: ...

    def cancel(self, request: str) -> None: ...

    def step(self) -> list[StepEvent]: ...

    def close(self) -> None: ...


def check_slot_prompt(prompt: list[int], ctx_per_slot: int) -> None:
    if not prompt:
        raise InvalidParameterError("the prompt is empty")
    if len(prompt) >= ctx_per_slot:
        raise ContextOverflowError(
            f"the prompt has {len(prompt):,} tokens but a slot holds {ctx_per_slot:,}; shorten it"
        )


def logprobs_of(row: npt.NDArray[np.float32], token: int, k: int) -> tuple[float, tuple[tuple[int, float], ...]]:
    """log-softmax of a raw logits row (before sampling settings, as OpenAI reports them): the
    token's, and the ``k`` most likely tokens' with theirs."""
    import numpy as np

    peak = float(row.max())
    lse = peak + float(np.log(np.exp(row.astype(np.float64) - peak).sum()))
    top: tuple[tuple[int, float], ...] = ()
    if k > 0:
        best = np.argpartition(row, -k)[-k:]
        best = best[np.argsort(-row[best])]
        top = tuple((int(t), float(row[t]) - lse) for t in best)
    return float(row[token]) - lse, top


EngineFactory = Callable[[Path, LoadParams], Engine]
ENGINES: dict[str, EngineFactory] = {}
F = TypeVar("F", bound=EngineFactory)


def register_engine(name: str) -> Callable[[F], F]:
    """Decorator: make a factory ``(path, LoadParams) -> Engine`` loadable by ``name``."""

    def wrap(factory: F) -> F:
        ENGINES[name] = factory
        return factory

    return wrap


# the modules of edgeslm's own engines, imported (and so registered) on first use: native code
BUILTIN_ENGINES = {DEFAULT_ENGINE: "llamacpp.engine", "onnxruntime": "onnxruntime.engine", "mlx": "mlx.engine"}


# each engine's batch decoder for a runner's slots: (module, class), imported on first use
BATCH_DECODERS = {
    DEFAULT_ENGINE: ("llamacpp.batch", "BatchDecoder"), "onnxruntime": ("onnxruntime.batch", "SlotDecoder"),
    "mlx": ("slots", "GeneratorSlots"),
}


def open_batch(engine: Engine, slots: int, ctx_per_slot: int, *, reuse: bool = True,
               draft: Any = None, n_batch: int | None = None) -> BatchDecoderLike:
    """The batch decoder of ``engine``'s runtime, for ``slots`` concurrent generations; ``draft``
    (a ``LookupConfig``): speculative decoding where the runtime has it (llama.cpp); ``n_batch``:
    tokens per step (llama.cpp: its batch and micro-batch; None: 512)."""
    try:
        module, cls = BATCH_DECODERS[engine.name]
    except KeyError:
        raise EngineError(f"the {engine.name} engine cannot serve (no batch decoder)") from None
    extra: dict[str, Any] = {"draft": draft} if draft is not None and engine.name == "llama.cpp" else {}
    if draft is not None and not extra:
        log.info("speculative decoding is not available with %s models: %s decodes plainly", engine.name, engine.name)
    if n_batch is not None and engine.name == "llama.cpp":
        extra["n_batch"] = n_batch
    decoder: BatchDecoderLike = getattr(importlib.import_module(f"{__package__}.{module}"), cls)(
        engine, slots, ctx_per_slot, reuse=reuse, **extra
    )
    return decoder


def open_engine(name: str, path: Path, params: LoadParams) -> Engine:
    if name in BUILTIN_ENGINES and name not in ENGINES:
        importlib.import_module(f"{__package__}.{BUILTIN_ENGINES[name]}")
    try:
        factory = ENGINES[name]
    except KeyError:
        raise EngineError(f"no engine named '{name}'; available: {', '.join(sorted(ENGINES)) or 'none'}") from None
    if params.adapters and name != DEFAULT_ENGINE:
        raise InvalidParameterError(f"LoRA adapters run on llama.cpp (GGUF models), not on {name}; "
                                    "attach the adapter to the model's GGUF variant")
    if not params.kv.default and name != DEFAULT_ENGINE:
        raise InvalidParameterError(
            f"a KV cache type ({params.kv}) is a llama.cpp setting; {name} keeps its cache in the type its model "
            "declares: drop --kv-type, or use the model's GGUF variant",
            params="kv_type")
    return factory(path, params)

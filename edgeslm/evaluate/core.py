"""``edgeslm eval``: perplexity, and KL-divergence against a reference computed in lockstep.

Chunks follow llama-perplexity: the text is tokenized once (BOS where the vocabulary adds
one), cut into non-overlapping chunks of ``ctx`` tokens, each chunk's first token replaced by
BOS, and only the second half of each chunk scored (position i predicts token i+1). With a
reference, both models evaluate the same chunk and are compared at once, so no multi-gigabyte
logits file is written. Results are kept in the store under a key of (model digest, reference
digest, text digest, settings) for ``compare`` and ``optimize``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from ..bench import BenchParams, run_worker
from ..engines.base import DEFAULT_ENGINE, Engine, LoadParams, open_engine
from ..errors import InputFileError, InvalidParameterError
from ..formats.kv_cache import F16_CACHE, KVCache
from ..formats.model_format import engine_for
from .result import RESULTS_SCHEMA, EvalResult, Speed

__all__ = ["REFERENCE_TAGS", "EvalResult", "EvalSettings", "EvalText", "all_results", "evaluate", "load_text"]
from ..store import ModelName, Store
from ..store.records import Manifest, now_iso
from .kept import all_results, load_result, save_result
from .stats import F32, Accumulator, summarize

log = logging.getLogger(__name__)
DEFAULT_TEXT = "wikitext-2-sample.txt"
SPEED = BenchParams(n_prompt=512, n_gen=128, repetitions=1)
REFERENCE_TAGS = ("f32", "bf16", "f16")  # a model's reference variants, preferred first


@dataclass(frozen=True)
class EvalSettings:
    """How ``evaluate`` scores: tokens per chunk, how many chunks, threads, and whether to measure
    speed and memory too."""

    ctx: int = 512
    chunks: int | None = None  # None: every whole chunk of the text
    threads: int | None = None
    speed: bool = True  # also measure pp/tg tok/s and peak RSS (bench machinery)
    kv: str = "f16"  # the model's KV cache (KVCache's spelling); the reference's is always F16

    def __post_init__(self) -> None:
        KVCache.parse(self.kv)
        if not isinstance(self.ctx, int) or not 16 <= self.ctx <= 1 << 20:
            raise InvalidParameterError(f"ctx={self.ctx} is out of range; valid: 16 to 1,048,576")
        if self.chunks is not None and (not isinstance(self.chunks, int) or self.chunks < 1):
            raise InvalidParameterError(f"chunks={self.chunks} is out of range; valid: 1 or more")


@dataclass(frozen=True)
class EvalText:
    label: str
    text: str
    digest: str


def load_text(path: Path | None) -> EvalText:
    """The user's UTF-8 text file, or the bundled WikiText-2 sample."""
    if path is None:
        raw = files("edgeslm").joinpath("data").joinpath(DEFAULT_TEXT).read_bytes()
        label = f"bundled {DEFAULT_TEXT}"
    else:
        if path.is_dir() or not path.exists():
            raise InputFileError(f"{path} is not a text file; give the path of a UTF-8 text file")
        raw = path.read_bytes()
        label = path.name
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputFileError(
            f"{label} is not UTF-8 text (bad byte at offset {exc.start:,}); convert it first"
        ) from None
    if not text.strip():
        raise InputFileError(f"{label} is empty; evaluation needs text")
    return EvalText(label, text, "sha256-" + hashlib.sha256(raw).hexdigest())


def _check_pair(model: Engine, reference: Engine, model_name: str, ref_name: str) -> None:
    probe = "The quick brown fox, 2024: naïve café — 東京 🙂"
    if model.n_vocab != reference.n_vocab or (
        model.name == reference.name and model.tokenize(probe) != reference.tokenize(probe)
    ):
        raise InvalidParameterError(
            f"{model_name} and {ref_name} do not share a vocabulary ({model.n_vocab:,} vs {reference.n_vocab:,} "
            "tokens, or different tokenization): KL-divergence between them is meaningless; compare variants "
            "of one model"
        )
    if model.name != reference.name:
        _check_same_bytes(model, reference, model_name, ref_name)


def _check_same_bytes(model: Engine, reference: Engine, model_name: str, ref_name: str) -> None:
    """Two runtimes read the reference's token ids: each id must stand for the same bytes in both.
    Ids the reference spells as nothing (control and padding tokens, which text never tokenizes to)
    are left out: runtimes name those differently (``</s>``, ``[PAD151665]``) and no text scores them."""
    differ = [t for t in range(reference.n_vocab)
              if (ours := reference.token_bytes(t)) and model.token_bytes(t) != ours]
    if differ:
        shown = ", ".join(f"{t} ({model.token_bytes(t)!r} vs {reference.token_bytes(t)!r})" for t in differ[:3])
        raise InvalidParameterError(
            f"{model_name} ({model.name}) and {ref_name} ({reference.name}) map {len(differ):,} token ids to "
            f"different bytes, e.g. {shown}: the text is tokenized once, by the reference, so their logits "
            "would score different tokens; rebuild the variant from the reference's own tokenizer"
        )


def chunk_tokens(engine: Engine, text: EvalText, settings: EvalSettings) -> list[list[int]]:
    tokens = engine.tokenize(text.text, add_special=True, parse_special=False)
    available = len(tokens) // settings.ctx
    if available == 0:
        raise InvalidParameterError(
            f"{text.label} has {len(tokens):,} tokens; one chunk at ctx {settings.ctx} needs {settings.ctx:,}: "
            "give a longer text or a smaller ctx",
            params="ctx",
        )
    n = available if settings.chunks is None else min(settings.chunks, available)
    if settings.chunks is not None and settings.chunks > available:
        log.warning("%s holds %d chunks of %d tokens; evaluating %d", text.label, available, settings.ctx, n)
    return [tokens[i * settings.ctx : (i + 1) * settings.ctx] for i in range(n)]


def bos_token(engine: Engine) -> int | None:
    with_bos = engine.tokenize("", add_special=True)
    return with_bos[0] if with_bos else None


def measure_quality(
    model: Engine, reference: Engine | None, chunks: list[list[int]], progress: Callable[[int, int], None] | None = None
) -> tuple[dict[str, Any], float]:
    """Score every chunk; return (statistics, seconds)."""
    acc = Accumulator()
    bos = bos_token(reference or model)
    start = time.perf_counter()
    for i, chunk in enumerate(chunks):
        first = len(chunk) // 2
        batch = ([bos] + chunk[1:]) if bos is not None else chunk
        targets = np.asarray(chunk[first + 1 :], dtype=np.int64)
        # Views of each engine's output buffer where possible: Gemma's 262k vocabulary makes a
        # copy of 256 rows 268 MB. Each stays valid until its own engine's next call.
        logits = scored_rows(model, batch, first)
        ref = scored_rows(reference, batch, first) if reference is not None else None
        acc.add(logits, targets, ref)
        if progress:
            progress(i + 1, len(chunks))
    return summarize(acc), time.perf_counter() - start


def scored_rows(engine: Engine, batch: list[int], first: int) -> F32:
    """Logits predicting tokens first+1.. of ``batch``: a view, valid until the engine's next call."""
    return engine.eval_logits(batch, first, copy=False)[:-1]


def result_key(model: Manifest, reference: Manifest | None, text: EvalText, settings: EvalSettings) -> str:
    basis: dict[str, Any] = {
        "model": model.digest,
        "reference": reference.digest if reference else None,
        "text": text.digest,
        "ctx": settings.ctx,
        "chunks": settings.chunks,
        "schema": RESULTS_SCHEMA,
    }
    if settings.kv != "f16":  # added only when set: the keys of results kept before stay valid
        basis["kv"] = settings.kv
    for key, m in (("adapters", model), ("reference_adapters", reference)):  # a custom model is not its base
        if m is not None and m.adapters:
            basis[key] = [(a.digest, a.scale) for a in m.adapters]
    return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:32]


def evaluate(
    store: Store,
    name: ModelName,
    reference: ModelName | None,
    text: EvalText,
    settings: EvalSettings,
    *,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
    engine_name: str = DEFAULT_ENGINE,
) -> EvalResult:
    """Evaluate ``name`` (against ``reference``), reusing a stored result unless ``force``."""
    model = store.get(name)
    model.info.check_has_logits(str(model.name))
    ref = store.get(reference) if reference is not None else None
    for m in (model, ref):
        trained = m.info.context_length if m is not None else None
        if trained and settings.ctx > trained:
            raise InvalidParameterError(
                f"ctx {settings.ctx} is longer than {m.name}'s context of {trained:,} "  # type: ignore[union-attr]
                "tokens; use a smaller ctx",
                params="ctx",
            )
    key = result_key(model, ref, text, settings)
    if not force and (cached := load_result(store, key)) is not None:
        # Keyed by content: another name for the same bytes (cp, or a requantization that
        # reproduces its source) shares the result, reported under the name asked for.
        if settings.speed and cached.speed is None:  # kept from a run without speed
            cached = cached.with_speed(_speed(store, model, settings))
            save_result(store, cached)
        return cached.renamed(str(model.name))
    params = LoadParams(
        n_ctx=settings.ctx, n_threads=settings.threads, n_batch=max(settings.ctx, 512), n_ubatch=min(settings.ctx, 512)
    )

    def opened(m: Manifest, kv: KVCache = F16_CACHE) -> Any:
        with_adapters = replace(params, adapters=store.adapter_files(m), kv=kv)
        return open_engine(engine_for(m.format, engine_name), store.model_path(m), with_adapters)

    engine = opened(model, KVCache.parse(settings.kv))
    ref_engine = opened(ref) if ref else None
    try:
        if ref_engine is not None:
            _check_pair(engine, ref_engine, str(name), str(reference))
        # tokenized once, by the reference: both runtimes score the same ids
        chunks = chunk_tokens(ref_engine or engine, text, settings)
        stats, seconds = measure_quality(engine, ref_engine, chunks, progress)
    finally:
        engine.close()
        if ref_engine is not None:
            ref_engine.close()
    result = EvalResult(
        key=key, created=now_iso(), model=str(model.name), model_digest=model.digest, runtime=engine.name,
        reference=str(ref.name) if ref else None, reference_digest=ref.digest if ref else None,
        text=text.label, text_digest=text.digest, settings=asdict(settings), chunks=len(chunks), eval_seconds=seconds,
        eval_tokens_per_second=len(chunks) * settings.ctx * (2 if ref else 1) / seconds,
        file_size=model.size, n_params=model.info.n_params, bits_per_weight=model.info.bits_per_weight,
        type_mix=tuple(asdict(s) for s in model.info.type_mix), file_type=model.info.file_type,
        speed=_speed(store, model, settings) if settings.speed else None, **stats,
    )
    save_result(store, result)
    return result


def _speed(store: Store, model: Manifest, settings: EvalSettings) -> Speed:
    params = BenchParams(SPEED.n_prompt, SPEED.n_gen, SPEED.repetitions, settings.threads,
                         adapters=store.adapter_files(model), kv_type=settings.kv)
    report = run_worker(str(store.model_path(model)), params, engine=engine_for(model.format, DEFAULT_ENGINE))
    tps = {t["test"][:2]: t["samples_tps"][0] for t in report["tests"]}
    peak, threads = int(report["peak_rss"]), int(report["threads"])
    return Speed(tps.get("pp"), tps.get("tg"), peak, threads, SPEED.n_prompt, SPEED.n_gen)

"""How much each tensor's precision matters: measured KL-divergence per unit of weight error.

A scratch copy of the reference (F16/BF16/F32) is evaluated on calibration chunks once as is,
then once per probe with Gaussian noise of a fixed relative mean squared error (``NOISE``,
about what Q4_0 does to Gaussian weights) written into the probe's tensors; the KLD against
the unmodified reference, divided by ``NOISE``, is the probe's sensitivity. Probes are
(block of layers x role: attn, ffn), each tensor kind across all layers, and each tensor
outside the blocks (token_embd, output). A tensor's sensitivity is its group's, shared among
the group's tensors in proportion to their kinds' sensitivities. For a small perturbation KLD
grows with the squared error whatever its cause, so sensitivity x a type's relative error on
that tensor predicts what the type costs (``mixed.py``).

Calibration chunks are the *last* chunks of the text; evaluation uses the first ones, and the
two are checked not to meet. Measurements are kept in the store after every probe, so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..engines.base import DEFAULT_ENGINE, Engine, LoadParams, open_engine
from ..errors import InvalidParameterError
from ..evaluate.core import EvalText, bos_token, scored_rows
from ..evaluate.kept import results_dir
from ..evaluate.stats import F32, kld_sum, log_softmax_rows
from ..formats.gguf_header import GGUFHeader, TensorInfo, read_gguf_header
from ..store import Store
from ..store.atomic import TempFile, write_atomic
from ..store.records import Manifest
from .mixed import STORAGE_TYPES, Slot, find_slots, read_rows, relative_errors

log = logging.getLogger(__name__)
NOISE = 0.005  # relative MSE of the injected noise
MAX_LAYER_BLOCKS = 16  # layers are grouped so that there are at most this many blocks per role
PATCH_ELEMENTS = 1 << 22  # rows are perturbed in pieces of about this many elements
SCHEMA = 1
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class CalibrationParams:
    ctx: int = 512
    chunks: int = 1
    threads: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.ctx, int) or not 16 <= self.ctx <= 1 << 20:
            raise InvalidParameterError(f"calibration ctx={self.ctx} is out of range; valid: 16 to 1,048,576")
        if not isinstance(self.chunks, int) or not 1 <= self.chunks <= 1024:
            raise InvalidParameterError(f"calibration chunks={self.chunks} is out of range; valid: 1 to 1,024")


@dataclass(frozen=True)
class Probe:
    label: str  # 'group blk.0-1 attn', 'kind attn_q', 'tensor token_embd'
    tensors: tuple[str, ...]


@dataclass(frozen=True)
class Sensitivity:
    per_unit: dict[str, float]  # tensor -> KLD per unit of relative squared error
    measured: dict[str, float]  # probe label -> mean KLD with NOISE in its tensors
    errors: dict[str, dict[str, float]]  # tensor -> type -> relative squared error
    tokens: int  # calibration tokens scored


def make_probes(slots: Sequence[Slot]) -> list[Probe]:
    layers = sorted({s.layer for s in slots if s.layer is not None})
    size = max(1, math.ceil(len(layers) / MAX_LAYER_BLOCKS))
    blocks = [layers[i : i + size] for i in range(0, len(layers), size)]
    probes = []
    for block in blocks:
        for role in sorted({s.role for s in slots if s.layer in block}):
            names = tuple(s.name for s in slots if s.layer in block and s.role == role)
            span = f"{block[0]}-{block[-1]}" if len(block) > 1 else f"{block[0]}"
            probes.append(Probe(f"group blk.{span} {role}", names))
    for kind in sorted({s.kind for s in slots if s.layer is not None}):
        probes.append(Probe(f"kind {kind}", tuple(s.name for s in slots if s.layer is not None and s.kind == kind)))
    probes += [Probe(f"tensor {s.kind}", (s.name,)) for s in slots if s.layer is None]
    return probes


def per_unit_sensitivity(
    slots: Sequence[Slot], probes: Sequence[Probe], measured: dict[str, float]
) -> dict[str, float]:
    """Each group's measured KLD shared among its tensors by their kinds' measured KLD."""
    floor = 1e-9  # a probe lost in the noise still costs something, so no type is free
    kind = {s.name: s.kind for s in slots}
    kind_kld = {
        p.label.removeprefix("kind "): max(measured[p.label], floor) for p in probes if p.label.startswith("kind ")
    }
    out = {}
    for p in probes:
        if p.label.startswith("kind "):
            continue
        weights = [kind_kld.get(kind[n], 1.0) if p.label.startswith("group ") else 1.0 for n in p.tensors]
        total = max(measured[p.label], floor)
        for name, w in zip(p.tensors, weights, strict=True):
            out[name] = total * w / sum(weights) / NOISE
    return out


def calibration_chunks(engine: Engine, text: EvalText, params: CalibrationParams, reserved: int) -> list[list[int]]:
    """The last ``params.chunks`` whole chunks, refusing to touch the first ``reserved`` tokens
    (the evaluation's)."""
    tokens = engine.tokenize(text.text, add_special=True, parse_special=False)
    available = len(tokens) // params.ctx
    first = available - params.chunks
    if first < 0 or first * params.ctx < reserved:
        raise InvalidParameterError(
            f"{text.label} has {len(tokens):,} tokens: too few for {params.chunks} calibration chunk(s) of "
            f"{params.ctx} kept apart from the {reserved:,} evaluation tokens; give a longer text, fewer "
            "chunks or calibration_chunks, or a separate calibration text",
            params=("text", "chunks", "calibration_chunks", "calibration"),
        )
    return [tokens[i * params.ctx : (i + 1) * params.ctx] for i in range(first, available)]


def _cache_path(store: Store, reference: Manifest, text: EvalText, params: CalibrationParams) -> Path:
    basis = [reference.digest, text.digest, params.ctx, params.chunks, NOISE, MAX_LAYER_BLOCKS, SCHEMA]
    return results_dir(store) / f"sensitivity-{hashlib.sha256(json.dumps(basis).encode()).hexdigest()[:32]}.json"


def _load_cache(path: Path) -> dict[str, Any]:
    """What an earlier run kept; anything unreadable or malformed is measured again."""
    fresh: dict[str, Any] = {"measured": {}, "errors": None, "tokens": 0}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return fresh
    ok = (
        isinstance(data, dict)
        and isinstance(data.get("measured"), dict)
        and all(isinstance(v, float) for v in data["measured"].values())
        and (data.get("errors") is None or isinstance(data["errors"], dict))
        and isinstance(data.get("tokens"), int)
    )
    if not ok:
        log.warning("ignoring malformed sensitivity cache %s", path)
    return data if ok else fresh


def check_reference(reference: Manifest, header: GGUFHeader, slots: Sequence[Slot]) -> None:
    by_name = {t.name: t for t in header.tensors}
    packed = [s.name for s in slots if by_name[s.name].ggml_type not in STORAGE_TYPES]
    if packed:
        raise InvalidParameterError(
            f"{reference.name} holds quantized weights ({packed[0]} is {by_name[packed[0]].ggml_type.name}): "
            "mixed precision needs an F16, BF16 or F32 reference; make one with "
            f"'edgeslm quantize {reference.name.base} --type f16 --allow-requantize'"
        )


def measure_sensitivity(
    store: Store,
    reference: Manifest,
    text: EvalText,
    params: CalibrationParams,
    *,
    reserved_tokens: int = 0,
    progress: Progress | None = None,
    engine_name: str = DEFAULT_ENGINE,
) -> Sensitivity:
    """Measure (or load what is kept of) every probe's sensitivity on ``reference``."""
    ref_path = store.gguf_path(reference, "optimize")
    header = read_gguf_header(ref_path, label=str(reference.name))
    slots = find_slots(header)
    check_reference(reference, header, slots)
    probes = make_probes(slots)
    cache_path = _cache_path(store, reference, text, params)
    cache = _load_cache(cache_path)
    if cache["errors"] is None:
        if progress:
            progress(0, len(probes), "weight error of each type")
        cache["errors"] = relative_errors(ref_path, header, slots)
        write_atomic(cache_path, json.dumps(cache).encode(), store.tmp_dir)
    todo = [p for p in probes if p.label not in cache["measured"]]
    if todo:
        _run_probes(
            store, reference, header, text, params, todo, cache, cache_path, reserved_tokens, progress, engine_name
        )
    measured = {p.label: float(cache["measured"][p.label]) for p in probes}
    return Sensitivity(per_unit_sensitivity(slots, probes, measured), measured, cache["errors"], int(cache["tokens"]))


def _run_probes(
    store: Store,
    reference: Manifest,
    header: GGUFHeader,
    text: EvalText,
    params: CalibrationParams,
    todo: Sequence[Probe],
    cache: dict[str, Any],
    cache_path: Path,
    reserved: int,
    progress: Progress | None,
    engine_name: str,
) -> None:
    ref_path = store.gguf_path(reference, "optimize")
    load = LoadParams(n_ctx=params.ctx, n_threads=params.threads, n_batch=params.ctx, n_ubatch=min(params.ctx, 512))
    with store.locked():
        scratch = TempFile(store.tmp_dir, "sensitivity")
    with scratch:
        with open(ref_path, "rb") as src:
            shutil.copyfileobj(src, scratch.file, 8 << 20)
        scratch.file.flush()
        engine = open_engine(engine_name, scratch.path, load)
        try:
            chunks = calibration_chunks(engine, text, params, reserved)
            bos = bos_token(engine)
            batches = [([bos] + c[1:]) if bos is not None else c for c in chunks]
            ref_logp = [log_softmax_rows(scored_rows(engine, b, len(b) // 2)) for b in batches]
        finally:
            engine.close()
        by_name = {t.name: t for t in header.tensors}
        fd = scratch.file.fileno()
        done = len(cache["measured"])
        total = done + len(todo)
        for probe in todo:
            if progress:
                progress(done, total, probe.label)
            tensors = [by_name[n] for n in probe.tensors]
            for t in tensors:
                _perturb(fd, ref_path, t)
            try:
                kld, tokens = _kld(engine_name, scratch.path, load, batches, ref_logp)
            finally:
                for t in tensors:
                    _restore(fd, ref_path, t)
            cache["measured"][probe.label], cache["tokens"] = kld, tokens
            write_atomic(cache_path, json.dumps(cache).encode(), store.tmp_dir)
            done += 1
            log.info("sensitivity %s: KLD %.6f at relative error %g", probe.label, kld, NOISE)


def _kld(
    engine_name: str, path: Path, load: LoadParams, batches: list[list[int]], ref_logp: list[F32]
) -> tuple[float, int]:
    engine = open_engine(engine_name, path, load)
    try:
        total, rows = 0.0, 0
        for batch, ref in zip(batches, ref_logp, strict=True):
            total += kld_sum(ref, scored_rows(engine, batch, len(batch) // 2))
            rows += len(ref)
    finally:
        engine.close()
    return total / rows, rows


def _perturb(fd: int, ref_path: Path, t: TensorInfo) -> None:
    """Write the reference's rows of ``t`` plus noise of relative MSE ``NOISE`` into the scratch."""
    ne0 = t.shape[0]
    n_rows = t.n_elements // ne0
    row_bytes = t.n_bytes // n_rows
    step = max(1, PATCH_ELEMENTS // ne0)
    seed = int.from_bytes(hashlib.sha256(t.name.encode()).digest()[:8], "little")
    for i, r0 in enumerate(range(0, n_rows, step)):
        w = read_rows(ref_path, t, slice(r0, min(r0 + step, n_rows)))
        sigma = math.sqrt(NOISE * float(np.mean(np.square(w, dtype=np.float64))))
        noise = np.random.default_rng([seed, i]).standard_normal(w.shape, dtype=np.float32)
        os.pwrite(fd, _encode(w + np.float32(sigma) * noise, t), t.offset + r0 * row_bytes)


def _encode(values: F32, t: TensorInfo) -> bytes:
    from gguf.constants import GGMLQuantizationType as T

    if t.ggml_type == T.F16:
        return values.astype(np.float16).tobytes()
    if t.ggml_type == T.BF16:  # round to nearest even, as ggml's fp32 -> bf16
        bits = values.view(np.uint32).astype(np.uint64)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16).tobytes()
    return values.astype(np.float32).tobytes()


def _restore(fd: int, ref_path: Path, t: TensorInfo) -> None:
    with open(ref_path, "rb") as src:
        src.seek(t.offset)
        done = 0
        while done < t.n_bytes:
            piece = src.read(min(8 << 20, t.n_bytes - done))
            os.pwrite(fd, piece, t.offset + done)
            done += len(piece)

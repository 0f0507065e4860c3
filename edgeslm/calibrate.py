"""``edgeslm calibrate``: a model's importance matrix, computed as ``llama-imatrix`` computes it.

The text is tokenized as llama.cpp's tools read a ``-f`` file (bytes as UTF-8, one trailing
newline dropped, special tokens not parsed) and cut into chunks of ``ctx`` tokens, each decoded
from a clear state with its first token replaced by BOS where the model adds one; llama-imatrix
needs at least two chunks. ``engines.llamacpp.imatrix`` sums the squared activations. The result is
kept in llama.cpp's imatrix GGUF format beside the store, under the model's digest and named by
the text's digest, ctx and chunk count: ``<store>/imatrix/<model digest>/<text>-c<ctx>-n<chunks>.gguf``,
a file ``llama-quantize --imatrix`` reads as it reads its own.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputFileError, InvalidParameterError, ModelNotFoundError
from .formats.gguf_header import read_gguf_header
from .formats.imatrix import Entry, Imatrix, check_model, read_imatrix, write_imatrix
from .store import ModelName, Store
from .store.atomic import TempFile
from .store.records import Manifest

log = logging.getLogger(__name__)
IMATRIX_DIR = "imatrix"
DEFAULT_CTX = 512  # llama-imatrix's


@dataclass(frozen=True)
class Calibration:
    model: str
    path: Path  # the stored imatrix file
    text: str  # the text's label
    text_digest: str
    ctx: int
    chunks: int
    entries: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.ctx * self.chunks / self.seconds if self.seconds else 0.0


def imatrix_folder(store: Store, manifest: Manifest) -> Path:
    return store.root / IMATRIX_DIR / manifest.digest


def calibrate(
    store: Store, name: ModelName, text_path: Path | None = None, *, ctx: int = DEFAULT_CTX,
    chunks: int | None = None, from_chunk: int = 0, threads: int | None = None, process_output: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Calibration:
    """Compute ``name``'s importance matrix as llama-imatrix does (chunks of ``ctx`` tokens of the
    text from chunk ``from_chunk``, at most ``chunks`` of them) and store it beside the model, in
    llama.cpp's GGUF imatrix format, for ``quantize(..., QuantizeOptions(imatrix=path))``."""
    from .engines.base import LoadParams
    from .engines.llamacpp.engine import open_llamacpp
    from .evaluate.core import load_text

    if chunks is not None and chunks < 1:
        raise InvalidParameterError(f"chunks {chunks}: calibrate at least 1 chunk (default: all)", params="chunks")
    if not 16 <= ctx <= 1 << 17 or from_chunk < 0:
        raise InvalidParameterError("ctx 16 to 131,072 tokens per chunk; from_chunk 0 or more", params="ctx")
    manifest = store.get(name)
    text = load_text(text_path)
    engine = open_llamacpp(store.gguf_path(manifest, "calibrate"), LoadParams(n_ctx=ctx, n_threads=threads))
    try:
        batches = _chunks(engine, text.text, text.label, ctx, chunks, from_chunk)
        return calibrate_chunks(store, manifest, engine, batches, text, process_output=process_output,
                                progress=progress)
    finally:
        engine.close()


def calibrate_chunks(
    store: Store, manifest: Manifest, engine: Any, chunks: list[list[int]], text: Any, *,
    process_output: bool = False, progress: Callable[[int], None] | None = None,
) -> Calibration:
    """Collect over ``chunks`` (tokens of ``text``, an ``EvalText``) with ``engine`` (the model,
    loaded) and store the result; the first token of each chunk becomes BOS where the model adds one."""
    from .engines.llamacpp.imatrix import collect

    bos = engine.tokenize("", add_special=True)
    batches = [[bos[0], *c[1:]] for c in chunks] if bos else chunks
    ctx = len(batches[0])
    started = time.perf_counter()
    collected = collect(engine.model_handle, batches, threads=engine.params.n_threads or _cores(),
                        process_output=process_output, progress=progress)
    seconds = time.perf_counter() - started
    entries = {n: Entry(s, collected.counts[n].astype(np.float32)) for n, s in collected.sums.items()}
    imatrix = Imatrix(entries, (text.label,), len(batches), ctx,
                      {"edgeslm.model": manifest.digest, "edgeslm.text": text.digest})
    path = imatrix_folder(store, manifest) / f"{text.digest[7:23]}-c{ctx}-n{len(batches)}.gguf"
    _store(store, imatrix, path)
    log.info("calibrated %s on %s: %d chunks of %d tokens, %d weights", manifest.name, text.label, len(batches),
             ctx, len(entries))
    return Calibration(str(manifest.name), path, text.label, text.digest, ctx, len(batches), len(entries), seconds)


def _cores() -> int:
    from .engines.base import physical_cores

    return physical_cores()


def _chunks(engine: object, text: str, label: str, ctx: int, chunks: int | None, first: int) -> list[list[int]]:
    if text.endswith("\n"):
        text = text[:-1]  # as llama.cpp's tools read -f
    tokens = engine.tokenize(text, add_special=True, parse_special=False)  # type: ignore[attr-defined]
    tokens = tokens[first * ctx :]
    if len(tokens) < 2 * ctx:
        raise InputFileError(f"{label} gives {len(tokens):,} tokens from chunk {first}; calibration needs at least "
                             f"two chunks of {ctx} ({2 * ctx:,} tokens), as llama-imatrix does: give a longer text "
                             "or a smaller ctx")
    n = len(tokens) // ctx if chunks is None else min(chunks, len(tokens) // ctx)
    return [tokens[i * ctx : (i + 1) * ctx] for i in range(n)]


def _store(store: Store, imatrix: Imatrix, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with store.locked():
        tmp = TempFile(store.tmp_dir, "imatrix")
    with tmp:
        write_imatrix(imatrix, tmp.path)
        read_imatrix(tmp.path, label=path.name)  # what we wrote must read back
        tmp.commit(path)


def stored_imatrices(store: Store, manifest: Manifest) -> list[Path]:
    """The model's stored importance matrices, newest first."""
    folder = imatrix_folder(store, manifest)
    found = [p for p in folder.iterdir() if p.suffix in (".gguf", ".dat") and p.is_file()] if folder.is_dir() else []
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def resolve_imatrix(store: Store, manifest: Manifest, given: str) -> Path:
    """``--imatrix NAME|FILE``: a file (checked against the model, then kept beside its own), or a
    stored model's newest importance matrix (which must be this model's)."""
    path = Path(given).expanduser()
    if path.is_file():
        return adopt_imatrix(store, manifest, path)
    from .store import parse_name

    try:
        owner = store.get(parse_name(given))
    except ModelNotFoundError:
        raise InputFileError(f"--imatrix {given!r} is neither a file nor a stored model") from None
    if owner.digest != manifest.digest:
        raise InvalidParameterError(f"{owner.name} is not {manifest.name}; give {manifest.name}'s own importance "
                                    "matrix (edgeslm calibrate)", params="imatrix")
    found = stored_imatrices(store, owner)
    if not found:
        raise InvalidParameterError(f"{manifest.name} has no importance matrix yet; compute one: edgeslm "
                                    f"calibrate {manifest.name} (or quantize with --calibrate TEXT)",
                                    params="imatrix")
    return found[0]


def check_imatrix_for(model_file: Path, path: Path) -> None:
    """Refuse ``path`` unless it is an importance matrix of the GGUF model at ``model_file``."""
    header = read_gguf_header(model_file)
    check_model(read_imatrix(path), header.tensors, path.name, model_file.name)


def adopt_imatrix(store: Store, manifest: Manifest, path: Path) -> Path:
    """Check a foreign imatrix file (llama-imatrix's, GGUF or legacy .dat) against the model and keep a
    copy beside its own."""
    imatrix = read_imatrix(path)
    header = read_gguf_header(store.gguf_path(manifest, "quantize"), label=str(manifest.name))
    check_model(imatrix, header.tensors, path.name, str(manifest.name))
    from .store.atomic import sha256_file

    suffix = ".dat" if imatrix.legacy else ".gguf"  # kept as given: lineage names these bytes
    dest = imatrix_folder(store, manifest) / f"file-{sha256_file(path)[:16]}{suffix}"
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        with store.locked():
            tmp = TempFile(store.tmp_dir, "imatrix")
        with tmp:
            shutil.copyfile(path, tmp.path)
            os.utime(tmp.path)
            tmp.commit(dest)
    return dest

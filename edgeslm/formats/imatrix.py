"""Importance matrices in llama.cpp's GGUF imatrix format (``llama-imatrix``'s default output,
``llama-quantize --imatrix``'s input; ``tools/imatrix/imatrix.cpp`` and ``common/imatrix-loader``).

    general.type        "imatrix"
    imatrix.datasets    [str]   the texts it was computed on
    imatrix.chunk_count u32     chunks of imatrix.chunk_size tokens
    imatrix.chunk_size  u32
    per weight W, two F32 tensors:
      W.in_sum2   ne = [n_cols, n_mat]   sum over tokens of each input column squared (per expert)
      W.counts    ne = [1, n_mat]        tokens summed (per expert)

A file is read through the bounded header walk (``gguf_header``) and then checked entry by entry
(paired tensors, F32, sizes that agree, finite sums, counts that are whole numbers of tokens in
range) before any number is used; ``check_model`` refuses one made for another model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from gguf.constants import GGMLQuantizationType

from ..errors import InvalidModelFileError
from .gguf_header import GGUFHeader, TensorInfo, read_gguf_header

F32 = npt.NDArray[np.float32]
TYPE = "imatrix"
KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE = "imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size"
SUMS, COUNTS = ".in_sum2", ".counts"
MAX_COUNT = 2.0**40  # tokens per entry: far beyond any calibration run, far below float32's exact range loss
MAX_ENTRIES = 16_384


@dataclass(frozen=True)
class Entry:
    sums: F32  # (n_mat, n_cols)
    counts: F32  # (n_mat,)

    def importance(self) -> F32:
        """What llama-quantize hands the quantizer: sums / count per matrix (1 where nothing was seen)."""
        out = np.ones_like(self.sums)
        seen = self.counts > 0
        out[seen] = self.sums[seen] / self.counts[seen, None]
        return out


@dataclass(frozen=True)
class Imatrix:
    entries: Mapping[str, Entry]
    datasets: tuple[str, ...] = ()
    chunk_count: int = 0
    chunk_size: int = 0
    extra: Mapping[str, str] = field(default_factory=dict)  # edgeslm.* keys: the model and text it belongs to


def write_imatrix(imatrix: Imatrix, path: Path) -> None:
    """``imatrix`` as llama-imatrix writes it (tensors in name order), at ``path`` (a new file)."""
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), arch=None)  # type: ignore[arg-type]
    writer.add_type(TYPE)
    writer.add_array(KEY_DATASETS, list(imatrix.datasets))
    writer.add_uint32(KEY_CHUNK_COUNT, imatrix.chunk_count)
    writer.add_uint32(KEY_CHUNK_SIZE, imatrix.chunk_size)
    for key, value in sorted(imatrix.extra.items()):
        writer.add_string(key, value)
    for name in sorted(imatrix.entries):
        e = imatrix.entries[name]
        one = e.sums.shape[0] == 1  # as ggml writes it: [n_cols] and [1] for a single matrix
        sums = e.sums.reshape(-1) if one else e.sums
        counts = e.counts.reshape(1) if one else e.counts.reshape(-1, 1)
        writer.add_tensor(name + SUMS, np.ascontiguousarray(sums, dtype=np.float32))
        writer.add_tensor(name + COUNTS, np.ascontiguousarray(counts, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def read_imatrix(path: Path, *, label: str | None = None) -> Imatrix:
    label = label or Path(path).name
    header = read_gguf_header(path, label=label)
    if header.metadata.get("general.type") != TYPE:
        raise InvalidModelFileError(f"{label} is a GGUF file but not an importance matrix (general.type is "
                                    f"{str(header.metadata.get('general.type'))[:40]!r}); give llama-imatrix's "
                                    "output or edgeslm calibrate's")  # fmt: skip
    tensors = {t.name: t for t in header.tensors}
    names = sorted({n.removesuffix(SUMS) for n in tensors if n.endswith(SUMS)})
    if len(names) * 2 != len(tensors) or len(names) > MAX_ENTRIES:
        raise InvalidModelFileError(f"{label}: every weight needs exactly a {SUMS} and a {COUNTS} tensor, "
                                    "and nothing else")  # fmt: skip
    with open(path, "rb") as fp:
        entries = {n: _entry(fp, tensors[n + SUMS], tensors.get(n + COUNTS), label) for n in names}
    datasets = header.metadata.get(KEY_DATASETS)
    return Imatrix(entries, tuple(str(d) for d in getattr(datasets, "items", ()) or ()),
                   _uint(header, KEY_CHUNK_COUNT), _uint(header, KEY_CHUNK_SIZE),
                   {k: str(v) for k, v in header.metadata.items() if k.startswith("edgeslm.")})  # fmt: skip


def _uint(header: GGUFHeader, key: str) -> int:
    value = header.metadata.get(key)
    return value if isinstance(value, int) and 0 <= value < 2**32 else 0


def _entry(fp: object, sums: TensorInfo, counts: TensorInfo | None, label: str) -> Entry:
    name = sums.name.removesuffix(SUMS)
    if counts is None or sums.ggml_type != GGMLQuantizationType.F32 or counts.ggml_type != GGMLQuantizationType.F32:
        raise InvalidModelFileError(f"{label}: {name} needs F32 {SUMS} and {COUNTS} tensors")
    s_shape, c_shape = _two_dims(sums.shape), _two_dims(counts.shape)  # ggml drops trailing 1s
    if s_shape is None or c_shape is None or c_shape != (1, s_shape[1]):
        raise InvalidModelFileError(f"{label}: {name}'s {SUMS} {list(sums.shape)} and {COUNTS} "
                                    f"{list(counts.shape)} do not agree")  # fmt: skip
    n_cols, n_mat = s_shape
    s = _floats(fp, sums).reshape(n_mat, n_cols)
    c = _floats(fp, counts)
    if not np.isfinite(s).all() or (s < 0).any():
        raise InvalidModelFileError(f"{label}: {name} holds sums that are not finite non-negative numbers")
    if not np.isfinite(c).all() or (c < 0).any() or (c > MAX_COUNT).any() or (c != np.floor(c)).any():
        raise InvalidModelFileError(f"{label}: {name} holds token counts that are not whole numbers of 0 to "
                                    f"{MAX_COUNT:.0f}")  # fmt: skip
    return Entry(s, c)


def _two_dims(shape: tuple[int, ...]) -> tuple[int, int] | None:
    if len(shape) == 1:
        return shape[0], 1
    return (shape[0], shape[1]) if len(shape) == 2 else None


def _floats(fp: object, t: TensorInfo) -> F32:
    fp.seek(t.offset)  # type: ignore[attr-defined]
    data = fp.read(t.n_bytes)  # type: ignore[attr-defined]  # bounded: the header walk placed it in the file
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


def check_model(imatrix: Imatrix, model_tensors: Sequence[TensorInfo], label: str, model: str) -> None:
    """Refuse an imatrix whose weights the model does not have, or has with other sizes."""
    shapes = {t.name: t.shape for t in model_tensors}
    for name, e in imatrix.entries.items():
        shape = shapes.get(name)
        if shape is None:
            raise InvalidModelFileError(f"{label} is not an importance matrix of {model}: {model} has no weight "
                                        f"{name[:80]!r}; calibrate {model} itself (edgeslm calibrate)")  # fmt: skip
        n_mat = math.prod(shape[2:]) if len(shape) > 2 else 1
        if shape[0] != e.sums.shape[1] or n_mat != e.sums.shape[0]:
            raise InvalidModelFileError(f"{label} is not an importance matrix of {model}: {name} takes "
                                        f"{shape[0]} inputs x {n_mat} matrices there, {e.sums.shape[1]} x "
                                        f"{e.sums.shape[0]} here")  # fmt: skip
    if not imatrix.entries:
        raise InvalidModelFileError(f"{label} holds no importance data")


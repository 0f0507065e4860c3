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

llama-imatrix's legacy ``.dat`` output (``--output-format dat``; ``common_imatrix_load_legacy``) is
read too, with every length checked against the bytes that remain:

    i32 n_entries, then per entry: i32 len, name, i32 ncall, i32 nval, f32[nval]
      (each value: sum / tokens x ncall; llama-quantize divides by ncall)
    optionally: i32 chunk_count, i32 len, the dataset's name
"""

from __future__ import annotations

import math
import struct
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
MAX_NAME = 256  # GGML_MAX_NAME is 64; a legacy entry's name past this is not a weight's


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
    legacy: bool = False  # read from a .dat file: each entry one row of n_cols x n_mat values (experts unsplit)


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
    with open(path, "rb") as fp:
        if fp.read(4) != b"GGUF":
            return _read_legacy(path, label)
    header = read_gguf_header(path, label=label)
    if header.metadata.get("general.type") != TYPE:
        raise InvalidModelFileError(f"{label} is a GGUF file but not an importance matrix (general.type is "
                                    f"{str(header.metadata.get('general.type'))[:40]!r}); give llama-imatrix's "
                                    "output or edgeslm calibrate's")
    tensors = {t.name: t for t in header.tensors}
    names = sorted({n.removesuffix(SUMS) for n in tensors if n.endswith(SUMS)})
    if len(names) * 2 != len(tensors) or len(names) > MAX_ENTRIES:
        raise InvalidModelFileError(f"{label}: every weight needs exactly a {SUMS} and a {COUNTS} tensor, "
                                    "and nothing else")
    with open(path, "rb") as fp:
        entries = {n: _entry(fp, tensors[n + SUMS], tensors.get(n + COUNTS), label) for n in names}
    datasets = header.metadata.get(KEY_DATASETS)
    return Imatrix(entries, tuple(str(d) for d in getattr(datasets, "items", ()) or ()),
                   _uint(header, KEY_CHUNK_COUNT), _uint(header, KEY_CHUNK_SIZE),
                   {k: str(v) for k, v in header.metadata.items() if k.startswith("edgeslm.")})


class _Legacy:
    """A bounded reader of a legacy file: every length is checked against what remains."""

    def __init__(self, data: bytes, label: str) -> None:
        self.data, self.pos, self.label = data, 0, label

    def fail(self, what: str) -> InvalidModelFileError:
        return InvalidModelFileError(f"{self.label} is neither a GGUF importance matrix nor llama-imatrix's legacy "
                                     f".dat file: {what} at byte {self.pos}; give llama-imatrix's output or "
                                     "edgeslm calibrate's")

    def i32(self, what: str, low: int = 0, high: int = 2**31 - 1) -> int:
        if self.pos + 4 > len(self.data):
            raise self.fail(f"the file ends where {what} should be")
        (value,) = struct.unpack_from("<i", self.data, self.pos)
        if not low <= value <= high:
            raise self.fail(f"{what} is {value}, not {low} to {high}")
        self.pos += 4
        return int(value)

    def take(self, n: int, what: str) -> bytes:
        if n > len(self.data) - self.pos:
            raise self.fail(f"{what} needs {n:,} bytes, {len(self.data) - self.pos:,} remain")
        self.pos += n
        return self.data[self.pos - n : self.pos]


def _read_legacy(path: Path, label: str) -> Imatrix:
    size = Path(path).stat().st_size
    if size > 2**31:
        raise InvalidModelFileError(f"{label} is {size:,} bytes: too large for a legacy importance matrix")
    r = _Legacy(Path(path).read_bytes(), label)
    entries: dict[str, Entry] = {}
    for _ in range(r.i32("the entry count", 1, MAX_ENTRIES)):
        raw = r.take(r.i32("a name's length", 1, MAX_NAME), "a name")
        name = raw.decode("utf-8", "replace")
        ncall = r.i32(f"{name[:64]!r}'s call count", 0, 2**31 - 1)
        nval = r.i32(f"{name[:64]!r}'s value count", 1, (len(r.data) - r.pos) // 4)
        values = np.frombuffer(r.take(4 * nval, f"{name[:64]!r}'s values"), dtype="<f4").astype(np.float32)
        if name in entries or not name.isprintable():
            raise r.fail(f"the entry {name[:64]!r} is repeated or not a tensor name")
        if not np.isfinite(values).all() or (values < 0).any():
            raise InvalidModelFileError(f"{label}: {name[:64]} holds values that are not finite non-negative numbers")
        # llama-quantize divides by ncall (or, for 0, takes the values as they are): counts of ncall do the same
        entries[name] = Entry(values.reshape(1, nval), np.array([max(ncall, 1)], dtype=np.float32))
    chunks: int = 0
    datasets: tuple[str, ...] = ()
    if r.pos < len(r.data):  # the trailing chunk count and dataset name are optional
        chunks = r.i32("the chunk count", 0)
        if r.pos < len(r.data):
            datasets = (
                r.take(r.i32("the dataset name's length", 0, 4096), "the dataset name").decode("utf-8", "replace"),
            )
    if r.pos != len(r.data):
        raise r.fail(f"{len(r.data) - r.pos:,} bytes follow the data")
    return Imatrix(entries, tuple(d for d in datasets if d), chunks, 0, legacy=True)


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
                                    f"{list(counts.shape)} do not agree")
    n_cols, n_mat = s_shape
    s = _floats(fp, sums).reshape(n_mat, n_cols)
    c = _floats(fp, counts)
    if not np.isfinite(s).all() or (s < 0).any():
        raise InvalidModelFileError(f"{label}: {name} holds sums that are not finite non-negative numbers")
    if not np.isfinite(c).all() or (c < 0).any() or (c > MAX_COUNT).any() or (c != np.floor(c)).any():
        raise InvalidModelFileError(f"{label}: {name} holds token counts that are not whole numbers of 0 to "
                                    f"{MAX_COUNT:.0f}")
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
                                        f"{name[:80]!r}; calibrate {model} itself (edgeslm calibrate)")
        n_mat = math.prod(shape[2:]) if len(shape) > 2 else 1
        if imatrix.legacy and e.sums.size == shape[0] * n_mat:  # one row per weight, the experts unsplit
            continue
        if shape[0] != e.sums.shape[1] or n_mat != e.sums.shape[0]:
            raise InvalidModelFileError(f"{label} is not an importance matrix of {model}: {name} takes "
                                        f"{shape[0]} inputs x {n_mat} matrices there, {e.sums.shape[1]} x "
                                        f"{e.sums.shape[0]} here")
    if not imatrix.entries:
        raise InvalidModelFileError(f"{label} holds no importance data")

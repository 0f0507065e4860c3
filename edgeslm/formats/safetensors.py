"""Reading safetensors files lazily and defensively: one tensor at a time, every offset checked.

A file is ``u64 header length`` + a JSON header (``{name: {dtype, shape, data_offsets}}`` and
an optional ``__metadata__``) + the data. Before a tensor is touched, the header must fit the
file, parse as a JSON object, name known dtypes, and give each tensor a byte range inside the
data region whose length is its shape times its element size. Tensors come back as read-only
numpy memory maps (BF16 as ``uint16`` bits), so a model converts at about one tensor's memory.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ..errors import InvalidModelFileError

MAX_HEADER = 100 * 2**20  # safetensors' own limit
DTYPES: Mapping[str, tuple[str, int]] = {  # safetensors dtype -> (numpy dtype, bytes per element)
    "F64": ("<f8", 8),
    "F32": ("<f4", 4),
    "F16": ("<f2", 2),
    "BF16": ("<u2", 2),  # raw bits; see bf16_to_f32
    "I64": ("<i8", 8),
    "I32": ("<i4", 4),
    "I16": ("<i2", 2),
    "I8": ("i1", 1),
    "U8": ("u1", 1),
    "U32": ("<u4", 4),  # MLX packs quantized weights in uint32
    "U16": ("<u2", 2),
    "BOOL": ("?", 1),
}


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str  # safetensors' name: "BF16", "F32", ...
    shape: tuple[int, ...]
    start: int  # absolute file offsets
    end: int


class SafetensorsFile:
    """The tensor table of one file; ``load`` maps one tensor."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tensors, self.metadata = _read_header(path)

    def load(self, name: str) -> npt.NDArray[np.generic]:
        e = self.tensors[name]
        dtype = np.dtype(DTYPES[e.dtype][0])
        if e.end == e.start:
            return np.zeros(e.shape, dtype)
        return np.memmap(self.path, dtype=dtype, mode="r", offset=e.start, shape=e.shape)


def bf16_to_f32(bits: npt.NDArray[np.generic]) -> npt.NDArray[np.float32]:
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def _read_header(path: Path) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    where = f"{path.name}"
    try:
        size = path.stat().st_size
        with open(path, "rb") as fp:
            head = fp.read(8)
            if len(head) < 8:
                raise InvalidModelFileError(f"{where} is {size} bytes: too short to be a safetensors file")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or 8 + n > size:
                raise InvalidModelFileError(
                    f"{where}: its header claims {n:,} bytes but the file has {size - 8:,} after the length; "
                    "the file is truncated or not safetensors"
                )
            raw = fp.read(n)
    except OSError as exc:
        raise InvalidModelFileError(f"cannot read {where}: {exc.strerror}") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidModelFileError(f"{where}: the safetensors header is not JSON") from None
    if not isinstance(header, dict):
        raise InvalidModelFileError(f"{where}: the safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    base, data_size = 8 + n, size - 8 - n
    tensors = {name: _entry(where, name, spec, base, data_size) for name, spec in header.items()}
    return tensors, {str(k): str(v) for k, v in dict(metadata).items()}


def _entry(where: str, name: str, spec: object, base: int, data_size: int) -> TensorEntry:
    if not isinstance(spec, dict):
        raise InvalidModelFileError(f"{where}: tensor {name[:100]!r} has no dtype/shape/offsets")
    dtype, shape, offsets = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise InvalidModelFileError(f"{where}: tensor {name[:100]!r} has an unknown dtype {str(dtype)[:20]!r}")
    if not (isinstance(shape, list) and all(isinstance(d, int) and 0 <= d < 2**40 for d in shape) and len(shape) <= 8):
        raise InvalidModelFileError(f"{where}: tensor {name[:100]!r} has an invalid shape")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise InvalidModelFileError(f"{where}: tensor {name[:100]!r} has invalid data offsets")
    start, end = offsets
    expected = math.prod(shape) * DTYPES[dtype][1]
    if not 0 <= start <= end <= data_size or end - start != expected:
        raise InvalidModelFileError(
            f"{where}: tensor {name[:100]!r} claims bytes {start:,}..{end:,} of a {data_size:,}-byte data region "
            f"(its shape needs {expected:,}); the file is truncated or corrupt"
        )
    return TensorEntry(name, dtype, tuple(shape), base + start, base + end)


def write_safetensors(path: Path, tensors: Mapping[str, npt.NDArray[np.float32]], metadata: Mapping[str, str]) -> None:
    """Write float32 ``tensors`` as one safetensors file (header, then the data in name order)."""
    header: dict[str, object] = {"__metadata__": dict(metadata)}
    offset = 0
    for name in sorted(tensors):
        size = tensors[name].size * 4
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts aligned, as the reference writer does
    with open(path, "wb") as fp:
        fp.write(struct.pack("<Q", len(raw)) + raw)
        for name in sorted(tensors):
            fp.write(np.ascontiguousarray(tensors[name], dtype="<f4").tobytes())

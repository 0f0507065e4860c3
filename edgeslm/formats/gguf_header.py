"""A bounded walk over a GGUF header that refuses hostile files before anyone else reads them.

gguf-py and llama.cpp trust the lengths a file declares: a 49-byte file that claims a
4-million-element array costs gguf-py 0.19.0 27 s and 3.9 GiB. This walk checks every count
and length against the bytes that remain *before* acting on it, keeps only small values, and
reads through a fixed window, so any file is judged in well under a second and a few MiB.

The checks follow ``gguf_init_from_file_impl`` in llama.cpp's ``ggml/src/gguf.cpp`` (and are
stricter where it only asserts). Layout, all little-endian::

    magic "GGUF" | version u32 | n_tensors u64 | n_kv u64
    n_kv x      (key: string, type: u32, value)
    n_tensors x (name: string, n_dims: u32, ne: u64[n_dims], type: u32, offset: u64)
    padding to general.alignment | tensor data (offsets relative to here)

where a string is ``len: u64`` then ``len`` bytes of UTF-8, and an array value is
``elem_type: u32, count: u64`` then ``count`` values.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any, BinaryIO

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from ..errors import InputFileError, InvalidModelFileError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_TENSOR_NAME = 63  # GGML_MAX_NAME (64) including the terminating NUL

# Caps that no real model comes near (Gemma 3's 262,144-token vocabulary is ~6 MiB of
# metadata) but that keep a hostile file's walk short and small.
MAX_KV_COUNT = 65_536
MAX_TENSOR_COUNT = 16_384  # the largest published models have ~1,200
MAX_KEY_BYTES = 4_096
MAX_METADATA_BYTES = 64 * 2**20
MAX_ARRAY_STRINGS = 2 * 2**20  # string elements over all arrays; each one is walked
KEEP_STRING_BYTES = 1 * 2**20  # longer strings are checked but not kept
KEEP_ARRAY_ITEMS = 1_024  # longer arrays keep only their type and length

_WINDOW = 4 * 2**20
_INT64_MAX = 2**63 - 1

_SCALAR_FORMATS: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}
_SCALARS = {vt: struct.Struct(fmt) for vt, fmt in _SCALAR_FORMATS.items()}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

Scalar = int | float | bool | str


@dataclass(frozen=True)
class ArrayValue:
    """An array-valued key: its element type and length, and its items when short enough."""

    elem_type: GGUFValueType
    count: int
    items: tuple[Scalar, ...] | None  # None when longer than KEEP_ARRAY_ITEMS


MetaValue = Scalar | ArrayValue | None  # None: a string too long to keep


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml order: ne[0] (the row length) first
    ggml_type: GGMLQuantizationType
    offset: int  # absolute byte offset of the data in the file
    n_elements: int
    n_bytes: int


@dataclass(frozen=True)
class GGUFHeader:
    path: Path
    file_size: int
    version: int
    alignment: int
    data_offset: int  # absolute offset where tensor data starts
    metadata: Mapping[str, MetaValue] = field(repr=False)
    value_types: Mapping[str, GGUFValueType] = field(repr=False)
    tensors: tuple[TensorInfo, ...] = field(repr=False)


class _Reader:
    """Sequential reads through a fixed window; every read is bounded by the file size."""

    def __init__(self, fp: BinaryIO, label: str, size: int) -> None:
        self.fp, self.label, self.size = fp, label, size
        self.pos = 0
        self._buf = b""
        self._buf_start = 0

    def fail(self, problem: str, offset: int | None = None) -> InvalidModelFileError:
        at = self.pos if offset is None else offset
        return InvalidModelFileError(f"{self.label} is not a valid GGUF file: {problem} (at byte {at:,})")

    @property
    def remaining(self) -> int:
        return self.size - self.pos

    def need(self, n: int, what: str) -> None:
        if n > self.remaining:
            raise self.fail(
                f"{what} needs {n:,} bytes but only {self.remaining:,} remain in the "
                f"{self.size:,}-byte file (truncated or corrupt)"
            )

    def _window(self, n: int) -> tuple[bytes, int]:
        """The buffer and the index of ``pos`` in it, holding at least ``n`` bytes from ``pos``."""
        start = self.pos - self._buf_start
        if start < 0 or start + n > len(self._buf):
            self.fp.seek(self.pos)
            self._buf = self.fp.read(max(n, _WINDOW))
            self._buf_start, start = self.pos, 0
            if len(self._buf) < n:
                raise self.fail("the file changed size while it was being read")
        return self._buf, start

    def unpack(self, st: struct.Struct, what: str) -> Any:
        self.need(st.size, what)
        buf, i = self._window(st.size)
        self.pos += st.size
        return st.unpack_from(buf, i)[0]

    def u32(self, what: str) -> int:
        return int(self.unpack(_U32, what))

    def u64(self, what: str) -> int:
        return int(self.unpack(_U64, what))

    def raw(self, n: int, what: str) -> bytes:
        self.need(n, what)
        if n > _WINDOW:
            self.fp.seek(self.pos)
            data = self.fp.read(n)
        else:
            buf, i = self._window(n)
            data = buf[i : i + n]
        self.pos += n
        return data

    def skip(self, n: int, what: str) -> None:
        self.need(n, what)
        self.pos += n

    def string_length(self, what: str) -> int:
        start = self.pos
        n = self.u64(f"length of {what}")
        if n > self.remaining:
            raise self.fail(f"{what} declares {n:,} bytes but only {self.remaining:,} remain", start)
        return n

    def skip_strings(self, count: int, what: str) -> None:
        """Walk ``count`` strings without keeping them: the hot loop for vocabularies.

        Locals only inside the loop; the window is refilled when a length crosses its end.
        """
        unpack = _U64.unpack_from
        pos, size = self.pos, self.size
        buf, base = self._buf, self._buf_start
        end = base + len(buf) if pos >= base else -1
        for index in range(count):
            if pos + 8 > end:
                if pos + 8 > size:
                    raise self.fail(f"{what}[{index:,}] is cut off by the end of the file", pos)
                self.pos = pos
                buf, _ = self._window(8)
                base, end = self._buf_start, self._buf_start + len(buf)
            n = unpack(buf, pos - base)[0]
            if n > size - pos - 8:
                raise self.fail(f"{what}[{index:,}] declares {n:,} bytes but only {size - pos - 8:,} remain", pos)
            pos += 8 + n
        self.pos = pos


def read_gguf_header(path: str | Path, *, label: str | None = None) -> GGUFHeader:
    """Validate the GGUF file at ``path`` and return its header; raise on the first problem.

    ``label`` names the file in error messages (default: its file name).
    """
    path = Path(path)
    fp = _open_for_reading(path)
    with fp:
        size = os.fstat(fp.fileno()).st_size
        reader = _Reader(fp, label or path.name, size)
        version, n_tensors, n_kv = _read_preamble(reader)
        metadata, value_types = _read_metadata(reader, n_kv)
        alignment = _alignment(reader, metadata, value_types)
        tensors_raw = _read_tensor_infos(reader, n_tensors)
        data_offset = _align(reader.pos, alignment)
        tensors = _place_tensors(reader, tensors_raw, data_offset, alignment)
    return GGUFHeader(path, size, version, alignment, data_offset, metadata, value_types, tensors)


def _open_for_reading(path: Path) -> BinaryIO:
    if path.is_dir():
        raise InputFileError(f"{path} is a directory; give the path of a .gguf file")
    if path.exists() and not path.is_file():
        raise InputFileError(f"{path} is not a regular file (a device, socket or pipe); give a .gguf file")
    try:
        return open(path, "rb")  # noqa: SIM115 - closed by the caller's with-block
    except FileNotFoundError:
        raise InputFileError(f"{path} does not exist; check the path") from None
    except PermissionError:
        raise InputFileError(f"{path} cannot be read: permission denied (check its mode and owner)") from None
    except OSError as exc:
        raise InputFileError(f"{path} cannot be opened: {exc.strerror}") from None


def _read_preamble(r: _Reader) -> tuple[int, int, int]:
    if r.size < 4:
        raise r.fail(f"the file has {r.size} bytes, too short for the 4-byte magic", 0)
    magic = r.raw(4, "magic")
    if magic != GGUF_MAGIC:
        raise r.fail(f"magic is {magic!r}, expected {GGUF_MAGIC!r} (not a GGUF file)", 0)
    version = r.u32("version")
    if int.from_bytes(version.to_bytes(4, "little"), "big") in SUPPORTED_VERSIONS:
        raise r.fail("the file is big-endian GGUF; convert it on a big-endian machine or re-export it", 4)
    if version not in SUPPORTED_VERSIONS:
        raise r.fail(f"GGUF version {version} is not supported (supported: 2 and 3)", 4)
    n_tensors = r.u64("tensor count")
    n_kv = r.u64("key/value count")
    # Each tensor info takes at least 8 (name) + 4 (n_dims) + 8 (ne[0]) + 4 (type) + 8 (offset) bytes;
    # each key/value at least 8 (key) + 4 (type) + 1 (value).
    if n_kv > MAX_KV_COUNT or n_kv * 13 > r.remaining:
        raise r.fail(f"key/value count {n_kv:,} is impossible for the {r.remaining:,} bytes that remain", 16)
    if n_tensors > MAX_TENSOR_COUNT or n_tensors * 32 > r.remaining:
        raise r.fail(f"tensor count {n_tensors:,} is impossible for the {r.remaining:,} bytes that remain", 8)
    return version, n_tensors, n_kv


def _read_metadata(r: _Reader, n_kv: int) -> tuple[dict[str, MetaValue], dict[str, GGUFValueType]]:
    metadata: dict[str, MetaValue] = {}
    types: dict[str, GGUFValueType] = {}
    budget = _Budget(r)
    for _ in range(n_kv):
        start = r.pos
        key = _read_key(r)
        if key in metadata or key in types:
            raise r.fail(f"duplicate key '{key}'", start)
        vtype = _value_type(r, r.u32(f"type of key '{key}'"), key)
        types[key] = vtype
        metadata[key] = _read_value(r, vtype, key, budget)
        budget.check(start)
    return metadata, types


class _Budget:
    """Running totals for the metadata caps."""

    def __init__(self, reader: _Reader) -> None:
        self.reader = reader
        self.start = reader.pos
        self.strings = 0

    def check(self, at: int) -> None:
        used = self.reader.pos - self.start
        if used > MAX_METADATA_BYTES:
            raise self.reader.fail(f"metadata exceeds the {MAX_METADATA_BYTES // 2**20} MiB cap", at)

    def add_strings(self, count: int, key: str) -> None:
        self.strings += count
        if self.strings > MAX_ARRAY_STRINGS:
            raise self.reader.fail(f"string arrays up to key '{key}' hold over {MAX_ARRAY_STRINGS:,} strings")


def _read_key(r: _Reader) -> str:
    start = r.pos
    n = r.string_length("key")
    if n == 0 or n > MAX_KEY_BYTES:
        raise r.fail(f"key length {n:,} is outside 1..{MAX_KEY_BYTES:,}", start)
    try:
        return r.raw(n, "key").decode("utf-8")
    except UnicodeDecodeError:
        raise r.fail("key is not valid UTF-8", start) from None


def _value_type(r: _Reader, raw: int, key: str) -> GGUFValueType:
    try:
        return GGUFValueType(raw)
    except ValueError:
        raise r.fail(f"key '{key}' has unknown value type {raw}", r.pos - 4) from None


def _read_value(r: _Reader, vtype: GGUFValueType, key: str, budget: _Budget) -> MetaValue:
    if vtype == GGUFValueType.ARRAY:
        return _read_array(r, key, budget)
    if vtype == GGUFValueType.STRING:
        return _read_string(r, f"value of '{key}'")
    return _SCALARS[vtype].unpack(r.raw(_SCALARS[vtype].size, f"value of '{key}'"))[0]  # type: ignore[no-any-return]


def _read_string(r: _Reader, what: str) -> str | None:
    n = r.string_length(what)
    if n > KEEP_STRING_BYTES:
        r.skip(n, what)
        return None
    return r.raw(n, what).decode("utf-8", errors="replace")


def _read_array(r: _Reader, key: str, budget: _Budget) -> ArrayValue:
    start = r.pos
    elem_type = _value_type(r, r.u32(f"element type of '{key}'"), key)
    if elem_type == GGUFValueType.ARRAY:
        raise r.fail(f"key '{key}' is an array of arrays, which llama.cpp does not read", start)
    count = r.u64(f"length of '{key}'")
    min_size = 8 if elem_type == GGUFValueType.STRING else _SCALARS[elem_type].size
    if count * min_size > r.remaining:
        raise r.fail(
            f"array '{key}' declares {count:,} elements (at least {count * min_size:,} bytes) "
            f"but only {r.remaining:,} bytes remain",
            start,
        )
    keep = count <= KEEP_ARRAY_ITEMS
    if elem_type == GGUFValueType.STRING:
        budget.add_strings(count, key)
        if not keep:
            r.skip_strings(count, f"'{key}'")
            return ArrayValue(elem_type, count, None)
        items = tuple(_read_string(r, f"'{key}' element") or "" for _ in range(count))
        return ArrayValue(elem_type, count, items)
    st = _SCALARS[elem_type]
    if not keep:
        r.skip(count * st.size, f"'{key}'")
        return ArrayValue(elem_type, count, None)
    data = r.raw(count * st.size, f"'{key}'")
    return ArrayValue(elem_type, count, tuple(v[0] for v in st.iter_unpack(data)))


def _alignment(r: _Reader, metadata: Mapping[str, MetaValue], types: Mapping[str, GGUFValueType]) -> int:
    if "general.alignment" not in metadata:
        return DEFAULT_ALIGNMENT
    value = metadata["general.alignment"]
    if types["general.alignment"] != GGUFValueType.UINT32 or not isinstance(value, int):
        raise r.fail("key 'general.alignment' must be a uint32")
    if value <= 0 or value & (value - 1):
        raise r.fail(f"alignment {value} is not a power of two")
    return value


@dataclass(frozen=True)
class _RawTensor:
    name: str
    shape: tuple[int, ...]
    ggml_type: GGMLQuantizationType
    rel_offset: int
    header_pos: int


def _read_tensor_infos(r: _Reader, n_tensors: int) -> list[_RawTensor]:
    seen: set[str] = set()
    tensors = []
    for index in range(n_tensors):
        start = r.pos
        name = _read_tensor_name(r, index)
        if name in seen:
            raise r.fail(f"duplicate tensor name '{name}'", start)
        seen.add(name)
        shape = _read_shape(r, name)
        ggml_type = _tensor_type(r, r.u32(f"type of tensor '{name}'"), name)
        block_size = GGML_QUANT_SIZES[ggml_type][0]
        if shape[0] % block_size:
            raise r.fail(
                f"tensor '{name}' has rows of {shape[0]:,} elements, not a multiple of "
                f"{ggml_type.name}'s block size {block_size}",
                start,
            )
        rel_offset = r.u64(f"offset of tensor '{name}'")
        tensors.append(_RawTensor(name, shape, ggml_type, rel_offset, start))
    return tensors


def _read_tensor_name(r: _Reader, index: int) -> str:
    start = r.pos
    n = r.string_length(f"name of tensor #{index}")
    if n > MAX_TENSOR_NAME:
        raise r.fail(f"tensor #{index} has a {n:,}-byte name; llama.cpp allows at most {MAX_TENSOR_NAME}", start)
    try:
        return r.raw(n, f"name of tensor #{index}").decode("utf-8")
    except UnicodeDecodeError:
        raise r.fail(f"name of tensor #{index} is not valid UTF-8", start) from None


def _read_shape(r: _Reader, name: str) -> tuple[int, ...]:
    start = r.pos
    n_dims = r.u32(f"dimension count of tensor '{name}'")
    if not 1 <= n_dims <= MAX_DIMS:
        raise r.fail(f"tensor '{name}' has {n_dims} dimensions; 1 to {MAX_DIMS} are allowed", start)
    shape = tuple(r.u64(f"dimension of tensor '{name}'") for _ in range(n_dims))
    total = 1
    for dim in shape:
        if dim > _INT64_MAX:
            raise r.fail(f"tensor '{name}' has a negative dimension {dim - 2**64}", start)
        if dim == 0:
            raise r.fail(f"tensor '{name}' has a zero dimension {list(shape)}", start)
        total *= dim
        if total > _INT64_MAX:
            raise r.fail(f"tensor '{name}' dimensions {list(shape)} overflow a 64-bit element count", start)
    return shape


def _tensor_type(r: _Reader, raw: int, name: str) -> GGMLQuantizationType:
    try:
        ggml_type = GGMLQuantizationType(raw)
    except ValueError:
        raise r.fail(f"tensor '{name}' has unknown ggml type {raw}", r.pos - 4) from None
    if ggml_type not in GGML_QUANT_SIZES:
        raise r.fail(f"tensor '{name}' has ggml type {ggml_type.name} with no known block size", r.pos - 4)
    return ggml_type


def _align(offset: int, alignment: int) -> int:
    return offset + (-offset % alignment)


def _place_tensors(r: _Reader, raw: list[_RawTensor], data_offset: int, alignment: int) -> tuple[TensorInfo, ...]:
    tensors = []
    for t in raw:
        if t.rel_offset % alignment:
            raise r.fail(
                f"tensor '{t.name}' data offset {t.rel_offset:,} is not a multiple of the alignment {alignment}",
                t.header_pos,
            )
        n_elements = 1
        for dim in t.shape:
            n_elements *= dim
        block_size, type_size = GGML_QUANT_SIZES[t.ggml_type]
        n_bytes = n_elements // block_size * type_size
        start = data_offset + t.rel_offset
        if start + n_bytes > r.size:
            raise r.fail(
                f"tensor '{t.name}' ends at byte {start + n_bytes:,} but the file has {r.size:,} bytes "
                "(truncated download?)",
                t.header_pos,
            )
        tensors.append(TensorInfo(t.name, t.shape, t.ggml_type, start, n_elements, n_bytes))
    _check_overlaps(r, tensors)
    return tuple(tensors)


def _check_overlaps(r: _Reader, tensors: list[TensorInfo]) -> None:
    ordered = sorted(tensors, key=lambda t: t.offset)
    for before, after in pairwise(ordered):
        if before.offset + before.n_bytes > after.offset:
            raise r.fail(
                f"tensor '{before.name}' (bytes {before.offset:,}-{before.offset + before.n_bytes:,}) "
                f"overlaps tensor '{after.name}' (starting at byte {after.offset:,})",
                after.offset,
            )

"""ggml's own quantizers and dequantizers, called on numpy rows through ctypes.

``ggml_quantize_chunk`` is the function ``llama_model_quantize`` calls per tensor, so a row
quantized here has the bytes that ``llama-quantize`` would write; ``to_float`` from
``ggml_get_type_traits`` turns them back into floats. Used to measure each type's weight error
on a model's own tensors without writing a file.
"""

from __future__ import annotations

import ctypes
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from ...errors import EngineError

F32 = npt.NDArray[np.float32]


class _TypeTraits(ctypes.Structure):
    # struct ggml_type_traits in ggml/include/ggml.h
    _fields_ = [
        ("type_name", ctypes.c_char_p),
        ("blck_size", ctypes.c_int64),
        ("blck_size_interleave", ctypes.c_int64),
        ("type_size", ctypes.c_size_t),
        ("is_quantized", ctypes.c_bool),
        ("to_float", ctypes.c_void_p),
        ("from_float_ref", ctypes.c_void_p),
    ]


_TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


@cache
def _lib() -> Any:
    import llama_cpp

    path = Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        raise EngineError(f"cannot load ggml from {path}: {exc}; reinstall llama-cpp-python") from None
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p
    ]
    lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
    lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
    lib.ggml_get_type_traits.restype = ctypes.POINTER(_TypeTraits)
    lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
    return lib


def requires_imatrix(ggml_type: GGMLQuantizationType) -> bool:
    return bool(_lib().ggml_quantize_requires_imatrix(int(ggml_type)))


def quantize_rows(rows: F32, ggml_type: GGMLQuantizationType, importance: F32 | None = None) -> npt.NDArray[np.uint8]:
    """rows (n_rows x n_per_row) -> ggml's bytes for ``ggml_type`` (weighted by ``importance``, one
    value per column, as llama_model_quantize passes an imatrix)."""
    block, size = GGML_QUANT_SIZES[ggml_type]
    n_rows, n_per_row = rows.shape
    if n_per_row % block:
        raise ValueError(f"rows of {n_per_row} do not split into {ggml_type.name} blocks of {block}")
    src = np.ascontiguousarray(rows, dtype=np.float32)
    out = np.empty(n_rows * (n_per_row // block) * size, dtype=np.uint8)
    weights = None if importance is None else np.ascontiguousarray(importance, dtype=np.float32)
    imatrix = None if weights is None else weights.ctypes.data
    lib = _lib()
    written = lib.ggml_quantize_chunk(int(ggml_type), src.ctypes.data, out.ctypes.data, 0, n_rows, n_per_row, imatrix)
    if written != out.size:
        raise EngineError(f"ggml wrote {written} bytes for {ggml_type.name}, expected {out.size}")
    return out


def dequantize(data: npt.NDArray[np.uint8], ggml_type: GGMLQuantizationType, shape: tuple[int, int]) -> F32:
    traits = _lib().ggml_get_type_traits(int(ggml_type)).contents
    if not traits.to_float:
        raise EngineError(f"ggml has no dequantizer for {ggml_type.name}")
    out = np.empty(shape, dtype=np.float32)
    _TO_FLOAT(traits.to_float)(np.ascontiguousarray(data).ctypes.data, out.ctypes.data, out.size)
    return out


def round_trip(rows: F32, ggml_type: GGMLQuantizationType, importance: F32 | None = None) -> F32:
    """What ``rows`` become once stored as ``ggml_type`` and read back."""
    if ggml_type == GGMLQuantizationType.F32:
        return np.asarray(rows, dtype=np.float32)
    if ggml_type == GGMLQuantizationType.F16:
        return np.asarray(rows, dtype=np.float32).astype(np.float16).astype(np.float32)
    shape = (rows.shape[0], rows.shape[1])
    return dequantize(quantize_rows(rows, ggml_type, importance), ggml_type, shape)

"""Importance matrices collected as ``llama-imatrix`` collects them (tools/imatrix/imatrix.cpp).

llama.cpp calls an eval callback for every node of the graph it computes: first to ask whether
we want the node (``ask``), then, for the nodes we said yes to, with the computed node. A matrix
multiplication's node points at its operands (``src[0]`` the weight, ``src[1]`` the activations),
so its input columns' squares can be summed. The node is a ``struct ggml_tensor``: ``GgmlTensor``
is its layout in the pinned llama.cpp (``ggml/include/ggml.h``; the tests check it against the
header llama-cpp-python installs). Operation numbers are looked up by name through
``ggml_op_name``, never assumed.

The rules are llama-imatrix's: MUL_MAT nodes whose activations are F32 with at least 16 rows, on
``blk.*`` weights (``output.weight`` only with ``process_output``); every MUL_MAT_ID (mixtures of
experts), summed per expert by the routing ids; one token count per dense weight; sums in float32.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import llama_cpp as lc
import numpy as np
import numpy.typing as npt

from ...errors import EngineError
from .backend import abort_on_interrupt, clear_interrupt, init_backend, interrupt_pending, last_errors

F32 = npt.NDArray[np.float32]
MAX_DIMS, MAX_OP_PARAMS, MAX_SRC, MAX_NAME = 4, 64, 10, 64  # GGML_MAX_* in ggml.h
TYPE_F32, TYPE_I32 = 0, 26  # enum ggml_type
MIN_ROWS = 16  # llama-imatrix ignores smaller batches


class GgmlTensor(ctypes.Structure):
    pass


GgmlTensor._fields_ = [
    ("type", ctypes.c_int),
    ("buffer", ctypes.c_void_p),
    ("ne", ctypes.c_int64 * MAX_DIMS),
    ("nb", ctypes.c_size_t * MAX_DIMS),
    ("op", ctypes.c_int),
    ("op_params", ctypes.c_int32 * (MAX_OP_PARAMS // 4)),
    ("flags", ctypes.c_int32),
    ("src", ctypes.POINTER(GgmlTensor) * MAX_SRC),
    ("view_src", ctypes.POINTER(GgmlTensor)),
    ("view_offs", ctypes.c_size_t),
    ("data", ctypes.c_void_p),
    ("name", ctypes.c_char * MAX_NAME),
    ("extra", ctypes.c_void_p),
    ("padding", ctypes.c_char * 8),
]
EVAL_CALLBACK = lc.ggml_backend_sched_eval_callback  # (struct ggml_tensor *, bool ask, void *) -> bool


@cache
def _ggml() -> Any:
    lib = ctypes.CDLL(str(Path(lc.__file__).parent / "lib" / "libggml-base.so"))
    lib.ggml_op_name.restype, lib.ggml_op_name.argtypes = ctypes.c_char_p, [ctypes.c_int]
    lib.ggml_backend_buffer_is_host.restype, lib.ggml_backend_buffer_is_host.argtypes = ctypes.c_bool, [ctypes.c_void_p]
    return lib


@cache
def op_number(name: str) -> int:
    """``enum ggml_op``'s value for ``name`` ("MUL_MAT"), as this build of ggml numbers it."""
    lib = _ggml()
    for i in range(1, 100):  # both matmuls come early in the enum: the search never reads past its end
        if lib.ggml_op_name(i) == name.encode():
            return i
    raise EngineError(f"this ggml has no operation {name}; reinstall llama-cpp-python")


def weight_name(raw: bytes) -> str:
    """llama-imatrix's ``filter_tensor_name``: "CUDA0#blk.0.attn_k.weight#0" -> "blk.0.attn_k.weight"."""
    name = raw.decode("utf-8", errors="replace")
    if "#" in name:
        name = name.split("#", 2)[1]
    return name


def _array(t: GgmlTensor, dtype: Any, itemsize: int) -> npt.NDArray[Any]:
    """The node's data (host memory) as an array of shape (ne3, ne2, ne1, ne0), with its strides."""
    if not _ggml().ggml_backend_buffer_is_host(t.buffer):
        raise EngineError("activations are not in host memory; calibration runs on the CPU")
    if t.nb[0] != itemsize:
        raise EngineError("activations are not contiguous in their rows")
    ne, nb = list(t.ne), list(t.nb)
    extent = sum((n - 1) * s for n, s in zip(ne, nb, strict=True)) + itemsize
    raw = (ctypes.c_char * extent).from_address(t.data)
    out: npt.NDArray[Any] = np.ndarray(shape=ne[::-1], dtype=dtype, buffer=raw, strides=nb[::-1])  # bounds checked
    return out


@dataclass
class Collector:
    """llama-imatrix's ``IMatrixCollector::collect_imatrix``, as an eval callback."""

    process_output: bool = False
    sums: dict[str, F32] = field(default_factory=dict)  # (n_mat, n_cols), float32 as llama-imatrix sums
    counts: dict[str, npt.NDArray[np.int64]] = field(default_factory=dict)
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self.mul_mat, self.mul_mat_id = op_number("MUL_MAT"), op_number("MUL_MAT_ID")
        self.callback = EVAL_CALLBACK(self._called)

    def _called(self, node: Any, ask: bool, _user: Any) -> bool:
        try:
            t = ctypes.cast(node, ctypes.POINTER(GgmlTensor)).contents
            if ask:
                return self._wanted(t)
            if interrupt_pending():
                raise KeyboardInterrupt  # Ctrl-C: llama.cpp stops the graph, the caller raises it
            if t.op == self.mul_mat_id:
                self._experts(t)
            else:
                self._dense(t)
            return True
        except BaseException as exc:  # noqa: BLE001 - raised again by the caller, after llama.cpp returns
            self.error = exc
            return False  # stops the graph

    def _wanted(self, t: GgmlTensor) -> bool:
        if t.op == self.mul_mat_id:
            return True
        if t.op != self.mul_mat:
            return False
        src1 = t.src[1].contents
        if src1.ne[1] < MIN_ROWS or src1.type != TYPE_F32:
            return False
        name = weight_name(t.src[0].contents.name)
        return name.startswith("blk.") or (self.process_output and name == "output.weight")

    def _entry(self, name: str, n_mat: int, n_cols: int, n_counts: int) -> tuple[F32, npt.NDArray[np.int64]]:
        if name not in self.sums:
            self.sums[name] = np.zeros((n_mat, n_cols), dtype=np.float32)
            self.counts[name] = np.zeros(n_counts, dtype=np.int64)
        sums = self.sums[name]
        if sums.shape != (n_mat, n_cols):
            raise EngineError(f"inconsistent size for {name}: {sums.shape} then {(n_mat, n_cols)}")
        return sums, self.counts[name]

    def _dense(self, t: GgmlTensor) -> None:
        src0, src1 = t.src[0].contents, t.src[1].contents
        name = weight_name(src0.name)
        n_mat = src0.ne[2] * src0.ne[3]
        sums, counts = self._entry(name, n_mat, src1.ne[0], 1)
        x = _array(src1, np.float32, 4)  # (ne3, ne2, ne1, ne0)
        for i3 in range(src1.ne[3]):
            for i2 in range(src1.ne[2]):
                mat = (i3 % src0.ne[3]) * src0.ne[2] + (i2 % src0.ne[2])
                rows = x[i3, i2]
                sums[mat] += np.einsum("ij,ij->j", rows, rows, dtype=np.float32)
        if not np.isfinite(sums).all():
            raise EngineError(f"non-finite activations in {name}")
        counts += (src1.ne[1] * src1.ne[2] * src1.ne[3]) // n_mat

    def _experts(self, t: GgmlTensor) -> None:
        src0, src1, ids_t = t.src[0].contents, t.src[1].contents, t.src[2].contents
        name = weight_name(src0.name)
        n_as, n_ids, n_tokens, n_cols = src0.ne[2], ids_t.ne[0], src1.ne[2], src1.ne[0]
        if ids_t.ne[1] != n_tokens or src1.ne[3] != 1:
            raise EngineError(f"unexpected expert routing shapes for {name}")
        sums, counts = self._entry(name, n_as, n_cols, n_as)
        x = _array(src1, np.float32, 4)[0]  # (n_tokens, ne1, n_cols)
        ids = np.array(_array(ids_t, np.int32, 4)[0, 0], dtype=np.int64)  # (n_tokens, n_ids)
        if ((ids < 0) | (ids >= n_as)).any():
            raise EngineError(f"expert ids out of range in {name}")
        for idx in range(n_ids):
            rows = x[:, idx % src1.ne[1], :]
            squares = (rows * rows).astype(np.float32)
            np.add.at(sums, ids[:, idx], squares)
            np.add.at(counts, ids[:, idx], 1)
        if not np.isfinite(sums).all():
            raise EngineError(f"non-finite activations in {name}")


abort_on_interrupt(Collector._called.__code__)


def collect(
    model: Any, chunks: Sequence[Sequence[int]], *, threads: int, process_output: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Collector:
    """Decode each chunk (a fresh context state each, every output on, as llama-imatrix does)
    with the collector watching; ``model`` is a loaded llama.cpp model handle."""
    init_backend()
    collector = Collector(process_output)
    n_ctx = len(chunks[0])
    p = lc.llama_context_default_params()
    p.n_ctx = p.n_batch = p.n_ubatch = n_ctx
    p.n_threads = p.n_threads_batch = threads
    p.no_perf = True
    p.cb_eval = collector.callback
    p.cb_eval_user_data = None
    ctx = lc.llama_init_from_model(model, p)
    if not ctx:
        raise EngineError(f"llama.cpp could not create a context of {n_ctx} tokens: {last_errors()}")
    batch = lc.llama_batch_init(n_ctx, 0, 1)
    try:
        for chunk in chunks:
            lc.llama_memory_clear(lc.llama_get_memory(ctx), True)
            for k, token in enumerate(chunk):
                batch.token[k], batch.pos[k], batch.n_seq_id[k], batch.logits[k] = token, k, 1, True
                batch.seq_id[k][0] = 0
            batch.n_tokens = len(chunk)
            rc = lc.llama_decode(ctx, batch)
            if collector.error is not None:
                clear_interrupt()
                raise collector.error
            if rc != 0:
                raise EngineError(f"llama.cpp failed to decode a calibration chunk ({rc}): {last_errors()}")
            if progress:
                progress(1)
    finally:
        lc.llama_batch_free(batch)
        lc.llama_free(ctx)
    return collector

"""The process-wide llama.cpp backend and what works on a context below the engine: the backend's
one-time start, its log captured (the reason behind a NULL it returns), Ctrl-C while native code
runs, and reading a context's logits (argmax, greedy chains). The engine, its batch decoder,
speculative decoding and calibration all build on these; none of them reaches into another.
"""

from __future__ import annotations

import _thread
import ctypes
import logging
import re
import signal
import threading
from collections import deque
from collections.abc import Sequence
from types import CodeType, FrameType
from typing import TYPE_CHECKING, Any

from ...formats.kv_cache import KVCache

if TYPE_CHECKING:
    import llama_cpp as lc
else:
    from .bindings import lc

log = logging.getLogger(__name__)

_RECENT_LOG: deque[tuple[int, str]] = deque(maxlen=20)
# ggml_log_level: 1 debug, 2 info, 3 warn, 4 error, 5 continue. llama.cpp's warnings are
# mostly advice (context shorter than trained): shown with -v; its errors always.
_WARN, _ERROR, _CONT = 3, 4, 5
_LEVELS = {_WARN: logging.INFO, _ERROR: logging.WARNING}
_state: dict[str, Any] = {"ready": False, "last_level": 1, "tensor_progress": None}
# llama_model_quantize logs "[  12/ 272]  blk.0.attn_q.weight - ..." per tensor.
_TENSOR_LINE = re.compile(r"\[\s*(\d+)/\s*(\d+)\]\s+(\S+)")


def _log(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
    # llama.cpp logs a lot at load; keep it out of the terminal, but remember the last lines
    # so that a failure can say why. Level 5 continues the previous line.
    level = _state["last_level"] if level == _CONT else level
    _state["last_level"] = level
    message = text.decode("utf-8", errors="replace").rstrip()
    if message:
        _RECENT_LOG.append((level, message))
        log.log(_LEVELS.get(level, logging.DEBUG), "llama.cpp: %s", message)
        progress = _state["tensor_progress"]
        if progress is not None and (m := _TENSOR_LINE.match(message)):
            progress(int(m.group(1)), int(m.group(2)), m.group(3))


_log_callback = lc.llama_log_callback(_log)


def init_backend() -> None:
    # Every time: llama-cpp-python's high-level package, if something imports it later (a test
    # comparing with its Llama), installs its own log callback, and errors would go unexplained.
    lc.llama_log_set(_log_callback, ctypes.c_void_p(0))
    if not _state["ready"]:
        main = threading.current_thread() is threading.main_thread()
        if main and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _on_sigint)
        lc.llama_backend_init()
        _state["ready"] = True


_ABORTABLE: set[CodeType] = set()  # callbacks that stop llama.cpp's work when Ctrl-C is pending


def abort_on_interrupt(code: CodeType) -> None:
    """Ctrl-C landing in this callback is left pending (``interrupt_pending``) for it to act on."""
    _ABORTABLE.add(code)


def interrupt_pending() -> bool:
    return bool(_state.get("interrupt"))


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C. It may arrive while llama.cpp is calling ``_log`` back, where ctypes would print
    and drop a KeyboardInterrupt; then it is asked for again shortly, until it lands outside. In an
    abortable callback it is left pending: the callback stops the graph and its caller raises."""
    f = frame
    while f is not None:
        if f.f_code in _ABORTABLE:
            _state["interrupt"] = True
            return
        if f.f_code is _log.__code__:
            threading.Timer(0.005, _thread.interrupt_main).start()
            return
        f = f.f_back
    _state["interrupt"] = False
    raise KeyboardInterrupt


def last_errors() -> str:
    """The last warnings and errors llama.cpp logged: the reason behind a NULL it returned."""
    problems = [message for level, message in _RECENT_LOG if level >= _WARN]
    return "; ".join(problems[-3:]) or (_RECENT_LOG[-1][1] if _RECENT_LOG else "no details")


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """The length of the common prefix of ``a`` and ``b`` (a cache's tokens and a new sequence)."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def argmax_token(ctx: lc.llama_context_p, index: int, n_vocab: int) -> int:
    """The most likely next token at batch row ``index``, read off llama.cpp's logits (no copy)."""
    import numpy as np

    return int(np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, index), shape=(n_vocab,)).argmax())


def attach_greedy(ctx: lc.llama_context_p, seq: int) -> Any:
    """A new greedy chain attached to ``seq`` for backend sampling (the argmax taken in llama.cpp's
    graph, read with ``llama_get_sampled_token_ith``), or None if refused. A chain is attached
    once: llama.cpp initialises it for the backend on attach."""
    chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
    lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
    if lc.llama_set_sampler(ctx, seq, chain):
        return chain
    lc.llama_sampler_free(chain)
    return None


def detach_greedy(ctx: lc.llama_context_p | None, seq: int, chain: Any) -> None:
    if ctx:
        lc.llama_set_sampler(ctx, seq, None)
    lc.llama_sampler_free(chain)


def set_tensor_progress(progress: Any) -> None:
    """Report ``llama_model_quantize``'s per-tensor log lines to ``progress(done, total, name)`` (None: stop)."""
    _state["tensor_progress"] = progress


def clear_log() -> None:
    """Forget what llama.cpp logged so far (before a load, so ``last_errors`` names its reasons)."""
    _RECENT_LOG.clear()


def clear_interrupt() -> None:
    _state["interrupt"] = False


def apply_kv(params: Any, kv: KVCache, flash_attn: bool | None = None) -> None:
    """Set a context's KV cache types, and flash attention: where they need it (``KVCache``), else
    ``flash_attn`` (None: llama.cpp decides)."""
    params.type_k, params.type_v = kv.k.ggml_type, kv.v.ggml_type
    flash = kv.flash_attention if kv.flash_attention is not None else flash_attn
    if flash is not None:
        params.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED

"""Model processes, apart from the HTTP server (as Ollama keeps ``runner/`` apart from ``server/``).

``Runner`` starts one worker process per loaded model (``python -m edgeslm.runner.worker``) and
talks to it in JSON lines (``edgeslm.framing``, ``messages``); the server holds runners only
through ``RunnerLike`` and tracks each one's life cycle with ``state.Lifecycle``. ``tasks`` runs
store work that loads native code (quantize) in a one-shot child. Names are imported on first
use, so a process that needs one part does not load the server side's asyncio machinery.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .messages import Chunk, Done, Embeddings, Infill, Job, Tokens
    from .process import CLOSE_TIMEOUT, LOAD_TIMEOUT, Runner, RunnerLike
    from .state import LoadState

__all__ = ["CLOSE_TIMEOUT", "LOAD_TIMEOUT", "Chunk", "Done", "Embeddings", "Infill", "Job", "LoadState", "Runner",
           "RunnerLike", "Tokens"]
_HOME = {
    "Chunk": "messages", "Done": "messages", "Embeddings": "messages", "Infill": "messages", "Job": "messages",
    "Tokens": "messages",
    "CLOSE_TIMEOUT": "process", "LOAD_TIMEOUT": "process", "Runner": "process", "RunnerLike": "process",
    "LoadState": "state",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)

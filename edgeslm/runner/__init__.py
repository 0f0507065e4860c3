"""Model processes, apart from the HTTP server (as Ollama keeps ``runner/`` apart from ``server/``).

``Runner`` starts one worker process per loaded model (``python -m edgeslm.runner.worker``) and
talks to it in JSON lines (``framing``, ``messages``); the server holds runners only through
``RunnerLike`` and tracks each one's life cycle with ``state.Lifecycle``. ``tasks`` runs store
work that loads native code (quantize) in a one-shot child; bench's measurement uses the same
framing.
"""

from __future__ import annotations

from .messages import Chunk, Done, Embeddings, Job
from .process import CLOSE_TIMEOUT, LOAD_TIMEOUT, Runner, RunnerLike
from .state import LoadState

__all__ = ["CLOSE_TIMEOUT", "LOAD_TIMEOUT", "Chunk", "Done", "Embeddings", "Job", "LoadState", "Runner", "RunnerLike"]

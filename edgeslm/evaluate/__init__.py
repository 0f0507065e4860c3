"""``edgeslm eval`` and ``compare``: quality (perplexity, KL-divergence, top-1 agreement against
one reference) and speed of stored variants, on one scale.

``core`` runs an evaluation and keeps its result in the store; ``stats`` accumulates the
per-token statistics as llama-perplexity does; ``report`` turns kept results into tables and
a size-vs-KLD plot.
"""

from __future__ import annotations

from typing import Any

__all__ = ["REFERENCE_TAGS", "EvalResult", "EvalSettings", "EvalText", "all_results", "evaluate", "load_text"]


def __getattr__(name: str) -> Any:
    """The verbs on first use, so that ``evaluate.kept`` (the server reads it) stays light."""
    if name in __all__:
        from . import core

        return getattr(core, name)
    raise AttributeError(f"module 'edgeslm.evaluate' has no attribute {name!r}")

"""``edgeslm optimize``: build variants, measure them, and choose the best that meets constraints.

``core`` plans and runs the search; ``constraints`` holds the user's limits and ranks measured
candidates; ``sensitivity`` measures how much each tensor group matters; ``mixed`` plans a
per-tensor type mix for a size budget from those measurements; ``report`` writes the table,
JSON and plot.
"""

from __future__ import annotations

from typing import Any

from .constraints import Constraints

__all__ = ["DEFAULT_TYPES", "Candidate", "Constraints", "OptimizeParams", "OptimizeResult", "optimize"]


def __getattr__(name: str) -> Any:
    """The search on first use, so that ``optimize.history`` (the server reads it) stays light."""
    if name in __all__:
        from . import core

        return getattr(core, name)
    raise AttributeError(f"module 'edgeslm.optimize' has no attribute {name!r}")

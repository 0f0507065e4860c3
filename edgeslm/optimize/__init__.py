"""``edgeslm optimize``: build variants, measure them, and choose the best that meets constraints.

``core`` plans and runs the search; ``constraints`` holds the user's limits and ranks measured
candidates; ``sensitivity`` measures how much each tensor group matters; ``mixed`` plans a
per-tensor type mix for a size budget from those measurements; ``report`` writes the table,
JSON and plot.
"""

from __future__ import annotations

from .constraints import Constraints
from .core import DEFAULT_TYPES, Candidate, OptimizeParams, OptimizeResult, optimize

__all__ = ["DEFAULT_TYPES", "Candidate", "Constraints", "OptimizeParams", "OptimizeResult", "optimize"]

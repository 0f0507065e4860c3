"""edgeslm: small language models on edge devices: store, quantize, evaluate, choose and serve.

``edgeslm.load``, ``generate``, ``stream_generate`` and ``embed`` are imported on first use,
so ``import edgeslm`` stays light (no native code).
"""

from __future__ import annotations

from typing import Any

from .version import __version__

__all__ = ["__version__", "embed", "generate", "load", "stream_generate"]


def __getattr__(name: str) -> Any:
    if name in ("load", "generate", "stream_generate", "embed"):
        from . import generation

        return getattr(generation, name)
    raise AttributeError(f"module 'edgeslm' has no attribute {name!r}")

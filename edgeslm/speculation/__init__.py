"""Speculative decoding: drafts (``ngram``: prompt lookup, llama.cpp's ``ngram-simple`` and
``ngram-map-k`` and edgeslm's longest match) and
the policy that decides, from the verify cost measured on this machine and the acceptance seen so
far, whether a draft is worth verifying (``policy``). The engines verify (``engines.llamacpp.speculative``).
Names are imported on first use: the CLI and the server read ``LookupConfig`` without numpy."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import LookupConfig, LookupKind
    from .ngram import LookupDrafter, ngram_simple_draft
    from .policy import Policy, SpecStats, expected_gain

__all__ = ["LookupConfig", "LookupDrafter", "LookupKind", "Policy", "SpecStats", "expected_gain", "ngram_simple_draft"]
_HOME = {
    "LookupConfig": "config", "LookupKind": "config", "LookupDrafter": "ngram", "ngram_simple_draft": "ngram",
    "Policy": "policy", "SpecStats": "policy", "expected_gain": "policy",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)

"""The KV cache flag that ``run``, ``embed``, ``bench``, ``eval`` and ``serve`` share."""

from __future__ import annotations

import argparse

from ..errors import EdgeslmError
from ..formats.kv_cache import KVCache, KVType

TYPES = "|".join(t.value for t in (KVType.F16, KVType.Q8_0, KVType.Q4_0))
HELP = (f"KV cache type ({TYPES}, or k=TYPE,v=TYPE for the halves; also {', '.join(t.value for t in KVType)}): "
        "llama.cpp's -ctk/-ctv; a quantized cache turns flash attention on (default: {default})")
DEFAULT = "the model's PARAMETER kv_type, else $EDGESLM_KV_CACHE_TYPE, else f16"


def add_kv_flag(p: argparse.ArgumentParser, *, per_model: bool = False, default: str = DEFAULT) -> None:
    if per_model:
        p.add_argument("--kv-type", action="append", default=[], metavar=f"[MODEL=]{TYPES}",
                       help=HELP.format(default=default) + "; MODEL=: that model only (repeatable)")
    else:
        p.add_argument("--kv-type", type=kv_cache, metavar=TYPES, help=HELP.format(default=default))


def kv_cache(text: str) -> KVCache:
    try:
        return KVCache.parse(text)
    except EdgeslmError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def serve_kv(specs: list[str]) -> tuple[tuple[str, KVCache], ...]:
    """``serve --kv-type [MODEL=]TYPE``: ("*" for every llama.cpp model, or the model's name, its cache).
    ``k=…,v=…`` holds '=' too: a prefix is a model only when it is not ``k`` or ``v``."""
    out = []
    for spec in specs:
        model, sep, rest = spec.partition("=")
        if sep and model.strip().lower() not in ("k", "v"):
            out.append((model, kv_cache(rest)))
        else:
            out.append(("*", kv_cache(spec)))
    return tuple(out)

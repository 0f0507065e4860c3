"""What ``edgeslm tune`` measured best on this machine (the device profile), as the defaults of
``run``, ``bench`` and ``serve``, and the flags that override it. ``EDGESLM_NO_PROFILE=1`` ignores
the profile (llama.cpp's own defaults)."""

from __future__ import annotations

import argparse

from ..config import Settings
from ..engines.base import MAX_UBATCH, Tuning


def add_batch_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-ub", "--ubatch-size", dest="n_ubatch", type=ubatch, metavar="N",
                   help="prompt tokens per forward pass (default: edgeslm tune's, else llama.cpp's 512)")
    p.add_argument("-fa", "--flash-attn", choices=("on", "off"),
                   help="flash attention (default: edgeslm tune's, else llama.cpp's choice; a quantized KV cache "
                        "keeps it on)")
    p.add_argument("-mmp", "--mmap", choices=("on", "off"),
                   help="map the model file (llama.cpp's default), or read it into memory: 'off' holds less "
                        "where llama.cpp repacks weights (default: edgeslm tune's, else on)")


def ubatch(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"-ub {text!r} is not a whole number") from None
    if not 1 <= value <= MAX_UBATCH:
        raise argparse.ArgumentTypeError(f"-ub {value} is out of range; valid: 1 to {MAX_UBATCH:,}")
    return value


def tuned_threads(args: argparse.Namespace, settings: Settings) -> int | None:
    """``--threads``, else the profile's, else None (llama.cpp's choice: the physical cores)."""
    if getattr(args, "threads", None):
        return int(args.threads)
    from ..plan.profile import profile_threads  # the profile's reader pulls the GGUF reader: only when running

    return profile_threads(settings.home)


def tuning(args: argparse.Namespace, settings: Settings) -> Tuning:
    """``-ub``/``-fa``/``--mmap``, else the profile's, else llama.cpp's own (None each)."""
    from ..plan.profile import profile_tuning

    kept = profile_tuning(settings.home)
    ubatch_given, flash, mmap = (getattr(args, k, None) for k in ("n_ubatch", "flash_attn", "mmap"))
    return Tuning(kept.n_ubatch if ubatch_given is None else ubatch_given,
                  kept.flash_attn if flash is None else flash == "on",
                  kept.use_mmap if mmap is None else mmap == "on")

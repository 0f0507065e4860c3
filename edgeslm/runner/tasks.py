"""Store work the server runs in a child process, because it loads native code (llama.cpp's quantizer).

``python -m edgeslm.runner.tasks quantize HOME SOURCE TARGET TYPE`` stores SOURCE quantized to
TYPE as TARGET and answers one ``result`` line (the new manifest's digest and any warnings) or
one ``failed`` line, in ``runner.framing``'s format; ``quantize_in_child`` runs it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..config import resolve_settings
from ..formats.quant_types import QuantizeOptions, parse_quant_types
from ..framing import Message, child_main, run_child
from ..quantize import quantize
from ..store import Store, parse_name

QUANTIZE_TIMEOUT = 3600.0  # seconds: a 14B model on a slow machine takes minutes, never an hour


def quantize_in_child(home: Path, source: str, target: str, qtype: str) -> Message:
    argv = [sys.executable, "-m", "edgeslm.runner.tasks", "quantize", str(home), source, target, qtype]
    return run_child(argv, timeout=QUANTIZE_TIMEOUT, what=f"quantizing {source} to {qtype}")


def _quantize(home: str, source: str, target: str, qtype: str) -> Message:
    store = Store.open(resolve_settings(home=home, offline=True).models_dir)
    dst = parse_name(target)
    kinds = parse_quant_types(qtype)[:1]
    options = QuantizeOptions(allow_requantize=True, force=True)
    (result,) = quantize(store, parse_name(source), kinds, options, target=lambda _: dst)
    return {"digest": result.manifest.digest, "warnings": list(result.warnings)}


def main() -> None:
    _, home, source, target, qtype = sys.argv[1:6]
    child_main(lambda: _quantize(home, source, target, qtype))


if __name__ == "__main__":
    main()

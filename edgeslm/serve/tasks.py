"""Store work the server runs in a child process, because it loads native code (llama.cpp's quantizer).

``python -m edgeslm.serve.tasks quantize HOME SOURCE TARGET TYPE`` stores SOURCE quantized to TYPE
as TARGET and prints the new manifest's digest; an error prints ``{"kind", "message"}`` and
exits 1.
"""

from __future__ import annotations

import json
import sys

from ..config import resolve_settings
from ..errors import EdgeslmError
from ..formats.quant_types import QuantizeOptions, parse_quant_types
from ..quantize import quantize
from ..store import Store, parse_name


def main() -> None:
    _, home, source, target, qtype = sys.argv[1:6]
    try:
        store = Store.open(resolve_settings(home=home, offline=True).models_dir)
        dst = parse_name(target)
        kinds = parse_quant_types(qtype)[:1]
        options = QuantizeOptions(allow_requantize=True, force=True)
        (result,) = quantize(store, parse_name(source), kinds, options, target=lambda _: dst)
        sys.stdout.write(json.dumps({"digest": result.manifest.digest, "warnings": list(result.warnings)}) + "\n")
    except EdgeslmError as exc:
        sys.stdout.write(json.dumps({"kind": type(exc).__name__, "message": str(exc)}) + "\n")
        sys.exit(1)


if __name__ == "__main__":
    main()

"""mlx-lm's converter, run in a child process (``python -m edgeslm.engines.mlx.tools``).

    convert HF_FOLDER OUT DTYPE BITS GROUP RECIPE     mlx_lm.convert, offline (BITS 0: not quantized)

It imports mlx, transformers and the model's weights; in a child, the CLI stays small, keeps a
deadline, and a ``kill -9`` of either side publishes nothing (``framing``'s one-shot child).
"""

from __future__ import annotations

import logging
import os
import sys

from ...framing import Message, child_main


def convert(hf: str, out: str, dtype: str, bits: str, group: str, recipe: str) -> Message:
    import mlx_lm
    from mlx_lm import convert as mlx_convert

    quantize = int(bits) > 0 or recipe != "-"
    mlx_convert(
        hf, mlx_path=out, quantize=quantize, q_bits=int(bits) or None, q_group_size=int(group) or None,
        dtype=dtype, quant_predicate=None if recipe == "-" else recipe,
    )
    return {"converter": f"mlx-lm {mlx_lm.__version__}"}


def main() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"  # a local folder only: never reach a hub
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    step, *args = sys.argv[1:]
    child_main(lambda: {"convert": convert}[step](*args), quiet=True)


if __name__ == "__main__":
    main()

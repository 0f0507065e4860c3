"""onnxruntime's build tools, each step run in a child process (``python -m edgeslm.engines.onnxruntime.tools``).

They import torch, transformers and onnxruntime's tools, print a great deal, and can run
for minutes: in a child, the parent stays small, reads one ``result`` line (``framing``),
keeps a deadline, and a ``kill -9`` of either side publishes nothing. Every step writes into
a folder of the parent's locked temp area, whose lock the child holds too (``pass_fds``).

    build HF_FOLDER OUT PRECISION CACHE      onnxruntime-genai's model builder (CPU)
    dynamic SRC OUT                          transformer fusions, then quantize_dynamic (per-channel INT8)
    static SRC OUT TEXT CHUNKS               quantize_static (QOperator, MinMax) calibrated on TEXT
"""

from __future__ import annotations

import json
import logging
import os
import runpy
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ...errors import InvalidModelFileError
from ...framing import Message, child_main

GRAPH = "model.onnx"
CALIBRATION_TOKENS = 128  # tokens per calibration sample
FLOAT_MATMULS = ("down_proj", "lm_head")  # static INT8 leaves these MatMuls in float (see ``static``)


def build(hf: str, out: str, precision: str, cache: str) -> Message:
    """Run onnxruntime-genai's builder as its own command line does, offline."""
    argv = ["builder", "-i", hf, "-o", out, "-p", precision, "-e", "cpu", "-c", cache]
    saved, sys.argv = sys.argv, argv
    try:
        runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__")
    except NotImplementedError as exc:  # an architecture the builder does not know
        raise InvalidModelFileError(f"onnxruntime-genai's model builder cannot build this model: {exc}") from None
    finally:
        sys.argv = saved
    import onnxruntime_genai as og

    return {"builder": f"onnxruntime-genai {og.__version__}"}


def _copy_beside(src: Path, out: Path) -> None:
    """Everything of the folder but its graph (config, tokenizer files) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for path in src.iterdir():
        if path.is_file() and not path.name.startswith(GRAPH):
            shutil.copyfile(path, out / path.name)


def dynamic(src: str, out: str) -> Message:
    """Olive's CPU recipe: fuse (onnxruntime.transformers.optimizer), then per-channel dynamic INT8."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer

    source, target = Path(src), Path(out)
    _copy_beside(source, target)
    config = _decoder(source)
    fused = target.parent / "fused"
    fused.mkdir(exist_ok=True)
    model = optimizer.optimize_model(
        str(source / GRAPH), model_type="gpt2", num_heads=config.get("num_attention_heads", 0),
        hidden_size=config.get("hidden_size", 0), opt_level=0, use_gpu=False,
    )
    fusions = {k: v for k, v in model.get_fused_operator_statistics().items() if v}
    model.save_model_to_file(str(fused / GRAPH), use_external_data_format=True, all_tensors_to_one_file=True)
    quantize_dynamic(str(fused / GRAPH), str(target / GRAPH), per_channel=True, weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul"], use_external_data_format=True)
    shutil.rmtree(fused)
    return {"fusions": fusions, "quantizer": "quantize_dynamic(per_channel=True, weight_type=QInt8, MatMul)"}


def static(src: str, out: str, text: str, chunks: str) -> Message:
    """Static INT8 calibrated on real text through the graph's own inputs: QOperator MatMuls (onnxruntime's
    integer kernels), per-channel INT8 weights, UINT8 activations with MinMax ranges. The MatMuls that
    read the MLP's gated activations (down_proj) and the output layer stay in float: their inputs have
    outliers one per-tensor activation scale cannot hold (on SmolLM2 they alone took mean KLD from 0.11
    to 1.45)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    source, target = Path(src), Path(out)
    _copy_beside(source, target)
    graph = onnx.load(str(source / GRAPH), load_external_data=False).graph
    kept = [n.name for n in graph.node if n.op_type == "MatMul" and any(k in n.name for k in FLOAT_MATMULS)]
    reader = _CalibrationReader(source, Path(text).read_text(encoding="utf-8"), int(chunks))
    quantize_static(
        str(source / GRAPH), str(target / GRAPH), reader, quant_format=QuantFormat.QOperator, per_channel=True,
        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8, op_types_to_quantize=["MatMul"],
        nodes_to_exclude=kept, use_external_data_format=True, calibrate_method=CalibrationMethod.MinMax,
    )
    return {"quantizer": "quantize_static(QOperator, per_channel, QInt8 weights, QUInt8 activations, MinMax, "
            "MatMul)", "calibration_samples": reader.count, "float_matmuls": len(kept)}


def _decoder(folder: Path) -> dict[str, Any]:
    data = json.loads((folder / "genai_config.json").read_text(encoding="utf-8"))
    return dict(data["model"]["decoder"])


class _CalibrationReader:
    """onnxruntime's CalibrationDataReader over the text: ``chunks`` samples of 128 tokens, each a
    prompt from an empty KV cache (past keys and values of length 0), as the builder's graph takes."""

    def __init__(self, folder: Path, text: str, chunks: int) -> None:
        import numpy as np
        from tokenizers import Tokenizer

        ids = Tokenizer.from_file(str(folder / "tokenizer.json")).encode(text).ids
        n = min(chunks, len(ids) // CALIBRATION_TOKENS)
        if n < 1:
            raise InvalidModelFileError(f"the calibration text has {len(ids)} tokens; it needs {CALIBRATION_TOKENS}")
        cfg = _decoder(folder)
        layers, kv, head = cfg["num_hidden_layers"], cfg["num_key_value_heads"], cfg["head_size"]
        empty = np.zeros((1, kv, 0, head), dtype=np.float32)
        self.samples = []
        for i in range(n):
            chunk = np.asarray([ids[i * CALIBRATION_TOKENS : (i + 1) * CALIBRATION_TOKENS]], dtype=np.int64)
            feed = {"input_ids": chunk, "attention_mask": np.ones_like(chunk)}
            for layer in range(layers):
                feed[f"past_key_values.{layer}.key"] = feed[f"past_key_values.{layer}.value"] = empty
            self.samples.append(feed)
        self.count = n
        self._it: Iterator[dict[str, Any]] = iter(self.samples)

    def get_next(self) -> dict[str, Any] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self.samples)


STEPS: dict[str, Callable[..., Message]] = {"build": build, "dynamic": dynamic, "static": static}


def main() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"  # a local folder only: never reach a hub
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    step, *args = sys.argv[1:]
    child_main(lambda: STEPS[step](*args), quiet=True)


if __name__ == "__main__":
    main()

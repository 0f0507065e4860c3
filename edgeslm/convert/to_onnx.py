"""``edgeslm convert NAME --to onnx``: a stored model into the store as an ONNX Runtime GenAI folder.

The steps, each reported through ``progress`` and each long one in a child process with a
deadline (``engines.onnxruntime.tools``), all inside one locked temp folder of the store:

1. the stored GGUF exported to a Hugging Face folder (``export``, float32);
2. onnxruntime-genai's model builder: ``fp32``, ``int8`` or ``int4`` for the CPU (method ``builder``);
3. for the Olive-style variants, from the builder's fp32 graph: transformer fusions then
   ``quantize_dynamic`` (method ``dynamic``), or ``quantize_static`` calibrated on the
   evaluation text (method ``static``);
4. the folder validated as any import is (``onnx_folder``) and published with its lineage.

A ``kill -9`` at any point leaves only the temp folder, which the next store sweep removes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from ..errors import InvalidParameterError
from ..formats.model_format import ModelFormat, Runtime, require_installed
from ..store import ModelName, Store
from ..store.atomic import TempDir
from ..store.records import Manifest
from .variants import Built, Say, build_variant, check_source, run_tool

log = logging.getLogger(__name__)
CALIBRATION_CHUNKS = 16  # samples of 128 tokens for static INT8


class Precision(str, Enum):
    FP32 = "fp32"
    INT8 = "int8"
    INT4 = "int4"


class Method(str, Enum):
    BUILDER = "builder"  # the model builder's own graph and quantizer (MatMulNBits for int8/int4)
    DYNAMIC = "dynamic"  # builder fp32 -> fusions -> quantize_dynamic, per-channel INT8 (Olive's CPU recipe)
    STATIC = "static"  # builder fp32 -> quantize_static, INT8 calibrated on text


METHOD_PRECISIONS = {Method.BUILDER: tuple(Precision), Method.DYNAMIC: (Precision.INT8,),
                     Method.STATIC: (Precision.INT8,)}


@dataclass(frozen=True)
class OnnxConvertResult:
    manifest: Manifest
    precision: Precision
    method: Method
    seconds: float
    details: dict[str, Any]


def parse_precision(text: str) -> Precision:
    try:
        return Precision(text.strip().lower())
    except ValueError:
        valid = ", ".join(p.value for p in Precision)
        raise InvalidParameterError(f"precision {text!r} is unknown; valid: {valid}", params="precision") from None


def parse_method(text: str, precision: Precision) -> Method:
    try:
        method = Method(text.strip().lower())
    except ValueError:
        valid = ", ".join(m.value for m in Method)
        raise InvalidParameterError(f"method {text!r} is unknown; valid: {valid}", params="method") from None
    if precision not in METHOD_PRECISIONS[method]:
        allowed = ", ".join(p.value for p in METHOD_PRECISIONS[method])
        raise InvalidParameterError(
            f"method {method.value} makes {allowed} only, not {precision.value}", params=("method", "precision")
        )
    return method


def parse_variants(text: str) -> tuple[tuple[Precision, Method], ...]:
    """``"int4,int8,int8-dynamic"`` -> (precision, method) pairs, as their tags spell them."""
    found: list[tuple[Precision, Method]] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        precision, _, method = part.partition("-")
        pair = (parse_precision(precision), parse_method(method or Method.BUILDER.value, parse_precision(precision)))
        if pair not in found:
            found.append(pair)
    if not found:
        raise InvalidParameterError("no ONNX variant given; e.g. int4,int8,int8-dynamic", params="onnx")
    return tuple(found)


def default_tag(precision: Precision, method: Method) -> str:
    """``onnx-int4``; the Olive-style variants add their method: ``onnx-int8-dynamic``."""
    return f"onnx-{precision.value}" + ("" if method is Method.BUILDER else f"-{method.value}")


def onnx_requested(precision: Precision, method: Method) -> str:
    """What lineage records as asked for, and what a rebuild must match: ``onnx int4 (builder)``."""
    return f"onnx {precision.value} ({method.value})"


def convert_to_onnx(
    store: Store,
    name: ModelName,
    *,
    precision: Precision,
    method: Method = Method.BUILDER,
    target: ModelName | None = None,
    calibration: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> OnnxConvertResult:
    """Build ``name`` (a stored GGUF model) as an ONNX model and store it as ``target``."""
    say = progress or (lambda message: log.info("%s", message))
    parent = store.get(name)
    check_source(parent, "onnx")
    require_installed(("onnxruntime_genai", "onnxruntime", "onnx", "torch", "transformers"), Runtime.ONNXRUNTIME)
    target = target or parent.name.variant(default_tag(precision, method))
    start = time.perf_counter()
    manifest, built = build_variant(
        store, parent, target, ModelFormat.ONNX, lambda work: _build(work, precision, method, calibration, say),
        requested=onnx_requested(precision, method), file_type=f"ONNX {precision.value.upper()}", say=say,
    )
    return OnnxConvertResult(manifest, precision, method, time.perf_counter() - start, built.options)


def _build(work: TempDir, precision: Precision, method: Method, calibration: Path | None, say: Say) -> Built:
    built_precision = precision if method is Method.BUILDER else Precision.FP32
    say(f"building {built_precision.value} with onnxruntime-genai's model builder")
    out = work.path / "out"
    details = _step(work, "build", work.path / "hf", out, built_precision.value, work.path / "cache")
    if method is Method.DYNAMIC:
        say("fusing the graph (onnxruntime.transformers.optimizer), then quantize_dynamic per-channel INT8")
        details |= _step(work, "dynamic", out, work.path / "dynamic")
        out = work.path / "dynamic"
    elif method is Method.STATIC:
        text = calibration or _bundled_text(work)
        say(f"calibrating static INT8 on {CALIBRATION_CHUNKS} samples of {text.name}, then quantize_static")
        details |= _step(work, "static", out, work.path / "static", text, CALIBRATION_CHUNKS)
        out = work.path / "static"
    made_with = str(details.pop("builder", "onnxruntime-genai"))
    return Built(out, details, made_with)


def _step(work: TempDir, step: str, *args: object) -> dict[str, Any]:
    return run_tool(work, "onnxruntime.tools", step, *args, what=f"the ONNX {step} step")


def _bundled_text(work: TempDir) -> Path:
    from ..evaluate.core import load_text

    path = work.path / "calibration.txt"
    path.write_text(load_text(None).text, encoding="utf-8")
    return path

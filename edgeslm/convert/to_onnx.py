"""``edgeslm convert NAME --to onnx``: a stored model into the store as an ONNX Runtime GenAI folder.

The steps, each reported through ``progress`` and each long one in a child process with a
deadline (``engines.ort_tools``), all inside one locked temp folder of the store:

1. the stored GGUF exported to a Hugging Face folder (``export``, float32);
2. onnxruntime-genai's model builder: ``fp32``, ``int8`` or ``int4`` for the CPU (method ``builder``);
3. for the Olive-style variants, from the builder's fp32 graph: transformer fusions then
   ``quantize_dynamic`` (method ``dynamic``), or ``quantize_static`` calibrated on the
   evaluation text (method ``static``);
4. the folder validated as any import is (``onnx_folder``) and published with its lineage.

A ``kill -9`` at any point leaves only the temp folder, which the next store sweep removes.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any

from ..errors import InvalidModelFileError, InvalidParameterError
from ..formats.model_format import ModelFormat, Runtime, require_installed
from ..formats.size_class import classify
from ..framing import run_child
from ..store import ModelName, Store
from ..store.atomic import TempDir
from ..store.registry import Manifest

log = logging.getLogger(__name__)
BUILD_TIMEOUT = 3600.0  # seconds per step: a 14B model's build on a slow machine takes minutes
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
                     Method.STATIC: (Precision.INT8,)}  # fmt: skip
# the architectures edgeslm exports to Hugging Face form, all of which the builder builds
SUPPORTED = ("llama", "qwen2", "qwen3")


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
    target = target or replace(parent.name, tag=default_tag(precision, method))
    start = time.perf_counter()
    with store.locked():
        work = TempDir(store.tmp_dir, "onnx")
    with work:
        details = _build(store, parent, work, precision, method, calibration, say)
        built = work.path / ("out" if method is Method.BUILDER else method.value)
        from ..formats.onnx_folder import read_onnx_folder

        folder = read_onnx_folder(built, label=f"the {precision.value} build")
        n_params = parent.info.n_params  # the source's count: a packed or untied graph counts otherwise
        size = classify(n_params)
        info = replace(folder.info, n_params=n_params, size_class=size.size_class, size_class_label=size.label,
                       file_type=f"ONNX {precision.value.upper()}",
                       bits_per_weight=round(8 * folder.info.tensor_bytes / max(n_params, 1), 4))  # fmt: skip
        say(f"storing {target} ({len(folder.files)} files)")
        manifest = store.add_folder(target, built, fmt=ModelFormat.ONNX, info=info,
                                    source=_lineage(parent, precision, method, details))  # fmt: skip
    return OnnxConvertResult(manifest, precision, method, time.perf_counter() - start, details)


def check_source(parent: Manifest, to: str) -> None:
    """A stored GGUF model of an architecture ``export`` writes, or a clear refusal."""
    if parent.format is not ModelFormat.GGUF:
        raise InvalidParameterError(
            f"{parent.name} is already an {parent.format.value} model; convert its GGUF source instead"
        )
    if parent.info.architecture not in SUPPORTED:
        raise InvalidModelFileError(
            f"{parent.name} is a {parent.info.architecture} model; convert --to {to} supports "
            f"{', '.join(SUPPORTED)} (the architectures edgeslm exports to Hugging Face form for the converter)"
        )


def _build(
    store: Store, parent: Manifest, work: TempDir, precision: Precision, method: Method,
    calibration: Path | None, say: Callable[[str], None],
) -> dict[str, Any]:  # fmt: skip
    from ..export import export_hf

    say(f"exporting {parent.name} to a Hugging Face folder (float32)")
    export_hf(store, str(parent.name), work.path / "hf")
    built_precision = precision if method is Method.BUILDER else Precision.FP32
    say(f"building {built_precision.value} with onnxruntime-genai's model builder")
    out = work.path / "out"
    details = _step(work, "build", work.path / "hf", out, built_precision.value, work.path / "cache")
    if method is Method.DYNAMIC:
        say("fusing the graph (onnxruntime.transformers.optimizer), then quantize_dynamic per-channel INT8")
        details |= _step(work, "dynamic", out, work.path / "dynamic")
    elif method is Method.STATIC:
        text = calibration or _bundled_text(work)
        say(f"calibrating static INT8 on {CALIBRATION_CHUNKS} samples of {text.name}, then quantize_static")
        details |= _step(work, "static", out, work.path / "static", text, CALIBRATION_CHUNKS)
    return details


def _step(work: TempDir, step: str, *args: object) -> dict[str, Any]:
    argv = [sys.executable, "-m", "edgeslm.engines.ort_tools", step, *map(str, args)]
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return run_child(argv, timeout=BUILD_TIMEOUT, what=f"the ONNX {step} step", pass_fds=(work.fd,), env=env)


def _bundled_text(work: TempDir) -> Path:
    from ..evaluate.core import load_text

    path = work.path / "calibration.txt"
    path.write_text(load_text(None).text, encoding="utf-8")
    return path


def _lineage(parent: Manifest, precision: Precision, method: Method, details: dict[str, Any]) -> dict[str, str]:
    return {
        "kind": "convert",
        "parent": parent.digest,
        "parent_name": str(parent.name),
        "parent_type": parent.info.file_type or str(parent.info.main_type),
        "requested": f"onnx {precision.value} ({method.value})",
        "options": json.dumps({k: v for k, v in details.items() if k != "builder"}, sort_keys=True),
        "made_with": str(details.get("builder", "onnxruntime-genai")),
    }

"""The formats a stored model can be in, and the runtime that runs each.

A GGUF model is one file; an ONNX model is a folder (``model.onnx``, its external data,
``genai_config.json``, tokenizer files), stored as one blob per file.
"""

from __future__ import annotations

import importlib
import platform
from enum import Enum
from types import ModuleType


class ModelFormat(str, Enum):
    GGUF = "gguf"
    ONNX = "onnx"
    MLX = "mlx"


class Runtime(str, Enum):
    """The runtimes edgeslm measures side by side (the names ``--runtimes`` takes)."""

    LLAMA_CPP = "llama.cpp"
    ONNXRUNTIME = "onnxruntime"
    MLX = "mlx"


RUNTIME_OF: dict[ModelFormat, Runtime] = {
    ModelFormat.GGUF: Runtime.LLAMA_CPP, ModelFormat.ONNX: Runtime.ONNXRUNTIME, ModelFormat.MLX: Runtime.MLX,
}
# what `pip install` brings each runtime that is an extra (llama.cpp is a plain dependency)
EXTRA_OF: dict[Runtime, str] = {Runtime.ONNXRUNTIME: "onnx", Runtime.MLX: "mlx"}
# (sys_platform, machine) pairs with a wheel, for runtimes that have few (pyproject's markers)
WHEELS: dict[Runtime, tuple[tuple[str, str], ...]] = {Runtime.MLX: (("linux", "x86_64"), ("darwin", "arm64"))}


def parse_runtimes(text: str) -> tuple[Runtime, ...]:
    """``"llama.cpp,onnxruntime"`` -> runtimes, in order, each once."""
    from ..errors import InvalidParameterError

    found: list[Runtime] = []
    for part in (p.strip() for p in text.split(",")):
        try:
            runtime = Runtime(part.lower())
        except ValueError:
            valid = ", ".join(r.value for r in Runtime)
            raise InvalidParameterError(f"runtime {part!r} is unknown; valid: {valid}", params="runtimes") from None
        if runtime not in found:
            found.append(runtime)
    return tuple(found)


def require(module: str, runtime: Runtime) -> ModuleType:
    """Import ``module`` of an optional runtime, or say how to install that runtime."""
    from ..errors import MissingExtraError

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(missing_message(runtime, exc.name or module)) from None


def require_installed(modules: tuple[str, ...], runtime: Runtime) -> None:
    """Check that ``modules`` are installed without importing them (their native code loads
    where it is used: in an engine, or a child process), or say how to install the runtime."""
    from importlib.util import find_spec

    from ..errors import MissingExtraError

    for module in modules:
        if find_spec(module) is None:
            raise MissingExtraError(missing_message(runtime, module))


def missing_message(runtime: Runtime, module: str) -> str:
    """How to install ``runtime``, or that this platform has no wheel of it."""
    here = (platform.system().lower(), platform.machine().lower().replace("aarch64", "arm64"))
    wheels = WHEELS.get(runtime)
    if wheels is not None and here not in wheels:
        where = ", ".join(f"{os_name} {machine}" for os_name, machine in wheels)
        return (
            f"{runtime.value} has no build for this platform ({here[0]} {here[1]}): its wheels are for {where}, "
            f"so edgeslm[{EXTRA_OF[runtime]}] installs nothing here; use a GGUF or ONNX variant of the model, or "
            f"convert on a supported machine"
        )
    return (
        f"{runtime.value} is not installed here ({module} is missing); install it with: "
        f"pip install 'edgeslm[{EXTRA_OF[runtime]}]'"
    )


def engine_for(fmt: ModelFormat, configured: str) -> str:
    """The engine that opens a model of ``fmt``: GGUF goes to the configured engine (llama.cpp
    unless EDGESLM_ENGINE says otherwise), every other format to its own runtime."""
    return configured if fmt is ModelFormat.GGUF else RUNTIME_OF[fmt].value

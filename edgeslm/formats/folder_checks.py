"""Each folder format's validator, by format (``verify`` re-runs it on a stored folder)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .model_format import ModelFormat
from .model_info import ModelInfo


def _onnx(folder: Path) -> ModelInfo:
    from .onnx_folder import read_onnx_folder

    return read_onnx_folder(folder).info


CHECKS: dict[ModelFormat, Callable[[Path], ModelInfo]] = {ModelFormat.ONNX: _onnx}


def check_folder(fmt: ModelFormat, folder: Path) -> ModelInfo:
    return CHECKS[fmt](folder)

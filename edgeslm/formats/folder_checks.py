"""Each folder format's validator, by format (``verify`` re-runs it on a stored folder)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import InvalidModelFileError
from .model_format import ModelFormat
from .model_info import ModelInfo


def _onnx(folder: Path, label: str | None) -> ModelInfo:
    from .onnx_folder import read_onnx_folder

    return read_onnx_folder(folder, label=label).info


def _mlx(folder: Path, label: str | None) -> ModelInfo:
    from .mlx_folder import read_mlx_folder

    return read_mlx_folder(folder, label=label).info


CHECKS: dict[ModelFormat, Callable[[Path, str | None], ModelInfo]] = {ModelFormat.ONNX: _onnx, ModelFormat.MLX: _mlx}


def check_folder(fmt: ModelFormat, folder: Path, *, label: str | None = None) -> ModelInfo:
    return CHECKS[fmt](folder, label)


def detect_folder(folder: Path) -> ModelFormat:
    """An ONNX Runtime GenAI folder has ``genai_config.json``; an MLX folder ``config.json`` or
    safetensors weights (its check says what else is missing); anything else is refused."""
    if (folder / "genai_config.json").is_file():
        return ModelFormat.ONNX
    if (folder / "config.json").is_file() or any(folder.glob("*.safetensors")):
        return ModelFormat.MLX
    raise InvalidModelFileError(
        f"{folder} is neither an ONNX Runtime GenAI model folder (it has no genai_config.json) nor an MLX one "
        "(no config.json and .safetensors weights); import a .gguf file or one of those folders"
    )

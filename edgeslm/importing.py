"""``edgeslm import PATH``: a GGUF file, an ONNX Runtime GenAI folder made elsewhere (Foundry
Local, the model builder) or an MLX folder (mlx_lm.convert's), into the store. Each is validated
before a byte is copied."""

from __future__ import annotations

import re
from pathlib import Path

from .errors import InputFileError
from .formats.folder_checks import check_folder, detect_folder
from .store import ModelName, Store, parse_name
from .store.folders import publish_folder
from .store.records import Manifest, Progress


def default_name(path: Path) -> ModelName:
    """``./Phi-3-mini-int4/`` -> ``phi-3-mini-int4:latest``; ``model.Q4_0.gguf`` -> ``model.q4_0``."""
    stem = path.name.removesuffix(".gguf") if path.is_file() else path.resolve().name
    return parse_name(re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._") or "model")


def import_model(store: Store, path: Path, name: ModelName | None = None, progress: Progress | None = None) -> Manifest:
    name = name or default_name(path)
    source = {"kind": "file", "path": str(path.absolute())}
    if path.is_dir():
        fmt = detect_folder(path)
        info = check_folder(fmt, path)  # refuse a hostile folder before copying a byte of it
        return publish_folder(store, name, path, fmt=fmt, info=info, source=source, progress=progress)
    if not path.is_file():
        raise InputFileError(f"{path} does not exist; give a .gguf file, or an ONNX Runtime GenAI or MLX model folder")
    return store.add_file(path, name, source=source, progress=progress)


def import_size(path: Path) -> int | None:
    """Bytes an import of ``path`` copies (for a progress bar)."""
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    return None

"""The files of a model folder, read as hostile input: plain relative names, no links, a bounded count."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import InvalidModelFileError
from .model_info import ModelInfo, TypeShare
from .size_class import classify

log = logging.getLogger(__name__)
MAX_FILES = 256
MAX_PATH = 255
MAX_JSON_BYTES = 1 << 20  # a folder's small JSON files (configs, tokenizer_config.json); tokenizer.json is apart
_SAFE_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*\Z")


def safe_relative_path(text: object) -> str | None:
    """``text`` as a plain relative path inside a folder ("onnx/model.onnx"), or None when it is
    absolute, climbs out ('..'), is empty or has characters a file name here should not have."""
    if not isinstance(text, str) or not 0 < len(text) <= MAX_PATH or "\\" in text:
        return None
    path = PurePosixPath(text)
    if path.is_absolute() or str(path) != text:
        return None
    return text if all(_SAFE_PART.match(part) for part in path.parts) else None


def folder_files(folder: Path) -> list[tuple[str, Path]]:
    """The regular files under ``folder`` as (relative path, path), sorted. Hidden entries
    ('.gitattributes', '.cache/') are left out; a link or a special file is refused."""
    found: list[tuple[str, Path]] = []
    for top, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for entry in [*dirs, *files]:
            path = Path(top) / entry
            rel = path.relative_to(folder).as_posix()
            if path.is_symlink():
                raise InvalidModelFileError(
                    f"{rel} in {folder} is a symbolic link; a model folder must hold its own files (copy them in)"
                )
            if entry in dirs:
                continue
            if entry.startswith("."):
                log.info("leaving out hidden file %s", rel)
                continue
            if not path.is_file():
                raise InvalidModelFileError(f"{rel} in {folder} is not a regular file")
            if safe_relative_path(rel) is None:
                raise InvalidModelFileError(
                    f"{rel!r} in {folder} is not a plain file name (letters, digits, '_', '-', '.', '+')"
                )
            found.append((rel, path))
    if not found:
        raise InvalidModelFileError(f"{folder} holds no files")
    if len(found) > MAX_FILES:
        raise InvalidModelFileError(f"{folder} holds {len(found)} files; a model folder may hold {MAX_FILES}")
    return sorted(found)


def chat_template_of(folder: Path) -> str | None:
    """The folder's chat template: ``chat_template.jinja`` (the builder's), else tokenizer_config.json's."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file() and jinja.stat().st_size <= MAX_JSON_BYTES:
        return jinja.read_text(encoding="utf-8", errors="replace")
    path = folder / "tokenizer_config.json"
    try:
        if path.stat().st_size > MAX_JSON_BYTES * 8:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    template = data.get("chat_template") if isinstance(data, dict) else None
    return template if isinstance(template, str) else None


def int_field(node: Mapping[str, Any], key: str) -> int | None:
    """A config's integer (a bool or anything else is absent)."""
    value = node.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class FolderWeights:
    """What a folder check measured of the weights."""

    type_mix: tuple[TypeShare, ...]
    n_params: int  # logical: a packed value counts once
    n_bytes: int
    n_tensors: int


def folder_model_info(
    folder: Path, files: Mapping[str, int], weights: FolderWeights, *, architecture: str,
    context_length: int | None, embedding_length: int | None, block_count: int | None, head_count: int | None,
    head_count_kv: int | None, head_dim: int | None, sliding_window: int | None, vocab_size: int | None,
    kv_bytes_per_element: int,
) -> ModelInfo:
    """The ``ModelInfo`` of a folder model (ONNX, MLX), from its config's dimensions and its weights."""
    size = classify(weights.n_params)
    return ModelInfo(
        architecture=architecture[:64], n_params=weights.n_params, size_class=size.size_class,
        size_class_label=size.label, file_size=sum(files.values()), tensor_bytes=weights.n_bytes,
        bits_per_weight=round(8 * weights.n_bytes / weights.n_params, 4) if weights.n_params else 0.0,
        file_type=None, type_mix=weights.type_mix, context_length=context_length, embedding_length=embedding_length,
        block_count=block_count, head_count=head_count, head_count_kv=head_count_kv or head_count,
        key_length=head_dim, value_length=head_dim, sliding_window=sliding_window, vocab_size=vocab_size,
        tokenizer_model="huggingface", has_chat_template=chat_template_of(folder) is not None, general={},
        gguf_version=0, n_tensors=weights.n_tensors, kv_bytes_per_element=kv_bytes_per_element,
    )

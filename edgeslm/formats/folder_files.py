"""The files of a model folder, read as hostile input: plain relative names, no links, a bounded count."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path, PurePosixPath

from ..errors import InvalidModelFileError

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

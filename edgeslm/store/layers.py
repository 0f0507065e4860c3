"""The files of a folder-shaped model (ONNX): each a content-addressed blob under a relative path.

A manifest lists them as Ollama's manifests list layers. Their paths are checked like any
hostile input: relative, normalised, inside the folder, no two alike.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..formats.folder_files import MAX_FILES, safe_relative_path

DIGEST = re.compile(r"sha256-[0-9a-f]{64}\Z")


@dataclass(frozen=True)
class Layer:
    path: str  # relative POSIX path inside the model's folder
    digest: str  # "sha256-<hex>", the blob's name
    size: int


def folder_digest(layers: Iterable[Layer]) -> str:
    """The identity of a folder: sha256 of its sorted (path, digest, size) list."""
    listing = sorted((x.path, x.digest, x.size) for x in layers)
    return "sha256-" + hashlib.sha256(json.dumps(listing, separators=(",", ":")).encode()).hexdigest()


def layers_from_json(items: Any) -> tuple[Layer, ...]:
    if not isinstance(items, list) or not 0 < len(items) <= MAX_FILES:
        raise ValueError(f"'layers' must list 1 to {MAX_FILES} files")
    layers = []
    for item in items:
        path, digest, size = item.get("path"), item.get("digest"), item.get("size")
        if safe_relative_path(path) is None:
            raise ValueError(f"layer path {path!r} is not a plain relative path")
        if not isinstance(digest, str) or not DIGEST.match(digest):
            raise ValueError(f"bad layer digest {digest!r}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"bad layer size {size!r}")
        layers.append(Layer(path, digest, size))
    if len({x.path for x in layers}) != len(layers):
        raise ValueError("two layers have the same path")
    return tuple(sorted(layers, key=lambda x: x.path))

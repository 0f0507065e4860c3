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


@dataclass(frozen=True)
class AdapterRef:
    """A LoRA adapter (a GGUF blob) a model applies to its base weights, at ``scale``."""

    digest: str
    size: int
    scale: float = 1.0
    base: str = ""  # digest of the model it was made for or trained on ("": not known)
    label: str = ""  # where it came from: a file or folder name, a stored name

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "size": self.size, "scale": self.scale, "base": self.base, "label": self.label}


MAX_ADAPTERS = 8


def adapters_from_json(items: Any) -> tuple[AdapterRef, ...]:
    if not isinstance(items, list) or len(items) > MAX_ADAPTERS:
        raise ValueError(f"'adapters' must list at most {MAX_ADAPTERS} adapters")
    refs = []
    for item in items:
        digest, size, scale = item.get("digest"), item.get("size"), item.get("scale", 1.0)
        base, label = item.get("base", ""), item.get("label", "")
        if not isinstance(digest, str) or not DIGEST.match(digest):
            raise ValueError(f"bad adapter digest {digest!r}")
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise ValueError(f"bad adapter size {size!r}")
        if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not -100 <= scale <= 100:
            raise ValueError(f"bad adapter scale {scale!r}")
        if not isinstance(base, str) or (base and not DIGEST.match(base)) or not isinstance(label, str):
            raise ValueError("bad adapter base or label")
        refs.append(AdapterRef(digest, size, float(scale), base, label[:200]))
    return tuple(refs)

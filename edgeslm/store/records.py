"""The store's records: a model's manifest and what the store's operations report (plans,
sweeps, verification). Plain data with their JSON forms; no I/O beyond reading a file's bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from ..formats.model_format import ModelFormat
from ..formats.model_info import ModelInfo
from .atomic import TempFile
from .layers import DIGEST, AdapterRef, Layer, adapters_from_json, folder_digest, layers_from_json
from .names import ModelName, parse_name

MANIFEST_SCHEMA = 1  # one GGUF blob: written as before, so older manifests need no migration
FOLDER_SCHEMA = 2  # a format and a list of files (Ollama's layers), one blob each
Progress = Callable[[int], None]
Writer = Callable[[BinaryIO], tuple[str, int]]


@dataclass(frozen=True)
class Manifest:
    """A name for a model: one GGUF blob (``digest``), or a folder of ``layers``, each a blob.

    For a folder, ``digest`` identifies the whole (``layers.folder_digest``; no blob has that
    name) and ``size`` is the sum of its files.
    """

    name: ModelName
    digest: str  # "sha256-<hex>": the blob's file name (GGUF), or the folder's identity
    size: int
    created: str
    info: ModelInfo
    source: Mapping[str, str] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)  # system prompt and parameters (ollama create)
    format: ModelFormat = ModelFormat.GGUF
    layers: tuple[Layer, ...] = ()
    adapters: tuple[AdapterRef, ...] = ()  # LoRA adapters on the GGUF blob (a custom model)

    def blob_sizes(self) -> dict[str, int]:
        """Every blob this manifest needs, with its size."""
        own = {self.digest: self.size} if not self.layers else {x.digest: x.size for x in self.layers}
        return own | {a.digest: a.size for a in self.adapters}

    def to_json(self) -> bytes:
        data: dict[str, Any] = {
            "schema": MANIFEST_SCHEMA if not self.layers else FOLDER_SCHEMA,
            "name": str(self.name),
            "digest": self.digest,
            "size": self.size,
            "created": self.created,
            "source": dict(self.source),
            "info": self.info.to_dict(),
        }
        if self.layers:
            data["format"] = self.format.value
            data["layers"] = [{"path": x.path, "digest": x.digest, "size": x.size} for x in self.layers]
        if self.defaults:
            data["defaults"] = dict(self.defaults)
        if self.adapters:
            data["adapters"] = [a.to_json() for a in self.adapters]
        return json.dumps(data, indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        data = json.loads(raw)
        schema = data.get("schema")
        if schema not in (MANIFEST_SCHEMA, FOLDER_SCHEMA):
            raise ValueError(f"unknown manifest schema {schema!r}")
        digest = data["digest"]
        if not isinstance(digest, str) or not DIGEST.match(digest):
            raise ValueError(f"bad digest {digest!r}")
        layers: tuple[Layer, ...] = ()
        fmt = ModelFormat.GGUF
        if schema == FOLDER_SCHEMA:
            fmt = ModelFormat(data["format"])
            layers = layers_from_json(data["layers"])
            if folder_digest(layers) != digest:
                raise ValueError("its digest does not match its list of files")
        return cls(
            name=parse_name(data["name"]),
            digest=digest,
            size=int(data["size"]),
            created=str(data["created"]),
            info=ModelInfo.from_dict(data["info"]),
            source={str(k): str(v) for k, v in data.get("source", {}).items()},
            defaults=dict(data.get("defaults") or {}),
            format=fmt,
            layers=layers,
            adapters=adapters_from_json(data.get("adapters") or []),
        )


@dataclass
class Staged:
    """A written, hashed temp file waiting to become a blob (``Store.stage``)."""

    tmp: TempFile
    digest: str
    size: int

    def commit(self, dest: Path) -> None:
        self.tmp.commit(dest)

    def discard(self) -> None:
        self.tmp.discard()


class Arrived(Protocol):
    """A checked file ready to become a blob: a ``Staged`` temp file or a received upload."""

    @property
    def digest(self) -> str: ...

    def commit(self, dest: Path) -> None: ...


@dataclass(frozen=True)
class SweepReport:
    stale_temps: tuple[Path, ...] = ()
    orphan_blobs: tuple[str, ...] = ()


@dataclass(frozen=True)
class RemovePlan:
    """What ``rm`` would do; only ``Store.execute_remove`` touches disk."""

    manifests: tuple[Manifest, ...]
    blobs: tuple[str, ...]  # digests no other manifest names
    freed_bytes: int


@dataclass(frozen=True)
class Problem:
    subject: str  # a model name, a blob digest or a path
    detail: str


@dataclass(frozen=True)
class VerifyReport:
    checked_blobs: int
    checked_manifests: int
    problems: tuple[Problem, ...]
    swept: SweepReport

    @property
    def ok(self) -> bool:
        return not self.problems


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")

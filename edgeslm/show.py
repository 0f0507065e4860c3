"""``edgeslm show``: everything about one model, from its header, as a plain record."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import DEFAULT_CONTEXT
from .formats.gguf_header import ArrayValue, GGUFHeader, MetaValue, read_gguf_header
from .formats.model_info import MemoryEstimate, ModelInfo, estimate_memory, model_info
from .store import Store, parse_name
from .store.records import Manifest

MAX_SHOWN_STRING = 200


@dataclass(frozen=True)
class ModelReport:
    name: str | None  # None for a file outside the store
    path: Path
    digest: str | None
    source: dict[str, str]
    info: ModelInfo
    memory: MemoryEstimate
    metadata: dict[str, Any]  # scalar keys as stored; arrays as "[type x count]"; long strings cut

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "digest": self.digest,
            "source": self.source,
            **self.info.to_dict(),
            "memory": {
                "context_length": self.memory.context_length,
                "weights_bytes": self.memory.weights_bytes,
                "kv_cache_bytes": self.memory.kv_cache_bytes,
                "total_bytes": self.memory.total_bytes,
            },
            "metadata": self.metadata,
        }


def _display_value(value: MetaValue) -> Any:
    if isinstance(value, ArrayValue):
        return f"[{value.elem_type.name.lower()} x {value.count:,}]"
    if value is None:
        return "<string over 1 MiB, not kept>"
    if isinstance(value, str) and len(value) > MAX_SHOWN_STRING:
        return value[:MAX_SHOWN_STRING] + f"... ({len(value):,} characters)"
    return value


def _metadata(header: GGUFHeader) -> dict[str, Any]:
    return {k: _display_value(v) for k, v in header.metadata.items()}


def show_model(store: Store, name_or_path: str, *, context_length: int | None = None) -> ModelReport:
    """Report on a stored model by name, or on a GGUF file outside the store by path."""
    path = Path(name_or_path)
    manifest: Manifest | None = None
    if name_or_path.endswith(".gguf") and path.exists():
        header = read_gguf_header(path)
    else:
        manifest = store.get(parse_name(name_or_path))
        path = store.model_path(manifest)
        if manifest.layers:
            return _folder_report(manifest, path, context_length)
        header = read_gguf_header(path, label=str(manifest.name))
    info = model_info(header)
    ctx = context_length or min(info.context_length or DEFAULT_CONTEXT, DEFAULT_CONTEXT)
    return ModelReport(
        name=str(manifest.name) if manifest else None,
        path=path,
        digest=manifest.digest if manifest else None,
        source=dict(manifest.source) if manifest else {"kind": "file"},
        info=info,
        memory=estimate_memory(info, ctx),
        metadata=_metadata(header),
    )


def _folder_report(manifest: Manifest, path: Path, context_length: int | None) -> ModelReport:
    """A folder model (ONNX): its stored info, and its files in place of GGUF metadata."""
    info = manifest.info
    ctx = context_length or min(info.context_length or DEFAULT_CONTEXT, DEFAULT_CONTEXT)
    return ModelReport(
        name=str(manifest.name),
        path=path,
        digest=manifest.digest,
        source=dict(manifest.source),
        info=info,
        memory=estimate_memory(info, ctx),
        metadata={"format": manifest.format.value, **{f"file {x.path}": x.size for x in manifest.layers}},
    )

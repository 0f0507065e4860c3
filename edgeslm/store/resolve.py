"""A model resolved once: what a name or path stands for, handed down to whatever opens it.

``ResolvedModel`` carries everything a runtime needs (the file or folder, its format and facts,
its digest, a created model's adapters and stored defaults), so the loader, the server's manager
and a runner's worker process open the model from it without looking the name up again; it
travels to a worker as JSON (``to_dict`` / ``from_dict``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..formats.folder_files import chat_template_of
from ..formats.gguf_header import read_gguf_header
from ..formats.model_format import ModelFormat, engine_for
from ..formats.model_info import ModelInfo, model_info
from .records import Manifest
from .registry import Store


@dataclass(frozen=True)
class ResolvedModel:
    """A model found by name or path: what to open, what it is, and which runtime runs it."""

    name: str
    path: Path  # a GGUF file, or a model folder
    info: ModelInfo
    format: ModelFormat = ModelFormat.GGUF
    digest: str | None = None  # None outside the store
    adapters: tuple[tuple[str, float], ...] = ()  # LoRA adapters (GGUF path, scale) a custom model applies
    adapter_bytes: int = 0
    defaults: Mapping[str, Any] = field(default_factory=dict)  # its system prompt, parameters, messages, template

    def engine(self, configured: str) -> str:
        return engine_for(self.format, configured)

    @property
    def key(self) -> str:
        """What the runtime loads, as one string: the same key is the same weights and adapters."""
        return "+".join([self.digest or str(self.path), *(path for path, _ in self.adapters)])

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "path": str(self.path), "info": self.info.to_dict(), "format": self.format.value,
            "digest": self.digest, "adapters": [list(a) for a in self.adapters], "adapter_bytes": self.adapter_bytes,
            "defaults": dict(self.defaults),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResolvedModel:
        adapters = tuple((str(path), float(scale)) for path, scale in data["adapters"])
        return cls(str(data["name"]), Path(data["path"]), ModelInfo.from_dict(data["info"]),
                   ModelFormat(data["format"]), data["digest"], adapters, int(data["adapter_bytes"]),
                   dict(data["defaults"]))


def from_manifest(store: Store, manifest: Manifest) -> ResolvedModel:
    """A stored model as a runtime opens it; its facts come from the manifest (no file is read)."""
    return ResolvedModel(
        str(manifest.name), store.model_path(manifest), manifest.info, manifest.format, manifest.digest,
        store.adapter_files(manifest), sum(a.size for a in manifest.adapters), manifest.defaults,
    )


def from_path(path: Path) -> ResolvedModel | None:
    """A .gguf file or a model folder outside the store (its header or files checked); None when
    ``path`` is neither (or cannot be a path at all: a prompt longer than a file name may be), so
    the caller reads it as a name."""
    try:
        path.stat()
    except (OSError, ValueError):  # missing, too long, a NUL byte: not a model on disk
        return None
    if path.name.endswith(".gguf") and path.is_file():
        return ResolvedModel(path.name, path, model_info(read_gguf_header(path, label=path.name)))
    if path.is_dir() and any((path / f).is_file() for f in ("genai_config.json", "config.json")):
        from ..formats.folder_checks import check_folder, detect_folder

        fmt = detect_folder(path)
        return ResolvedModel(path.name, path, check_folder(fmt, path), fmt)
    return None


def chat_template(model: ResolvedModel) -> str | None:
    """A model's chat template: a created model's TEMPLATE, a folder's files, else the GGUF's metadata."""
    if model.defaults.get("template"):
        return str(model.defaults["template"])
    if model.format is not ModelFormat.GGUF:
        return chat_template_of(model.path)
    template = read_gguf_header(model.path, label=model.name).metadata.get("tokenizer.chat_template")
    return template if isinstance(template, str) else None


@dataclass(frozen=True)
class Stored:
    """What ``create`` stored with a model (its system prompt, parameters and example messages),
    read once per request."""

    system: str | None
    parameters: dict[str, Any]
    examples: list[dict[str, Any]]

    def conversation(self, messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str | None]:
        """Ollama's order: the example messages, then the request's; and the system prompt to put
        first (none when the request brings its own)."""
        own_system = bool(messages) and messages[0].get("role") == "system"
        return [dict(m) for m in self.examples] + messages, None if own_system else self.system


def stored(model: ResolvedModel) -> Stored:
    defaults = model.defaults
    return Stored(defaults.get("system"), dict(defaults.get("parameters") or {}),
                  list(defaults.get("messages") or []))

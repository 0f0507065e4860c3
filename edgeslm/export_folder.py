"""``edgeslm export NAME --format mlx|onnx FOLDER``: hand a model to another machine as a folder.

A stored MLX or ONNX model is copied out file by file, each file's sha256 checked against its
manifest on the way, so what lands in FOLDER is what was measured. A stored GGUF model (a
``best`` from ``optimize``, say) is first converted (``convert.to_mlx`` / ``convert.to_onnx``)
into the store — tagged after it, ``best-mlx-4bit``, and reused while it was built from the same
bytes as asked — then copied out. The folder is written next to its target and renamed into
place, so a failed export leaves nothing behind. What lands there is what ``mlx_lm.load`` or
``onnxruntime_genai.Model`` opens.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .convert.variants import stored_build
from .errors import IntegrityError, InvalidParameterError
from .formats.model_format import ModelFormat
from .store import ModelName, Store, parse_name
from .store.atomic import check_new_folder, copy_hashing, staged_folder
from .store.records import Manifest

log = logging.getLogger(__name__)
# (store, GGUF parent, target name, progress) -> the stored variant
Build = Callable[[Store, Manifest, ModelName, Callable[[str], None]], Manifest]


@dataclass(frozen=True)
class FolderVariant:
    """How a GGUF model becomes the folder format asked for: its tag suffix, lineage and builder."""

    tag: str  # mlx-4bit, onnx-int4
    requested: str  # as the lineage records it
    build: Build


@dataclass(frozen=True)
class FolderExportResult:
    folder: Path
    name: str  # the stored model written out
    built: bool  # converted for this export (else reused or already in the format)
    files: int
    size: int


def export_folder(
    store: Store,
    name: str,
    fmt: ModelFormat,
    target: Path,
    variant: FolderVariant,
    *,
    progress: Callable[[str], None] | None = None,
) -> FolderExportResult:
    say = progress or (lambda message: log.info("%s", message))
    manifest = store.get(parse_name(name))
    check_new_folder(target)  # before any build
    built = False
    if manifest.format is not fmt:
        if manifest.format is not ModelFormat.GGUF:
            source = manifest.source.get("parent_name")
            hint = f"export its GGUF source, {source}" if source else "give a GGUF model or one stored as " + fmt.value
            raise InvalidParameterError(
                f"{manifest.name} is an {manifest.format.value} model: it cannot become {fmt.value}; {hint}"
            )
        manifest, built = _variant_of(store, manifest, variant, say)
    say(f"writing {manifest.name} to {target}")
    _copy_out(store, manifest, target)
    return FolderExportResult(target, str(manifest.name), built, len(manifest.layers), manifest.size)


def variant_name(parent: ModelName, tag: str) -> ModelName:
    """``m:latest`` -> ``m:mlx-4bit``; ``m:best`` -> ``m:best-mlx-4bit``."""
    return parent.variant(tag)


def _variant_of(
    store: Store, parent: Manifest, variant: FolderVariant, say: Callable[[str], None]
) -> tuple[Manifest, bool]:
    name = variant_name(parent.name, variant.tag)
    found = stored_build(store, name, parent, variant.requested)
    if found is not None:
        say(f"{name} was built from {parent.name} as asked: reusing it")
        return found, False
    return variant.build(store, parent, name, say), True


def _copy_out(store: Store, manifest: Manifest, target: Path) -> None:
    with staged_folder(target) as tmp:
        for layer in manifest.layers:
            out = tmp / layer.path
            out.parent.mkdir(parents=True, exist_ok=True)
            with out.open("wb") as dst:
                digest, _ = copy_hashing([store.blob_path(layer.digest)], dst)
            if f"sha256-{digest}" != layer.digest:
                raise IntegrityError(
                    f"{manifest.name}: {layer.path} in the store does not match its manifest (sha256-{digest[:12]}, "
                    f"expected {layer.digest[:19]}); run 'edgeslm verify' and pull or rebuild it"
                )

"""Folder-shaped models (ONNX) in the store: their files published as blobs, and a folder view.

Publishing follows the store's one rule: every file is hashed in a temp file (or in the
builder's locked temp folder), then all are moved to their blob names together with the
manifest that names them, under the lock; a ``kill -9`` leaves only unnamed blobs or temp
files, which the sweep removes. A runtime that wants a folder gets a *view*,
``views/<digest>/``: hard links to the blobs under their paths (copies where links fail),
built in a temp folder and renamed into place, rebuilt if found incomplete, removed with the
last manifest that names it.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import BinaryIO, Protocol

from ..errors import StoreError
from ..formats.folder_files import folder_files
from ..formats.model_format import ModelFormat
from ..formats.model_info import ModelInfo
from .atomic import TempDir, copy_hashing, fsync_dir, remove_path, sha256_file
from .layers import Layer, folder_digest
from .names import ModelName
from .records import Arrived, Manifest, Progress, Staged, now_iso


class Store(Protocol):
    """What publishing and views use of the store (``registry.Store``, which imports this module
    and hands itself in): its folders, its lock, and its one write path."""

    tmp_dir: Path
    views_dir: Path

    def blob_path(self, digest: str) -> Path: ...

    def locked(self) -> AbstractContextManager[None]: ...

    def stage_stream(self, write: Callable[[BinaryIO], tuple[str, int]], *, label: str) -> Staged: ...

    def commit(self, manifests: Sequence[Manifest], staged: Iterable[Arrived] = ()) -> None: ...

log = logging.getLogger(__name__)


def _copy_into(src: Path, progress: Progress | None, dst: BinaryIO) -> tuple[str, int]:
    return copy_hashing([src], dst, progress)


@dataclass(frozen=True)
class _InPlace:
    """A builder's file in the store's own temp area, hashed where it lies: committed by moving it."""

    path: Path
    digest: str

    def commit(self, dest: Path) -> None:
        os.replace(self.path, dest)
        fsync_dir(dest.parent)


def publish_folder(
    store: Store,
    name: ModelName,
    folder: Path,
    *,
    fmt: ModelFormat,
    info: ModelInfo,
    source: Mapping[str, str],
    progress: Progress | None = None,
) -> Manifest:
    """Store every file of ``folder`` (already validated by the caller) and name them ``name``,
    through the store's one write path (stage each file, then ``Store.commit``).

    Files inside the store's temp area (a builder's output) are hashed and moved; any other
    folder is copied, so the user's files are never touched."""
    in_store = folder.resolve().is_relative_to(store.tmp_dir.resolve())
    layers: list[Layer] = []
    staged: list[Arrived] = []
    temps: list[Staged] = []
    try:
        for rel, path in folder_files(folder):
            item: Arrived
            if in_store:
                _fsync_file(path)
                item = _InPlace(path, f"sha256-{sha256_file(path, progress)}")
                size = path.stat().st_size
            else:
                copied = store.stage_stream(partial(_copy_into, path, progress), label=rel)
                temps.append(copied)
                item, size = copied, copied.size
            layers.append(Layer(rel, item.digest, size))
            staged.append(item)
        manifest = Manifest(name, folder_digest(tuple(layers)), sum(x.size for x in layers), now_iso(), info,
                            dict(source), format=fmt, layers=tuple(layers))
        store.commit([manifest], staged)
    finally:
        for tmp in temps:
            tmp.discard()
    log.info("stored %s as %s (%d files, %d bytes)", folder, name, len(layers), manifest.size)
    return manifest


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def view_path(store: Store, manifest: Manifest) -> Path:
    return store.views_dir / manifest.digest.removeprefix("sha256-")


def folder_view(store: Store, manifest: Manifest) -> Path:
    """A folder holding ``manifest``'s files under their paths, for a runtime to open."""
    view = view_path(store, manifest)
    if _complete(view, manifest):
        return view
    with store.locked():
        tmp = TempDir(store.tmp_dir, "view")
    with tmp:
        for layer in manifest.layers:
            blob = store.blob_path(layer.digest)
            if not blob.is_file():
                raise StoreError(
                    f"{manifest.name}: its file {layer.path} (blob {layer.digest[:19]}) is missing from the store; "
                    "run 'edgeslm verify', then build or import the model again"
                )
            dst = tmp.path / layer.path
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(blob, dst)
            except OSError:  # a file system without hard links
                shutil.copyfile(blob, dst)
        with store.locked():
            if not _complete(view, manifest):
                remove_path(view)
                view.parent.mkdir(exist_ok=True)
                os.rename(tmp.path, view)
    return view


def _complete(view: Path, manifest: Manifest) -> bool:
    for layer in manifest.layers:
        try:
            st = (view / layer.path).lstat()
        except OSError:
            return False
        if not (stat.S_ISREG(st.st_mode) and st.st_size == layer.size):
            return False
    return True


def drop_views(store: Store, manifests: list[Manifest]) -> None:
    """Remove the views no manifest names. Caller holds the lock."""
    wanted = {view_path(store, m).name for m in manifests if m.layers}
    for view in store.views_dir.iterdir() if store.views_dir.is_dir() else ():
        if view.name not in wanted:
            remove_path(view)
            log.debug("removed view %s", view.name)

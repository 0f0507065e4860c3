"""push, pull and sync between this store and a remote: only missing blobs move, every blob is
checked on arrival, names are published only once everything they need is there."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import ConflictError, ModelNotFoundError, StoreError
from ..store import ModelName, Store
from ..store.incoming import check_names, missing_blobs, publish_received
from ..store.records import Manifest
from ..units import format_bytes
from .remotes import Progress, Remote, RemoteKind, RemoteStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Transfer:
    remote: str
    models: tuple[str, ...]  # the names asked for
    changed: tuple[str, ...]  # names the receiving side now holds with new content
    blobs_moved: int
    bytes_moved: int
    blobs_skipped: int  # already on the receiving side
    removed: tuple[str, ...] = field(default_factory=tuple)  # sync --prune


def open_remote(remote: Remote) -> RemoteStore:
    if remote.kind is RemoteKind.HF:
        from .hf import HfRemote

        return HfRemote(remote)
    from .edge import EdgeRemote

    return EdgeRemote(remote)


def push(store: Store, remote: Remote, names: Sequence[ModelName], *, force: bool = False,
         progress: Progress | None = None) -> Transfer:
    """Send ``names`` and every blob of them the remote lacks, then name them there."""
    manifests = [store.get(n) for n in names]
    sizes = {d: s for m in manifests for d, s in m.blob_sizes().items()}
    client = open_remote(remote)
    try:
        theirs = client.manifests()
        clash = [str(m.name) for m in manifests if (t := theirs.get(str(m.name))) and t.digest != m.digest]
        if clash and not force:
            raise ConflictError(f"{', '.join(clash)} name other models on remote {remote.name}; push with --force "
                                "to replace them there")
        missing = {d: s for d, s in sizes.items() if client.offset(d) is not None}
        for digest, size in missing.items():
            client.send(store, digest, size, progress)
        changed = client.publish(manifests, force)
    finally:
        client.close()
    log.info("pushed %s to %s: %d blob(s) sent", ", ".join(map(str, names)), remote.name, len(missing))
    return Transfer(remote.name, tuple(str(m.name) for m in manifests), tuple(changed), len(missing),
                    sum(missing.values()), len(sizes) - len(missing))


def pull(store: Store, remote: Remote, names: Sequence[ModelName], *, force: bool = False,
         progress: Progress | None = None) -> Transfer:
    """Fetch ``names`` from the remote: names and room checked first, then the missing blobs
    (resuming what an interrupted pull left), each checked, then all names at once."""
    client = open_remote(remote)
    try:
        wanted = _find(client.manifests(), names, remote)
        return _fetch(store, client, remote, wanted, force, progress)
    finally:
        client.close()


def _find(theirs: dict[str, Manifest], names: Sequence[ModelName], remote: Remote) -> list[Manifest]:
    absent = [str(n) for n in names if str(n) not in theirs]
    if absent:
        raise ModelNotFoundError(f"remote {remote.name} has no model {', '.join(absent)}; it has: "
                                 f"{', '.join(sorted(theirs)) or 'none'}")
    return [theirs[str(n)] for n in names]


def _fetch(store: Store, client: RemoteStore, remote: Remote, wanted: list[Manifest], force: bool,
           progress: Progress | None) -> Transfer:
    check_names(store, wanted, force, ConflictError)
    sizes = {d: s for m in wanted for d, s in m.blob_sizes().items()}
    missing = {d: sizes[d] for d in sorted(missing_blobs(store, sizes))}
    free = shutil.disk_usage(store.tmp_dir).free
    if sum(missing.values()) > free:
        raise StoreError(f"pulling needs {format_bytes(sum(missing.values()))} free in the store, which has "
                         f"{format_bytes(free)}; free some space (edgeslm rm) and retry")
    for digest, size in missing.items():
        client.fetch(store, digest, size, progress)
    changed = publish_received(store, wanted, force)
    log.info("pulled %s from %s: %d blob(s) fetched", ", ".join(str(m.name) for m in wanted), remote.name, len(missing))
    return Transfer(remote.name, tuple(str(m.name) for m in wanted), tuple(changed), len(missing),
                    sum(missing.values()), len(sizes) - len(missing))


def sync(store: Store, remote: Remote, names: Sequence[ModelName] = (), *, prune: bool = False,
         progress: Progress | None = None) -> Transfer:
    """Make the store hold ``names`` (all the remote's models when empty) exactly as the remote
    does, replacing what differs; with ``prune``, remove every other stored model."""
    client = open_remote(remote)
    try:
        theirs = client.manifests()
        wanted = _find(theirs, names, remote) if names else list(theirs.values())
        done = _fetch(store, client, remote, wanted, True, progress)
    finally:
        client.close()
    removed: tuple[str, ...] = ()
    if prune:
        keep = {str(m.name) for m in wanted}
        others = [m.name for m in store.manifests() if str(m.name) not in keep]
        if others:
            store.execute_remove(store.plan_remove(others))
        removed = tuple(map(str, others))
    return Transfer(done.remote, done.models, done.changed, done.blobs_moved, done.bytes_moved,
                    done.blobs_skipped, removed)

"""The local content-addressed model store.

Layout under ``<home>/models``::

    blobs/sha256-<hex>                          model files, named by their content
    manifests/<host|_>/<namespace|_>/<model>/<tag>.json
    tmp/*.partial                               writes in flight (locked by their writer)
    store.lock                                  taken for every change of names or blobs

Readers take no lock: every manifest and blob appears under its final name by ``os.replace``
only once complete, so a reader sees the old state or the new one. Every write has one path:
its blobs are staged in locked temp files outside the lock (``stage``, ``stage_stream``: long),
then ``commit`` takes the lock to move them into place and write the manifests that name them
(short). A blob is removed only when no manifest names it, under the lock too, so a ``kill -9``
at any moment leaves at worst a stale temp file or an unnamed blob, which the sweep at open
removes.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from ..errors import IntegrityError, InvalidModelFileError, InvalidParameterError, ModelNotFoundError, StoreError
from ..formats.model_info import ModelInfo, model_info
from .atomic import TempFile, copy_hashing, iter_stale_temps, remove_path, sha256_file, write_atomic
from .folders import drop_views
from .layers import DIGEST
from .names import ModelName
from .records import (
    Arrived,
    Manifest,
    Progress,
    RemovePlan,
    Staged,
    SweepReport,
    Writer,
    now_iso,
)

log = logging.getLogger(__name__)
LOCK_TIMEOUT = 60.0  # seconds: holders keep the store lock only to name a temp file, publish or sweep


class Store:
    """The local content-addressed model store at ``root`` (``HOME/models``): blobs named by their
    sha256, manifests naming them, every write to a temp file then renamed under the store lock.
    ``Store.open(root)`` also sweeps what a dead writer left."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs_dir = root / "blobs"
        self.manifests_dir = root / "manifests"
        self.tmp_dir = root / "tmp"
        self.views_dir = root / "views"  # folder models as their runtime opens them (store.folders)
        for d in (self.blobs_dir, self.manifests_dir, self.tmp_dir, self.views_dir):
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"cannot create the store at {root}: {exc.strerror}; set EDGESLM_HOME or --home"
                ) from None
        self._lock = FileLock(str(root / "store.lock"))

    @classmethod
    def open(cls, root: Path) -> Store:
        """Open (creating if needed) the store at ``root`` and sweep what crashed writers left."""
        store = cls(root)
        store.sweep()
        return store

    @contextmanager
    def locked(self) -> Iterator[None]:
        try:
            self._lock.acquire(timeout=LOCK_TIMEOUT)
        except Timeout:
            raise StoreError(
                f"the store at {self.root} has been locked by another edgeslm process for {LOCK_TIMEOUT:g} s "
                "(its holders keep it for a moment only: is one stopped?); retry, or end that process"
            ) from None
        except OSError as exc:
            raise StoreError(f"cannot lock the store at {self.root}: {exc.strerror or exc}; is it writable?") from None
        try:
            yield
        finally:
            self._lock.release()

    # -- paths -------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        if not DIGEST.match(digest):
            raise StoreError(f"malformed blob digest {digest!r}")
        return self.blobs_dir / digest

    def gguf_path(self, manifest: Manifest, verb: str) -> Path:
        """The GGUF file of ``manifest``, for a verb that reads GGUF weights; a folder model is refused,
        and so is one with adapters (the verb would see its base alone and drop them)."""
        if manifest.adapters:
            base = manifest.source.get("base_name") or "its base"
            raise InvalidParameterError(
                f"{manifest.name} is a base model with {len(manifest.adapters)} LoRA adapter(s); {verb} reads the "
                f"base's weights alone and would drop them: {verb} {base} instead, then create the model on it again"
            )
        if manifest.layers:
            source = manifest.source.get("parent_name")
            hint = f"; {verb} its GGUF source, {source}" if source else "; give a GGUF model"
            raise InvalidParameterError(
                f"{manifest.name} is an {manifest.format.value} model and {verb} works on GGUF models{hint}"
            )
        return self.blob_path(manifest.digest)

    def model_path(self, manifest: Manifest) -> Path:
        """What a runtime opens: the GGUF blob, or a folder holding the model's files."""
        if not manifest.layers:
            return self.blob_path(manifest.digest)
        from .folders import folder_view

        return folder_view(self, manifest)

    def adapter_files(self, manifest: Manifest) -> tuple[tuple[str, float], ...]:
        """A model's LoRA adapters as a runtime takes them: (GGUF path, scale), in order."""
        return tuple((str(self.blob_path(a.digest)), a.scale) for a in manifest.adapters)

    def manifest_path(self, name: ModelName) -> Path:
        host, namespace, model, tag = name.path_parts()
        return self.manifests_dir / host / namespace / model / f"{tag}.json"

    # -- reading -----------------------------------------------------------------------------

    def _manifest_files(self) -> list[Path]:
        return sorted(self.manifests_dir.glob("*/*/*/*.json"))

    def _load(self, path: Path) -> Manifest:
        return Manifest.from_json(path.read_bytes())

    def manifests(self) -> list[Manifest]:
        """Every readable manifest, sorted by name; unreadable ones are logged (``verify`` reports them)."""
        found = []
        for path in self._manifest_files():
            try:
                found.append(self._load(path))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("skipping unreadable manifest %s: %s", path, exc)
        return sorted(found, key=lambda m: str(m.name))

    def find(self, name: ModelName) -> Manifest | None:
        path = self.manifest_path(name)
        try:
            return self._load(path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"the manifest of {name} is unreadable ({exc}); run 'edgeslm verify'") from None

    def _find_replaceable(self, name: ModelName) -> Manifest | None:
        """The manifest about to be overwritten; an unreadable one is simply replaced."""
        try:
            return self.find(name)
        except StoreError:
            return None

    def get(self, name: ModelName) -> Manifest:
        manifest = self.find(name)
        if manifest is None:
            raise ModelNotFoundError(self._not_found_message(name))
        return manifest

    def _not_found_message(self, name: ModelName) -> str:
        same_base = [str(m.name) for m in self.manifests() if m.name.base == name.base]
        if same_base:
            return f"model {name} is not in the store; tags present: {', '.join(same_base)}"
        return f"model {name} is not in the store; see 'edgeslm list', or 'edgeslm pull {name.base}'"

    # -- the one write path: stage (a locked temp file per blob), then commit under the lock -------

    def stage(self, produce: Callable[[Path], None], *, label: str) -> Staged:
        """A blob that ``produce`` writes at the temp path it is given (a tool that writes a file
        itself, like llama.cpp's quantizer), hashed and held until ``commit``; ``discard`` it otherwise."""

        def fill(tmp: TempFile) -> tuple[str, int]:
            produce(tmp.path)
            return sha256_file(tmp.path), tmp.path.stat().st_size

        return self._staged(label, fill)

    def stage_stream(self, write: Writer, *, label: str) -> Staged:
        """A blob that ``write`` streams into the temp file, returning (sha256 hex, size)."""
        return self._staged(label, lambda tmp: write(tmp.file))

    def _staged(self, label: str, fill: Callable[[TempFile], tuple[str, int]]) -> Staged:
        with self.locked():  # create and lock the temp file where the sweep cannot race us
            tmp = TempFile(self.tmp_dir, "blob")
        try:
            with _disk_errors(label):
                sha, size = fill(tmp)
                tmp.flush_to_disk()
            return Staged(tmp, f"sha256-{sha}", size)
        except BaseException:
            tmp.discard()
            raise

    def commit(self, manifests: Sequence[Manifest], staged: Iterable[Arrived] = ()) -> None:
        """Every write to the store ends here: staged blobs, then the manifests that name them, in
        one hold of the lock; refused before anything moves when a manifest names a blob that is
        neither staged nor stored. (Each rename is atomic: a kill between them leaves each model
        whole or absent.)"""
        with self.locked():
            self._commit_locked(manifests, list(staged))

    def _commit_locked(self, manifests: Sequence[Manifest], staged: Sequence[Arrived] = ()) -> None:
        new = {item.digest for item in staged}
        for m in manifests:
            missing = [d for d in m.blob_sizes() if d not in new and not self.blob_path(d).exists()]
            if missing:
                raise StoreError(f"cannot store {m.name}: blob {missing[0]} was removed meanwhile; retry")
        for item in staged:
            if self.blob_path(item.digest).exists():
                log.info("blob %s already stored; the bytes are refreshed", item.digest)
            item.commit(self.blob_path(item.digest))  # same digest, same bytes: this also repairs a copy
        for m in manifests:
            previous = self._find_replaceable(m.name)
            write_atomic(self.manifest_path(m.name), m.to_json(), self.tmp_dir)
            if previous:  # drop the blobs only the replaced manifest used
                self._drop_unreferenced(set(previous.blob_sizes()) - set(m.blob_sizes()))

    # -- producers: each plans a manifest for what it staged, then commits ---------------------

    def add(
        self,
        name: ModelName,
        write: Writer,
        *,
        label: str,
        source: Mapping[str, str],
        expected_sha256: str | None = None,
    ) -> Manifest:
        """A GGUF model streamed by ``write`` (which returns its sha256 hex and size), stored as
        ``name``. Nothing under a final name changes unless the bytes hash as expected and pass
        the GGUF validation."""
        return self.add_staged(self.stage_stream(write, label=label), name, label=label, source=source,
                               expected_sha256=expected_sha256)

    def add_staged(
        self,
        staged: Staged,
        name: ModelName,
        *,
        label: str,
        source: Mapping[str, str],
        expected_sha256: str | None = None,
    ) -> Manifest:
        """A staged GGUF blob checked (digest, header, a model with tensors), then committed as ``name``."""
        try:
            if expected_sha256 is not None and staged.digest != f"sha256-{expected_sha256.lower()}":
                raise IntegrityError(
                    f"{label}: content sha256 is {staged.digest.removeprefix('sha256-')} but "
                    f"{expected_sha256.lower()} was expected (corrupt or tampered download); nothing was stored"
                )
            from ..formats.gguf_header import read_gguf_header

            info = model_info(read_gguf_header(staged.tmp.path, label=label))
            _require_model(info, label)
            manifest = Manifest(name, staged.digest, staged.size, now_iso(), info, dict(source))
            self.commit([manifest], [staged])
        finally:
            staged.discard()
        log.info("stored %s as %s (%d bytes)", label, name, staged.size)
        return manifest

    def add_file(
        self,
        path: Path,
        name: ModelName,
        *,
        source: Mapping[str, str],
        expected_sha256: str | None = None,
        progress: Progress | None = None,
    ) -> Manifest:
        """Import the GGUF file at ``path``: validated first, then copied, hashed and re-validated."""
        from ..formats.gguf_header import read_gguf_header

        read_gguf_header(path)  # refuse a hostile file before copying a byte of it
        return self.add(name, lambda dst: copy_hashing([path], dst, progress), label=path.name, source=source,
                        expected_sha256=expected_sha256)

    def copy(self, src: ModelName, dst: ModelName) -> Manifest:
        with self.locked():
            copied = replace(self.get(src), name=dst, created=now_iso())
            self._commit_locked([copied])
        return copied

    def set_defaults(self, name: ModelName, defaults: Mapping[str, Any]) -> Manifest:
        """Give ``name`` a system prompt and parameters (its bytes are unchanged)."""
        with self.locked():
            updated = replace(self.get(name), defaults=dict(defaults))
            self._commit_locked([updated])
        return updated

    # -- removing ----------------------------------------------------------------------------

    def plan_remove(self, names: Iterable[ModelName]) -> RemovePlan:
        targets = {str(n): self.get(n) for n in names}
        kept = _referenced(m for m in self.manifests() if str(m.name) not in targets)
        blobs: dict[str, int] = {}
        for m in targets.values():
            blobs.update((digest, size) for digest, size in m.blob_sizes().items() if digest not in kept)
        return RemovePlan(tuple(targets.values()), tuple(blobs), sum(blobs.values()))

    def execute_remove(self, plan: RemovePlan) -> int:
        """Remove the plan's manifests, then every blob of theirs that no manifest names now.
        Returns the bytes freed (recomputed under the lock, so a concurrent ``cp`` is respected)."""
        with self.locked():
            for m in plan.manifests:
                path = self.manifest_path(m.name)
                with suppress(FileNotFoundError):
                    path.unlink()
                self._prune_dirs(path.parent)
            self._drop_views()
            return self._drop_unreferenced(d for m in plan.manifests for d in m.blob_sizes())

    def _drop_unreferenced(self, digests: Iterable[str]) -> int:
        """Delete those of ``digests`` that no manifest names. Caller holds the lock."""
        digests = set(digests)
        if not digests:
            return 0
        referenced = _referenced(self.manifests())
        freed = 0
        for digest in set(digests) - referenced:
            blob = self.blob_path(digest)
            with suppress(FileNotFoundError):
                size = blob.stat().st_size
                blob.unlink()
                freed += size
                log.info("removed blob %s (%d bytes)", digest, size)
        return freed

    def _drop_views(self) -> None:
        drop_views(self, self.manifests())

    def _prune_dirs(self, directory: Path) -> None:
        while directory != self.manifests_dir and directory.is_relative_to(self.manifests_dir):
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent

    # -- upkeep ------------------------------------------------------------------------------

    def sweep(self) -> SweepReport:
        """Remove temp files whose writer is gone and blobs that no manifest names."""
        with self.locked():
            stale = tuple(iter_stale_temps(self.tmp_dir))
            for path in stale:
                remove_path(path)
                log.debug("removed stale temp file %s", path.name)  # verify reports them; never mid-reply
            named = {p.name for p in self.blobs_dir.iterdir() if DIGEST.match(p.name)}
            manifests = self.manifests()
            orphans = tuple(sorted(named - _referenced(manifests)))
            self._drop_unreferenced(orphans)
            drop_views(self, manifests)
        return SweepReport(stale, orphans)


_DISK_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


@contextmanager
def _disk_errors(label: str) -> Iterator[None]:
    """A full disk (or a file-size limit) while writing a blob is a store error, not a crash."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _DISK_FULL:
            raise
        raise StoreError(
            f"cannot store {label}: {exc.strerror}; free some space (or raise the limit) and retry; nothing was stored"
        ) from None


def _referenced(manifests: Iterable[Manifest]) -> set[str]:
    return {digest for m in manifests for digest in m.blob_sizes()}


def _require_model(info: ModelInfo, label: str) -> None:
    if info.architecture == "unknown":
        raise InvalidModelFileError(
            f"{label} is a GGUF file but not a model: it has no 'general.architecture' key; "
            "only model files can be stored"
        )
    if not info.n_tensors:
        raise InvalidModelFileError(f"{label} is a GGUF file with no tensors; only model files can be stored")

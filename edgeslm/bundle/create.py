"""Writing a bundle: the index, its signature, the manifests, then the blobs, streamed from the
store (a blob is read in chunks and its digest checked on the way: a damaged store blob is never
sealed). The archive appears under its name only when complete."""

from __future__ import annotations

import hashlib
import io
import logging
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..errors import IntegrityError, OutputFileError
from ..store import ModelName, Store
from ..store.atomic import TempFile
from ..store.records import now_iso
from ..version import __version__
from .layout import INDEX, SIGNATURE, Index, blob_member, manifest_member
from .signing import sign

log = logging.getLogger(__name__)
Progress = Callable[[int], None]  # bytes written


@dataclass(frozen=True)
class BundleSummary:
    path: Path
    models: tuple[str, ...]
    blobs: int
    bytes: int
    signed: bool


class _Hashing(io.RawIOBase):
    """A blob read for the archive, hashed as it goes."""

    def __init__(self, fp: BinaryIO, progress: Progress | None) -> None:
        self.fp, self.sha, self.progress = fp, hashlib.sha256(), progress

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = self.fp.readinto(buffer)  # type: ignore[attr-defined]
        self.sha.update(buffer[:n])
        if self.progress:
            self.progress(n)
        return int(n)


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0  # the same models make the same archive
    return info


def create_bundle(
    store: Store, names: Iterable[ModelName], out: Path, *, key: Path | None = None, progress: Progress | None = None
) -> BundleSummary:
    manifests = list({str(m.name): m for m in (store.get(n) for n in names)}.values())
    raw = {manifest_member(m.name): m.to_json() for m in manifests}
    blobs: dict[str, int] = {}
    for m in manifests:
        blobs.update(m.blob_sizes())
    index = Index(__version__, now_iso(), tuple(str(m.name) for m in manifests),
                  {p: (hashlib.sha256(b).hexdigest(), len(b)) for p, b in raw.items()}, blobs)
    index_bytes = index.to_bytes()
    signature = sign(key, index_bytes) if key is not None else None
    if out.is_dir():
        raise OutputFileError(f"{out} is a folder; give the bundle's file name, e.g. {out / 'models.eslm'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = TempFile(out.parent, f".{out.name}")
    except OSError as exc:
        raise OutputFileError(f"cannot write {out}: {exc.strerror}") from None
    with tmp:
        with tarfile.open(fileobj=tmp.file, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(_info(INDEX, len(index_bytes)), io.BytesIO(index_bytes))
            if signature is not None:
                tar.addfile(_info(SIGNATURE, len(signature)), io.BytesIO(signature))
            for path, data in raw.items():
                tar.addfile(_info(path, len(data)), io.BytesIO(data))
            for digest, size in blobs.items():
                _add_blob(tar, store, digest, size, progress)
        tmp.commit(out)
    log.info("wrote %s: %d model(s), %d blob(s)", out, len(manifests), len(blobs))
    return BundleSummary(out, index.models, len(blobs), out.stat().st_size, signature is not None)


def _add_blob(tar: tarfile.TarFile, store: Store, digest: str, size: int, progress: Progress | None) -> None:
    try:
        with open(store.blob_path(digest), "rb") as fp:
            reader = _Hashing(fp, progress)
            tar.addfile(_info(blob_member(digest), size), io.BufferedReader(reader, 2**20))
    except OSError as exc:  # missing, or shorter than its manifest says
        raise IntegrityError(
            f"blob {digest} cannot be read whole from the store ({exc}); run 'edgeslm verify'"
        ) from None
    if "sha256-" + reader.sha.hexdigest() != digest:
        raise IntegrityError(f"blob {digest} in the store does not match its digest; run 'edgeslm verify'")

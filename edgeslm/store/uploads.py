"""Files a client uploads before ``/api/create`` names them (Ollama's ``POST /api/blobs/sha256:…``).

They wait in ``<store>/uploads/sha256-<hex>``, apart from the blobs (a blob lives only while a
manifest names it; an upload before any does): written through a locked temp file, hashed as they
arrive and kept only if the content has the digest the client promised. ``create`` copies what it
uses into the store; an upload is removed a day after it last arrived. A push (``Partial``)
arrives in resumable pieces, and its files become blobs when the push publishes its manifests.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import time
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from ..errors import CapacityError, IntegrityError, InvalidParameterError
from .atomic import TempFile, fsync_dir
from .layers import DIGEST
from .registry import Store

log = logging.getLogger(__name__)
UPLOAD_TTL = 24 * 3600.0  # seconds an upload is kept
PARTIAL = ".partial"  # a file still arriving (resumable)


def parse_digest(text: str) -> str:
    """Ollama's ``sha256:<hex>`` (or the store's ``sha256-<hex>``) as the store spells it."""
    digest = "sha256-" + text.removeprefix("sha256:").removeprefix("sha256-")
    if not DIGEST.match(digest):
        raise InvalidParameterError(f"{text[:80]!r} is not a digest; give sha256:<64 hex digits>")
    return digest


def uploads_dir(store: Store) -> Path:
    path = store.root / "uploads"
    path.mkdir(exist_ok=True)
    return path


def find_file(store: Store, digest: str) -> Path | None:
    """The content of ``digest`` if this store holds it: a blob, or an upload."""
    for path in (store.blob_path(digest), uploads_dir(store) / digest):
        if path.is_file():
            return path
    return None


class Upload:
    """One upload in flight: ``write`` each chunk, then ``finish`` (or ``discard``)."""

    def __init__(self, store: Store, digest: str) -> None:
        self.store, self.digest = store, digest
        with store.locked():
            self.tmp = TempFile(store.tmp_dir, "upload")
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.tmp.file.write(chunk)
        self.hash.update(chunk)
        self.size += len(chunk)

    def finish(self) -> Path:
        actual = "sha256-" + self.hash.hexdigest()
        if actual != self.digest:
            raise IntegrityError(f"the upload hashes to {actual}, not {self.digest}; nothing was kept")
        path = uploads_dir(self.store) / self.digest
        self.tmp.commit(path)
        log.info("received upload %s (%d bytes)", self.digest, self.size)
        return path

    def discard(self) -> None:
        self.tmp.discard()


class Partial:
    """A file arriving in pieces (a push to this server, a pull from a remote), kept across
    interruptions as ``uploads/<digest>.partial``: bytes are only ever appended at its end, and
    once ``size`` bytes are there the whole is hashed and kept only if it has ``digest``.

    One transfer of a digest at a time: the file is locked while open (a second gets a
    ``CapacityError``); ``offset`` is where the next byte goes, what a resuming sender asks.
    """

    def __init__(self, store: Store, digest: str, size: int) -> None:
        if size < 0:
            raise InvalidParameterError(f"a file of {size} bytes cannot be uploaded")
        self.store, self.digest, self.size = store, digest, size
        self.path = partial_path(store, digest)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CapacityError(f"{digest} is being transferred by another request; retry when it ends") from None
        self.file = os.fdopen(fd, "ab")
        self.offset = os.fstat(fd).st_size
        self.hash = hashlib.sha256()  # of the bytes so far: the whole is checked without reading it again
        if self.offset > size:  # a file of another size was announced before: start again
            self.restart()
        elif self.offset:
            with open(self.path, "rb") as fp:  # what an earlier try left
                while chunk := fp.read(1 << 20):
                    self.hash.update(chunk)

    def restart(self) -> None:
        self.file.truncate(0)
        self.offset = 0
        self.hash = hashlib.sha256()

    def write(self, chunk: bytes) -> None:
        if self.offset + len(chunk) > self.size:
            raise InvalidParameterError(f"more than the {self.size:,} bytes announced for {self.digest} arrived; "
                                        "nothing was kept")
        self.file.write(chunk)
        self.hash.update(chunk)
        self.offset += len(chunk)

    @property
    def complete(self) -> bool:
        return self.offset == self.size

    def finish(self) -> Path:
        """Check the whole file's digest and keep it as an upload (else remove it and raise)."""
        self.file.flush()
        os.fsync(self.file.fileno())
        actual = "sha256-" + self.hash.hexdigest()
        if actual != self.digest:
            self.path.unlink(missing_ok=True)
            raise IntegrityError(f"the bytes received hash to {actual}, not {self.digest}; nothing was kept")
        dest = uploads_dir(self.store) / self.digest
        os.replace(self.path, dest)
        fsync_dir(dest.parent)
        log.info("received %s (%d bytes)", self.digest, self.size)
        return dest

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> Partial:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def partial_path(store: Store, digest: str) -> Path:
    return uploads_dir(store) / (digest + PARTIAL)


def partial_offset(store: Store, digest: str) -> int:
    """Bytes of ``digest`` already received (0 when none)."""
    try:
        return partial_path(store, digest).stat().st_size
    except FileNotFoundError:
        return 0


@dataclass(frozen=True)
class Received:
    """An upload checked on arrival, ready for ``Store.commit`` (moved, not copied)."""

    path: Path
    digest: str

    def commit(self, dest: Path) -> None:
        os.replace(self.path, dest)
        fsync_dir(dest.parent)


def received(store: Store, digests: Iterable[str]) -> list[Received]:
    """The uploads among ``digests`` that the store does not hold as blobs yet."""
    out = []
    for digest in digests:
        path = uploads_dir(store) / digest
        if not store.blob_path(digest).exists() and path.is_file():
            out.append(Received(path, digest))
    return out


def sweep_uploads(store: Store, now: float | None = None) -> int:
    """Remove uploads (and partial ones) older than ``UPLOAD_TTL``, and anything else there; the number removed."""
    now = time.time() if now is None else now
    removed = 0
    for path in uploads_dir(store).iterdir():
        with suppress(FileNotFoundError, IsADirectoryError, PermissionError):
            known = DIGEST.match(path.name.removesuffix(PARTIAL))
            if now - path.stat().st_mtime > UPLOAD_TTL or not known:
                os.unlink(path)
                removed += 1
    return removed

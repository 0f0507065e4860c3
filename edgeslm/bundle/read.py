"""Reading a bundle as it streams: every member checked against the index (a plain file, a
listed name, seen once, of the listed size, with the listed digest), the signature against a
public key, nothing listed left unseen. ``import_bundle`` writes blobs the store lacks to temp
files while checking and publishes models only after the last member has passed; a failure at
any point leaves the store as it was (the temp files go)."""

from __future__ import annotations

import hashlib
import logging
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ..errors import BundleError, InputFileError
from ..store import Store
from ..store.atomic import TempFile
from ..store.incoming import check_names, same
from ..store.records import Manifest, Staged
from ..units import format_bytes
from .layout import (
    INDEX,
    MAX_INDEX,
    MAX_SIGNATURE,
    SIGNATURE,
    Index,
    check_member,
    manifest_member,
)
from .signing import check_signature

log = logging.getLogger(__name__)
CHUNK = 2**20
# (member name, the bytes so far are written here or None to only check) -> sink for one blob
Sink = Callable[[str], IO[bytes] | None]


@dataclass
class Checked:
    index: Index
    signed: bool  # a signature was present
    key_checked: bool  # ... and matched the key given
    manifests: dict[str, bytes] = field(default_factory=dict)


def _open(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, mode="r|")
    except FileNotFoundError:
        raise InputFileError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise InputFileError(f"{path} is a folder; give a bundle file (edgeslm bundle create writes one)") from None
    except (tarfile.TarError, OSError) as exc:
        raise BundleError(f"{path} is not a bundle (not a tar archive: {exc})") from None


def _read_small(tar: tarfile.TarFile, info: tarfile.TarInfo, limit: int, what: str) -> bytes:
    check_member(info)
    if info.size > limit:
        raise BundleError(f"the bundle's {what} is {info.size:,} bytes, more than {limit:,}")
    fp = tar.extractfile(info)
    assert fp is not None
    data = fp.read(limit + 1)
    if len(data) != info.size:
        raise BundleError(f"the bundle ends inside its {what} (truncated)")
    return data


def read_bundle(
    path: Path, key: Path | None, sink: Sink, before_blobs: Callable[[Checked], None] | None = None
) -> Checked:
    """Check the whole bundle at ``path``; each blob's bytes also go to ``sink(member)``."""
    try:
        with _open(path) as tar:
            return _walk(tar, key, sink, before_blobs)
    except (tarfile.TarError, EOFError) as exc:
        raise BundleError(f"{path} is truncated or damaged ({exc}); copy it again") from None
    except OSError as exc:
        if "unexpected end of data" in str(exc):
            raise BundleError(f"{path} is truncated: it ends inside a file; copy it again") from None
        raise InputFileError(f"cannot read {path}: {exc}") from None


def _walk(
    tar: tarfile.TarFile, key: Path | None, sink: Sink, before_blobs: Callable[[Checked], None] | None
) -> Checked:
    first = tar.next()
    if first is None or first.name != INDEX:
        raise BundleError("the archive does not start with an edgeslm bundle index; it was not made by edgeslm bundle")
    index_bytes = _read_small(tar, first, MAX_INDEX, "index")
    checked = Checked(Index.from_bytes(index_bytes), signed=False, key_checked=False)
    expected = checked.index.sizes()
    seen: set[str] = {INDEX}
    member = tar.next()
    if member is not None and member.name == SIGNATURE:
        seen.add(SIGNATURE)
        signature = _read_small(tar, member, MAX_SIGNATURE, "signature")
        checked.signed = True
        member = tar.next()
        if key is not None:
            check_signature(key, index_bytes, signature)
            checked.key_checked = True
    if key is not None and not checked.key_checked:
        raise BundleError(f"the bundle is not signed, and a key ({key.name}) was given to check it against")
    announced = False
    while member is not None:
        check_member(member)
        name = member.name
        if name in seen:
            raise BundleError(f"the bundle holds {name[:200]!r} twice")
        if name not in expected:
            raise BundleError(f"the bundle holds {name[:200]!r}, which its index does not list")
        if member.size != expected[name]:
            raise BundleError(f"{name} is {member.size:,} bytes in the archive but {expected[name]:,} in the index")
        seen.add(name)
        if name in checked.index.manifests:
            data = _read_small(tar, member, member.size, "manifest")
            if hashlib.sha256(data).hexdigest() != checked.index.manifests[name][0]:
                raise BundleError(f"{name} does not match its sha256 in the index (changed after the bundle was made)")
            checked.manifests[name] = data
        else:
            if not announced and before_blobs is not None:
                before_blobs(checked)
                announced = True
            _check_blob(tar, member, sink)
        member = tar.next()
    missing = sorted(set(expected) - seen)
    if missing:
        raise BundleError(f"the bundle lacks {len(missing)} file(s) its index lists, e.g. {missing[0]} (incomplete)")
    if not announced and before_blobs is not None:
        before_blobs(checked)
    return checked


def _check_blob(tar: tarfile.TarFile, member: tarfile.TarInfo, sink: Sink) -> None:
    digest = member.name.removeprefix("blobs/")
    fp = tar.extractfile(member)
    assert fp is not None
    out = sink(digest)
    sha = hashlib.sha256()
    left = member.size
    while left > 0:
        chunk = fp.read(min(CHUNK, left))
        if not chunk:
            raise BundleError(f"the bundle ends inside {member.name} (truncated); copy it again")
        sha.update(chunk)
        if out is not None:
            out.write(chunk)
        left -= len(chunk)
    if "sha256-" + sha.hexdigest() != digest:
        raise BundleError(f"{member.name} does not match its digest: the bundle was damaged or changed")


# -- verify and import ----------------------------------------------------------------------


@dataclass(frozen=True)
class BundleReport:
    models: tuple[str, ...]
    blobs: int
    bytes: int  # of blobs
    signed: bool
    key_checked: bool
    imported: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()  # already stored with the same content
    blobs_written: int = 0
    blobs_present: int = 0


def verify_bundle(path: Path, key: Path | None = None) -> BundleReport:
    checked = read_bundle(path, key, lambda _: None)
    _parse_manifests(checked)
    i = checked.index
    return BundleReport(i.models, len(i.blobs), sum(i.blobs.values()), checked.signed, checked.key_checked)


def _parse_manifests(checked: Checked) -> list[Manifest]:
    out = []
    for member, data in checked.manifests.items():
        try:
            m = Manifest.from_json(data)
        except (ValueError, KeyError, TypeError) as exc:
            raise BundleError(f"{member} is not a valid manifest: {exc}") from None
        if manifest_member(m.name) != member:
            raise BundleError(f"{member} names the model {m.name}, which belongs elsewhere in a bundle")
        for digest, size in m.blob_sizes().items():
            if checked.index.blobs.get(digest) != size:
                raise BundleError(f"{m.name} needs blob {digest} of {size:,} bytes, which the bundle does not hold")
        out.append(m)
    return out


def import_bundle(store: Store, path: Path, key: Path | None = None, *, force: bool = False) -> BundleReport:
    """Check everything, then publish: models already stored with the same content are left as
    they are, a name stored with other content is refused unless ``force``."""
    staged: dict[str, Staged] = {}
    present: set[str] = set()
    sizes: dict[str, int] = {}

    def plan(checked: Checked) -> None:  # before the first blob byte is written: names and room
        sizes.update(checked.index.blobs)
        check_names(store, _parse_manifests(checked), force, BundleError)
        missing = {d: n for d, n in checked.index.blobs.items() if not store.blob_path(d).exists()}
        present.update(set(checked.index.blobs) - set(missing))
        free = shutil.disk_usage(store.tmp_dir).free
        if sum(missing.values()) > free:
            raise BundleError(f"importing needs {format_bytes(sum(missing.values()))} free in the store, "
                              f"which has {format_bytes(free)}; free some space (edgeslm rm) and retry")

    def sink(digest: str) -> IO[bytes] | None:
        if digest in present:
            return None  # still read and checked, not written again
        with store.locked():
            tmp = TempFile(store.tmp_dir, "blob")
        staged[digest] = Staged(tmp, digest, sizes[digest])
        return tmp.file

    try:
        checked = read_bundle(path, key, sink, before_blobs=plan)
        manifests = _parse_manifests(checked)
        check_names(store, manifests, force, BundleError)  # again: a manifest may come after the first blob
        wanted = [m for m in manifests if not same(store, m)]
        store.commit(wanted, staged.values())
    finally:
        for item in staged.values():
            item.discard()
    unchanged = tuple(str(m.name) for m in manifests if m not in wanted)
    log.info("imported %s from %s", ", ".join(str(m.name) for m in wanted) or "nothing new", path)
    i = checked.index
    return BundleReport(
        i.models, len(i.blobs), sum(i.blobs.values()), checked.signed, checked.key_checked,
        tuple(str(m.name) for m in wanted), unchanged, len(staged), len(present),
    )

"""What a bundle holds and how its members are named: the index, and the checks every member passes."""

from __future__ import annotations

import json
import re
import tarfile
from dataclasses import dataclass

from ..errors import BundleError, InvalidNameError
from ..store import ModelName, parse_name
from ..store.layers import DIGEST

FORMAT = "edgeslm-bundle"
VERSION = 1
INDEX = "edgeslm-bundle.json"
SIGNATURE = "edgeslm-bundle.sig"
MAX_INDEX = 16 * 2**20  # bytes of the index
MAX_MANIFEST = 2**20  # bytes of one manifest
MAX_SIGNATURE = 1024
MAX_ENTRIES = 100_000
MAX_BLOB = 2**40  # 1 TiB: a declared size beyond this is not a model file
_MANIFEST = re.compile(
    r"manifests/[a-z0-9_][a-z0-9._-]*/[a-z0-9_][a-z0-9._-]*/[a-z0-9][a-z0-9._-]*/[a-z0-9][a-z0-9._-]*\.json\Z"
)
_HEX = re.compile(r"[0-9a-f]{64}\Z")


def manifest_member(name: ModelName) -> str:
    return "manifests/" + "/".join(name.path_parts()) + ".json"


def blob_member(digest: str) -> str:
    return "blobs/" + digest


@dataclass(frozen=True)
class Index:
    edgeslm: str  # the version that wrote it
    created: str
    models: tuple[str, ...]
    manifests: dict[str, tuple[str, int]]  # member -> (sha256 hex of its bytes, size)
    blobs: dict[str, int]  # digest -> size

    def sizes(self) -> dict[str, int]:
        """Every member the index lists, with the size it must have."""
        out = {member: size for member, (_, size) in self.manifests.items()}
        out.update((blob_member(d), size) for d, size in self.blobs.items())
        return out

    def to_bytes(self) -> bytes:
        data = {
            "format": FORMAT, "version": VERSION, "edgeslm": self.edgeslm, "created": self.created,
            "models": list(self.models),
            "manifests": [{"path": p, "sha256": h, "size": n} for p, (h, n) in self.manifests.items()],
            "blobs": [{"digest": d, "size": n} for d, n in self.blobs.items()],
        }
        return json.dumps(data, indent=1, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Index:
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError("not an edgeslm bundle index")
            if data.get("version") != VERSION:
                raise ValueError(f"bundle version {data.get('version')!r}; this edgeslm reads version {VERSION}")
            manifests = {str(m["path"]): (str(m["sha256"]), int(m["size"])) for m in data["manifests"]}
            blobs = {str(b["digest"]): int(b["size"]) for b in data["blobs"]}
            index = cls(str(data["edgeslm"]), str(data["created"]), tuple(str(n) for n in data["models"]),
                        manifests, blobs)
        except (ValueError, KeyError, TypeError) as exc:
            raise BundleError(f"the bundle's index is not valid: {exc}") from None
        index.check()
        return index

    def check(self) -> None:
        if len(self.manifests) + len(self.blobs) > MAX_ENTRIES:
            raise BundleError(f"the bundle lists more than {MAX_ENTRIES:,} files")
        for path, (sha, size) in self.manifests.items():
            if not _MANIFEST.match(path) or not _HEX.match(sha) or not 0 < size <= MAX_MANIFEST:
                raise BundleError(f"the bundle's index lists a manifest it may not hold: {path[:200]!r}")
        try:
            named: list[str] | None = sorted(manifest_member(parse_name(n)) for n in self.models)
        except InvalidNameError:
            named = None
        if named != sorted(self.manifests):
            raise BundleError("the bundle's index names models that are not the manifests it lists")
        for digest, size in self.blobs.items():
            if not DIGEST.match(digest) or not 0 <= size <= MAX_BLOB:
                raise BundleError(f"the bundle's index lists a blob it may not hold: {digest[:80]!r} of {size:,} bytes")


def check_member(info: tarfile.TarInfo) -> None:
    """A member may only be a plain file with a plain relative name (no links, devices, folders,
    absolute paths or '..')."""
    name = info.name
    if name.startswith("/") or "\\" in name or any(part in ("", ".", "..") for part in name.split("/")):
        raise BundleError(f"the bundle holds an unsafe path {name[:200]!r}; it was not made by edgeslm bundle")
    if not info.isreg():
        kind = "link" if info.issym() or info.islnk() else "folder" if info.isdir() else "special file"
        raise BundleError(f"the bundle holds a {kind} ({name[:200]!r}); a bundle holds plain files only")

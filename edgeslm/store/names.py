"""The one validator for model names, used by every entry point.

Names follow Ollama: ``[host/][namespace/]model[:tag]``, tag ``latest`` when omitted. Every
part is ASCII letters, digits, ``.``, ``_`` and ``-``, starts with a letter or digit (so no
``.``/``..`` parts) and is bounded in length, which rules out path traversal, absolute paths,
NUL and control characters and look-alike Unicode slashes. Names are case-insensitive and kept
in lower case, so two spellings never map to two manifests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import InvalidNameError

DEFAULT_TAG = "latest"
MAX_PART = 80
MAX_HOST = 253
MAX_NAME = 350

_PART = re.compile(r"[a-z0-9][a-z0-9._-]*\Z")
_HOST = re.compile(r"[a-z0-9][a-z0-9.-]*\Z")
_RULES = (
    "names look like 'model', 'model:tag', 'namespace/model:tag' or 'host/namespace/model:tag', "
    "made of ASCII letters, digits, '.', '_' and '-', each part starting with a letter or digit"
)


@dataclass(frozen=True)
class ModelName:
    model: str
    tag: str = DEFAULT_TAG
    namespace: str | None = None
    host: str | None = None

    def __str__(self) -> str:
        return f"{self.base}:{self.tag}"

    @property
    def base(self) -> str:
        return "/".join(p for p in (self.host, self.namespace, self.model) if p)

    @property
    def family(self) -> str:
        """The model whose variants this name is one of: ``m:0.5b`` for ``m:0.5b-q4_0``, ``m`` for ``m:q8_0``."""
        stem = tag_stem(self.tag)
        return f"{self.base}:{stem}" if stem else self.base

    def with_tag(self, tag: str) -> ModelName:
        return parse_name(f"{self.base}:{tag}")

    def owns(self, other: ModelName) -> bool:
        """``other`` is this name or one of its variants: ``m:latest`` and ``m:q8_0`` own every tag of
        ``m``; ``m:0.5b`` owns ``m:0.5b`` and ``m:0.5b-q4_0`` but not ``m:1.5b-q4_0``."""
        if other.base != self.base:
            return False
        stem = tag_stem(self.tag)
        return not stem or other.tag == stem or other.tag.startswith(f"{stem}-")

    def variant(self, suffix: str) -> ModelName:
        """A variant's name, as Ollama tags them: the tag's own variant suffix gives way to the new
        one. ``m:latest`` and ``m:q8_0`` -> ``m:q4_0``; ``m:0.5b`` and ``m:0.5b-q8_0`` -> ``m:0.5b-q4_0``
        (so the variants of two sizes of one model never share a name); ``m:best`` -> ``m:best-q4_0``."""
        stem = tag_stem(self.tag)
        return self.with_tag(f"{stem}-{suffix}" if stem else suffix)

    def path_parts(self) -> tuple[str, str, str, str]:
        """Where the manifest lives: '_' stands for an absent host or namespace and cannot
        collide with a real part, which must start with a letter or digit."""
        return (self.host or "_", self.namespace or "_", self.model, self.tag)


# A tag's variant suffix, as the verbs write them: a llama.cpp type (with -imat when calibrated), an
# ONNX, MLX or mixed-precision variant.
_VARIANT_TAIL = re.compile(
    r"(?:(.*)-)?((?:f32|f16|bf16|q\d\w*|iq\d\w*|tq\d\w*|mxfp4\w*)(?:-imat)?|onnx-[\w-]+|mlx-[\w-]+|mix-[\w-]+)\Z"
)


def tag_stem(tag: str) -> str:
    """What a tag names before its variant suffix: '' for ``latest`` or a bare variant (``q8_0``),
    ``0.5b`` for ``0.5b`` and ``0.5b-q4_0``."""
    if tag == DEFAULT_TAG:
        return ""
    found = _VARIANT_TAIL.match(tag)
    return tag if found is None else found.group(1) or ""


def _bad(name: str, reason: str) -> InvalidNameError:
    return InvalidNameError(f"invalid model name {name!r}: {reason}; {_RULES}")


def _check_part(name: str, part: str, what: str, pattern: re.Pattern[str], limit: int) -> None:
    if not part:
        raise _bad(name, f"the {what} is empty")
    if len(part) > limit:
        raise _bad(name, f"the {what} has {len(part)} characters; at most {limit} are allowed")
    if ".." in part:
        raise _bad(name, f"the {what} contains '..'")
    if not pattern.match(part):
        raise _bad(
            name, f"the {what} {part!r} has a character that is not allowed or does not start with a letter or digit"
        )


def parse_name(name: str, *, default_tag: str = DEFAULT_TAG) -> ModelName:
    """Validate and normalize ``name``; raise ``InvalidNameError`` naming the rule it breaks."""
    if not isinstance(name, str):
        raise InvalidNameError(f"invalid model name {name!r}: not a string")
    if len(name) > MAX_NAME:
        raise _bad(name[:40] + "...", f"it has {len(name)} characters; at most {MAX_NAME} are allowed")
    if not name.isascii() or not name.isprintable():
        raise _bad(name, "it contains a non-ASCII, control or NUL character")
    if name.startswith("/") or "\\" in name:
        raise _bad(name, "it looks like a path; to add a file, use 'edgeslm import PATH --name NAME'")
    lowered = name.strip().lower()
    base, sep, tag = lowered.rpartition(":")
    if not sep:
        base, tag = lowered, default_tag
    if ":" in base:
        raise _bad(name, "it has more than one ':'")
    _check_part(name, tag, "tag", _PART, MAX_PART)
    parts = base.split("/")
    if len(parts) > 3:
        raise _bad(name, f"it has {len(parts)} '/'-separated parts; at most 3 (host/namespace/model)")
    host = parts[0] if len(parts) == 3 else None
    namespace = parts[-2] if len(parts) >= 2 else None
    if host is not None:
        _check_part(name, host, "host", _HOST, MAX_HOST)
    if namespace is not None:
        _check_part(name, namespace, "namespace", _PART, MAX_PART)
    _check_part(name, parts[-1], "model name", _PART, MAX_PART)
    return ModelName(model=parts[-1], tag=tag, namespace=namespace, host=host)

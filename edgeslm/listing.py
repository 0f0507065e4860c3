"""``edgeslm list``: the stored models, filtered."""

from __future__ import annotations

from collections.abc import Iterable

from .formats.size_class import SizeClass
from .store import Store, parse_name
from .store.records import Manifest


def list_models(
    store: Store,
    *,
    name: str | None = None,
    size_class: SizeClass | None = None,
    max_size: int | None = None,
    family: str | None = None,
) -> list[Manifest]:
    """Stored models matching every given filter. ``name`` without a tag matches all its tags;
    ``family`` matches the architecture or the file's ``general.basename``."""
    return filter_manifests(store.manifests(), name=name, size_class=size_class, max_size=max_size, family=family)


def filter_manifests(
    manifests: Iterable[Manifest],
    *,
    name: str | None = None,
    size_class: SizeClass | None = None,
    max_size: int | None = None,
    family: str | None = None,
) -> list[Manifest]:
    wanted = parse_name(name) if name else None
    tagged = wanted is not None and name is not None and ":" in name
    out = []
    for m in manifests:
        if wanted and (m.name.base != wanted.base or (tagged and m.name.tag != wanted.tag)):
            continue
        if size_class and m.info.size_class != size_class:
            continue
        if max_size is not None and m.size > max_size:
            continue
        if family and family.lower() not in (m.info.architecture.lower(), m.info.general.get("basename", "").lower()):
            continue
        out.append(m)
    return out

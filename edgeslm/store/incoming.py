"""Models arriving from elsewhere (a bundle, a push, a pull from a remote): whether each name is
new, the same model again, or another model under a name this store already uses; which blobs
still have to come."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..errors import ConflictError, EdgeslmError, InvalidParameterError, StoreError
from .records import Manifest
from .registry import Store
from .uploads import received, uploads_dir


def same(store: Store, m: Manifest) -> bool:
    """True when the store already names ``m``'s content ``m.name``."""
    found = store.find(m.name)
    return found is not None and found.digest == m.digest and found.blob_sizes() == m.blob_sizes()


def check_names(
    store: Store, manifests: Sequence[Manifest], force: bool, error: type[EdgeslmError] = StoreError
) -> None:
    """Refuse names the store uses for other content, unless ``force``."""
    clash = [str(m.name) for m in manifests if (f := store.find(m.name)) is not None and f.digest != m.digest]
    if clash and not force:
        raise error(f"{', '.join(clash)} already name other models in this store; "
                    "remove or rename them first, or use --force to replace them")


def missing_blobs(store: Store, sizes: Mapping[str, int]) -> set[str]:
    """The digests of ``sizes`` neither stored nor arrived (as an upload) with that size."""
    out = set()
    for digest, size in sizes.items():
        paths = (store.blob_path(digest), uploads_dir(store) / digest)
        if not any(p.is_file() and p.stat().st_size == size for p in paths):
            out.add(digest)
    return out


def publish_received(store: Store, wanted: Sequence[Manifest], force: bool) -> list[str]:
    """Name ``wanted`` once every blob they need is stored or has arrived (checked, as an upload);
    the names that changed. Names used for other content are refused unless ``force``."""
    check_names(store, wanted, force, ConflictError)
    needed = {d: n for m in wanted for d, n in m.blob_sizes().items()}
    absent = missing_blobs(store, needed)
    if absent:
        raise InvalidParameterError(f"{len(absent)} blob(s) have not arrived, first {sorted(absent)[0]}; "
                                    "send them and publish again")
    changed = [m for m in wanted if not same(store, m)]
    store.commit(changed, received(store, needed))
    return [str(m.name) for m in changed]

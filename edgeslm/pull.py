"""``edgeslm pull``: bring a model into the store by name, offline first.

A name is tried, in order, as a builtin model (copied from its installed package), a
Hugging Face reference ``hf.co/ORG/REPO[:QUANT]``, and a catalogue name (resolved to its
published GGUF repository, which needs a network).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from .config import Settings, resolve_settings
from .errors import InvalidNameError, ModelNotFoundError, SourceError
from .sources.builtin import BUILTINS, BuiltinModel
from .sources.catalog import CATALOG_BY_NAME
from .sources.hub import HubRef, parse_hub_ref, pull_from_hub
from .store import ModelName, Store, parse_name
from .store.registry import Manifest

log = logging.getLogger(__name__)
Progress = Callable[[int], None]


@dataclass(frozen=True)
class PullResult:
    manifest: Manifest
    source: str  # "builtin", "huggingface"
    changed: bool  # False when the store already held these bytes under this name


def pull(
    store: Store,
    reference: str,
    settings: Settings,
    *,
    progress: Progress | None = None,
    show_hub_progress: bool = True,
) -> PullResult:
    """Resolve ``reference`` and store it; raise a clear error when nothing matches."""
    hub_ref = parse_hub_ref(reference)
    if hub_ref is not None:
        return _pull_hub(store, hub_ref, settings, show_hub_progress)
    name = parse_name(reference)
    builtin = BUILTINS.get(name.base)
    if builtin is not None:
        return pull_builtin(store, builtin, name, progress)
    entry = CATALOG_BY_NAME.get(name.base)
    if entry is not None:
        if entry.builtin:
            return pull_builtin(store, BUILTINS[entry.builtin], name, progress)
        if not entry.gguf_repo:
            raise SourceError(
                f"{entry.name} has no published GGUF repository in the catalogue; its checkpoint is "
                f"{entry.hf_repo}: convert it to GGUF, then 'edgeslm import FILE --name {entry.name}'"
            )
        ref = HubRef(entry.gguf_repo, quant=None if name.tag == "latest" else name.tag)
        return _pull_hub(store, ref, settings, show_hub_progress, name=name)
    raise ModelNotFoundError(
        f"no model named {name.base}: not builtin ({', '.join(BUILTINS)}), not in the catalogue "
        "('edgeslm catalog' lists it), and not a hub reference (hf.co/ORG/REPO[:QUANT])"
    )


def ensure_pulled(name_or_path: str, settings: Settings | None = None) -> None:
    """Pull ``name_or_path`` first when it is a builtin the store does not hold yet (offline: the
    weights come from an installed package), as ``edgeslm run`` and the server's preload do; any
    other name or a .gguf path is left to the loader to find or refuse."""
    if name_or_path.endswith(".gguf") or parse_hub_ref(name_or_path) is not None:
        return
    try:
        name = parse_name(name_or_path)
    except InvalidNameError:
        return  # the loader says what is wrong with it
    store = Store.open((settings or resolve_settings()).models_dir)
    if name.base in BUILTINS and store.find(name) is None:
        pull_builtin(store, BUILTINS[name.base], name)


def pull_builtin(store: Store, builtin: BuiltinModel, name: ModelName, progress: Progress | None = None) -> PullResult:
    """Copy a builtin model into the store, checking it against its known sha256."""
    if name.tag != "latest":
        raise ModelNotFoundError(
            f"builtin model {builtin.name} has only the tag 'latest' (it is {builtin.quantization})"
        )
    current = store.find(name)
    digest = f"sha256-{builtin.sha256}"
    if current and current.digest == digest and store.blob_path(digest).is_file():
        log.info("%s is up to date", name)
        return PullResult(current, "builtin", changed=False)
    source = {"kind": "builtin", "package": builtin.package, "quantization": builtin.quantization}
    manifest = store.add(
        name, builtin.writer(progress), label=builtin.name, source=source, expected_sha256=builtin.sha256
    )
    return PullResult(manifest, "builtin", changed=True)


def _pull_hub(
    store: Store, ref: HubRef, settings: Settings, show_progress: bool, name: ModelName | None = None
) -> PullResult:
    manifest = pull_from_hub(store, ref, settings, name=name, progress=show_progress)
    return PullResult(manifest, "huggingface", changed=True)

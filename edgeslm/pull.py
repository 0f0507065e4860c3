"""``edgeslm pull``: bring a model into the store by name, offline first.

A name is tried, in order, as a Hugging Face reference ``hf.co/ORG/REPO[:QUANT]``, a builtin
model (copied from its installed package), a catalogue entry pinned to exact bytes (from the
upstream hub, else its package-index mirror; ``sources/pinned.py``), and a catalogue name
(resolved to its published GGUF repository, which needs a network).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from .config import Settings, resolve_settings
from .errors import EdgeslmError, IntegrityError, ModelNotFoundError, OfflineError, SourceError
from .sources import package_index
from .sources.builtin import BUILTINS, BuiltinModel
from .sources.catalog import CATALOG_BY_NAME
from .sources.hub import HubRef, parse_hub_ref, pull_from_hub, pull_pinned_from_hub
from .sources.pinned import PackageIndexMirror, PinnedModel, pinned_models
from .store import ModelName, Store, parse_name
from .store.records import Manifest
from .store.resolve import ResolvedModel, from_manifest, from_path

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
    pinned = pinned_models().get(str(name))
    if pinned is not None:
        return pull_pinned(store, pinned, name, settings, progress=progress, show_hub_progress=show_hub_progress)
    tags = [m.split(":")[1] for m in pinned_models() if m.split(":")[0] == name.base]
    if tags:
        raise ModelNotFoundError(
            f"{name.base} has no tag '{name.tag}' in the catalogue; its tags are {', '.join(tags)}: "
            f"'edgeslm pull {name.base}:{tags[0]}'"
        )
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


def ensure_pulled(
    name_or_path: str,
    settings: Settings | None = None,
    *,
    fetch: bool = True,
    store: Store | None = None,
    paths: bool = True,
) -> ResolvedModel:
    """The model to load, resolved once (in ``store`` when the caller has it open): a .gguf path or
    a model folder as it is, a stored model as stored. A builtin (offline: the weights come from an
    installed package) or a pinned catalogue model the store does not hold yet is pulled first, as
    ``edgeslm run`` and the server's preload do (Ollama's run pulls too); any other name missing is
    refused with the loader's message. ``fetch=False`` (the server, on a request) pulls builtins only;
    ``paths=False`` (the server) reads every word as a name, never as a file or folder."""
    from .generation import not_found

    found = from_path(Path(name_or_path)) if paths else None
    if found is not None:
        return found
    settings = settings or resolve_settings()
    store = store or Store.open(settings.models_dir)
    manifest = pull_missing(store, name_or_path, settings, fetch=fetch)
    if manifest is None:
        raise ModelNotFoundError(not_found(store, str(parse_name(name_or_path))))
    return from_manifest(store, manifest)


def pull_missing(store: Store, name: str, settings: Settings, *, fetch: bool = True) -> Manifest | None:
    """The stored manifest of ``name``, a builtin or a pinned catalogue model pulled first when the
    store lacks it (``fetch=False``: builtins only); None when it is neither stored nor pullable."""
    wanted = parse_name(name)
    manifest = store.find(wanted)
    if manifest is not None or parse_hub_ref(name) is not None:
        return manifest
    if wanted.base in BUILTINS:
        return pull_builtin(store, BUILTINS[wanted.base], wanted).manifest
    if fetch and (pinned := pinned_models().get(str(wanted))) is not None:
        log.info("%s is not in the store: pulling it", wanted)
        return pull_pinned(store, pinned, wanted, settings, show_hub_progress=False).manifest
    return None


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


def pull_pinned(
    store: Store,
    pinned: PinnedModel,
    name: ModelName,
    settings: Settings,
    *,
    progress: Progress | None = None,
    show_hub_progress: bool = True,
) -> PullResult:
    """A catalogue entry pinned to bytes: from the upstream hub when it answers, else from each
    mirror in turn; stored only with the pinned sha256. Raise naming every source's failure."""
    current = store.find(name)
    if current is not None and _up_to_date(store, current, pinned):
        log.info("%s is up to date", name)
        return PullResult(current, "catalogue", changed=False)
    if settings.offline:
        raise OfflineError(
            f"offline mode is on (EDGESLM_OFFLINE or HF_HUB_OFFLINE); {name} comes from hf.co/{pinned.upstream.repo} "
            "or its package-index mirror: turn offline mode off to pull it"
        )
    if pinned.converted:
        return _pull_checkpoint(store, pinned, name, settings)
    failures: list[tuple[str, EdgeslmError]] = []
    try:
        manifest = pull_pinned_from_hub(
            store, pinned.upstream, name, settings, source=pinned.provenance() | {"mirror": "hub"},
            progress=show_hub_progress,
        )
        return PullResult(manifest, "huggingface", changed=True)
    except (SourceError, IntegrityError, ModelNotFoundError) as exc:
        log.info("hf.co/%s: %s; trying its mirrors", pinned.upstream.repo, exc)
        failures.append((f"hf.co/{pinned.upstream.repo}", exc))
    for mirror in pinned.mirrors:
        try:
            return PullResult(_pull_mirror(store, pinned, mirror, name, settings, progress), mirror.kind.value, True)
        except (SourceError, IntegrityError) as exc:
            log.warning("%s: %s", mirror.describe(), exc)
            failures.append((mirror.describe(), exc))
    raise _none_answered(name, failures)


def _none_answered(name: ModelName, failures: list[tuple[str, EdgeslmError]]) -> EdgeslmError:
    said = "; ".join(f"{where}: {exc}" for where, exc in failures)
    kind = IntegrityError if any(isinstance(exc, IntegrityError) for _, exc in failures) else SourceError
    return kind(f"cannot pull {name} from any of its {len(failures)} sources ({said})")


def _up_to_date(store: Store, current: Manifest, pinned: PinnedModel) -> bool:
    """The store holds the pinned file, or (a checkpoint) what was converted from its pinned weights."""
    if pinned.converted:  # converted from the pinned weights, to the pinned type
        return (current.source.get("catalogue") == pinned.name
                and current.source.get(f"sha256:{pinned.upstream.file}") == pinned.upstream.sha256
                and (current.info.file_type or "").upper() == pinned.quantization.upper())
    digest = f"sha256-{pinned.upstream.sha256}"
    return current.digest == digest and store.blob_path(digest).is_file()


def _pull_checkpoint(store: Store, pinned: PinnedModel, name: ModelName, settings: Settings) -> PullResult:
    """A pinned Hugging Face folder from the hub, else its mirrors; each file checked, then converted."""
    from .convert import convert
    from .sources import checkpoint_folder

    downloads = store.root / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    u = pinned.upstream
    cache = package_index.cache_dir(downloads, u.sha256)
    tries: list[tuple[str, Callable[[Path], None]]] = [
        (f"hf.co/{u.repo}", partial(checkpoint_folder.from_hub, u, settings, downloads))]
    tries += [(m.describe(), partial(checkpoint_folder.from_mirror, u, m, cache, timeout=settings.fetch_timeout))
              for m in pinned.mirrors]
    failures: list[tuple[str, EdgeslmError]] = []
    for where, fetch in tries:
        with tempfile.TemporaryDirectory(dir=downloads, prefix=".checkpoint-") as tmp:
            try:
                fetch(Path(tmp))
            except (SourceError, IntegrityError, ModelNotFoundError) as exc:
                log.info("%s: %s", where, exc)
                failures.append((where, exc))
                continue
            lineage = pinned.provenance() | {"mirror": where, "folder": f"hf.co/{u.repo}@{u.revision}"}
            outtype = pinned.quantization.lower()
            manifest = convert(store, Path(tmp), outtype=outtype, name=str(name), lineage=lineage).manifest
        package_index.drop_cache(cache)
        return PullResult(manifest, "huggingface" if where.startswith("hf.co/") else "package-index", True)
    raise _none_answered(name, failures)


def _pull_mirror(
    store: Store,
    pinned: PinnedModel,
    mirror: PackageIndexMirror,
    name: ModelName,
    settings: Settings,
    progress: Progress | None,
) -> Manifest:
    cache = package_index.cache_dir(store.root / "downloads", pinned.upstream.sha256)
    wheels = package_index.fetch_wheels(mirror, cache, timeout=settings.fetch_timeout, progress=progress)
    manifest = store.add(
        name,
        lambda dst: package_index.join_parts(wheels, mirror.parts, dst),
        label=f"{name} from {mirror.describe()}",
        source=pinned.provenance() | {"mirror": mirror.describe()},
        expected_sha256=pinned.upstream.sha256,
    )
    package_index.drop_cache(cache)
    return manifest


def _pull_hub(
    store: Store, ref: HubRef, settings: Settings, show_progress: bool, name: ModelName | None = None
) -> PullResult:
    manifest = pull_from_hub(store, ref, settings, name=name, progress=show_progress)
    return PullResult(manifest, "huggingface", changed=True)

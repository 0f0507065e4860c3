"""Pull GGUF files from the Hugging Face Hub: ``hf.co/ORG/REPO[:QUANT]``, as Ollama spells it.

``huggingface_hub`` does the transfer (resume from its ``.incomplete`` file, progress, auth);
edgeslm chooses the file, checks the bytes against the hub's LFS sha256 and publishes them
into the store atomically. The download cache lives inside the store's home so that the
final copy never crosses a filesystem.
"""

from __future__ import annotations

import logging
import re
import shutil
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..config import Settings
from ..errors import ModelNotFoundError, OfflineError, SourceError
from ..store import ModelName, Store
from ..store.records import Manifest
from .pinned import UpstreamFile

log = logging.getLogger(__name__)

HUB_PREFIXES = ("hf.co/", "huggingface.co/", "https://huggingface.co/", "hf://")
DEFAULT_QUANT_PREFERENCE = ("Q4_K_M", "Q4_0", "Q5_K_M", "Q8_0")  # Ollama's default first
_REPO_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}\Z")
_QUANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,40}\Z")
_SPLIT = re.compile(r"-\d{5}-of-\d{5}\.gguf\Z", re.IGNORECASE)


@dataclass(frozen=True)
class HubRef:
    repo_id: str  # "ORG/REPO"
    quant: str | None = None
    revision: str = "main"

    @property
    def store_name(self) -> ModelName:
        org, repo = self.repo_id.lower().split("/")
        return ModelName(model=repo, tag=(self.quant or "latest").lower(), namespace=org, host="hf.co")


def parse_hub_ref(text: str) -> HubRef | None:
    """``hf.co/ORG/REPO[:QUANT]`` -> HubRef; None when ``text`` is not a hub reference."""
    prefix = next((p for p in HUB_PREFIXES if text.lower().startswith(p)), None)
    if prefix is None:
        return None
    rest = text[len(prefix) :]
    repo, _, quant = rest.partition(":")
    parts = repo.split("/")
    if len(parts) != 2 or not all(_REPO_PART.match(p) and ".." not in p for p in parts):
        raise ModelNotFoundError(f"'{text}' is not a hub reference; write hf.co/ORG/REPO or hf.co/ORG/REPO:QUANT")
    if quant and not _QUANT.match(quant):
        raise ModelNotFoundError(f"'{quant}' in '{text}' is not a quantization name (e.g. Q4_K_M)")
    return HubRef("/".join(parts), quant or None)


def choose_gguf(paths: Sequence[str], quant: str | None, repo_id: str) -> str:
    """Pick the file to pull: the one naming ``quant``, or the only one, or Ollama's default."""
    ggufs = [p for p in paths if p.lower().endswith(".gguf") and "mmproj" not in p.lower()]
    if not ggufs:
        raise ModelNotFoundError(f"{repo_id} has no .gguf file; convert its checkpoint instead")
    if quant:
        pattern = re.compile(rf"(^|[^a-z0-9]){re.escape(quant.lower())}([^a-z0-9]|$)")
        chosen = [p for p in ggufs if pattern.search(Path(p).name.lower())]
    elif len(ggufs) == 1:
        chosen = ggufs
    else:
        chosen = next(
            (
                [p for p in ggufs if q.lower() in p.lower()]
                for q in DEFAULT_QUANT_PREFERENCE
                if any(q.lower() in p.lower() for p in ggufs)
            ),
            [],
        )
    if len(chosen) != 1:
        what = f"one file for {quant}" if quant else "a default file"
        raise ModelNotFoundError(
            f"cannot choose {what} in {repo_id}; its GGUF files are: {', '.join(sorted(ggufs))}; "
            f"name one as hf.co/{repo_id}:QUANT"
        )
    if _SPLIT.search(chosen[0]):
        raise SourceError(f"{chosen[0]} is one part of a split GGUF; split files are not supported yet")
    return chosen[0]


def _hub_errors() -> tuple[Any, ...]:
    from huggingface_hub import errors

    return errors.RepositoryNotFoundError, errors.RevisionNotFoundError, errors.EntryNotFoundError


def _translate(exc: Exception, ref: HubRef, settings: Settings) -> Exception:
    from huggingface_hub import errors

    if isinstance(exc, errors.LocalEntryNotFoundError):  # the hub did not answer, and nothing is cached
        return OfflineError(
            f"hf.co/{ref.repo_id}: {settings.hf_endpoint} did not answer in time; "
            "builtin models and 'edgeslm import FILE' still work"
        )
    if isinstance(exc, _hub_errors()):
        return ModelNotFoundError(
            f"hf.co/{ref.repo_id}: not found on {settings.hf_endpoint} ({type(exc).__name__}); "
            "check the name, or set HF_TOKEN for a gated or private repo"
        )
    if isinstance(exc, errors.HfHubHTTPError):
        return SourceError(f"hf.co/{ref.repo_id}: the hub answered with an error: {exc}")
    return OfflineError(
        f"cannot reach {settings.hf_endpoint} to pull hf.co/{ref.repo_id} ({type(exc).__name__}); "
        "edgeslm is offline: builtin models ('edgeslm pull smollm2-135m-instruct') and 'edgeslm import FILE' still work"
    )


def check_reachable(settings: Settings, ref: HubRef, timeout: float = 5.0) -> None:
    """Fail fast when the hub cannot be reached at all: huggingface_hub would retry for ~25 s.

    A plain TCP connect to the endpoint; skipped when a proxy is configured (the proxy is
    what must be reached then, and huggingface_hub knows how).
    """
    if settings.uses_proxy:
        return
    url = urlsplit(settings.hf_endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "", port), timeout=timeout).close()
    except OSError as exc:
        raise _translate(exc, ref, settings) from exc


def pull_from_hub(
    store: Store, ref: HubRef, settings: Settings, *, name: ModelName | None = None, progress: bool = True
) -> Manifest:
    if settings.offline:
        raise OfflineError(f"offline mode is on (EDGESLM_OFFLINE or HF_HUB_OFFLINE); cannot pull hf.co/{ref.repo_id}")
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils.tqdm import disable_progress_bars

    if not progress:
        disable_progress_bars()

    check_reachable(settings, ref)
    api = HfApi(endpoint=settings.hf_endpoint, token=settings.hf_token or False)
    try:
        entries = [
            e for e in api.list_repo_tree(ref.repo_id, recursive=True, revision=ref.revision) if isinstance(e, RepoFile)
        ]
        files = {e.path: e for e in entries}
        chosen = files[choose_gguf(list(files), ref.quant, ref.repo_id)]
    except (ModelNotFoundError, SourceError):
        raise
    except Exception as exc:  # noqa: BLE001 - every transport or hub failure becomes one of ours
        raise _translate(exc, ref, settings) from exc
    cache = store.root / "downloads"
    local = download_file(ref, chosen.path, settings, cache)
    sha = chosen.lfs.sha256 if chosen.lfs else None
    if sha is None:
        log.warning("%s is not an LFS file; the hub gives no sha256 to check it against", chosen.path)
    source = {
        "kind": "huggingface",
        "repo": ref.repo_id,
        "file": chosen.path,
        "revision": ref.revision,
        "endpoint": settings.hf_endpoint,
    }
    try:
        return store.add_file(local, name or ref.store_name, source=source, expected_sha256=sha)
    finally:
        # Stored or refused, this repo's download cache is done with (a failed transfer above
        # keeps it, so the next pull resumes); other pulls keep theirs.
        drop_download_cache(cache, ref.repo_id)


def pull_pinned_from_hub(
    store: Store,
    upstream: UpstreamFile,
    name: ModelName,
    settings: Settings,
    *,
    source: Mapping[str, str],
    progress: bool = True,
) -> Manifest:
    """One pinned file at its pinned revision; stored only if its sha256 is the pinned one."""
    ref = HubRef(upstream.repo, revision=upstream.revision)
    if settings.offline:
        raise OfflineError(f"offline mode is on (EDGESLM_OFFLINE or HF_HUB_OFFLINE); hf.co/{ref.repo_id} not tried")
    from huggingface_hub.utils.tqdm import disable_progress_bars

    if not progress:
        disable_progress_bars()
    check_reachable(settings, ref)
    cache = store.root / "downloads"
    local = download_file(ref, upstream.file, settings, cache)
    try:
        return store.add_file(local, name, source=source, expected_sha256=upstream.sha256)
    finally:
        drop_download_cache(cache, ref.repo_id)


def download_file(ref: HubRef, file: str, settings: Settings, cache: Path) -> Path:
    """One file of ``ref`` at its revision through huggingface_hub (resumes its ``.incomplete``)."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(
            hf_hub_download(
                ref.repo_id,
                file,
                revision=ref.revision,
                cache_dir=cache,
                endpoint=settings.hf_endpoint,
                token=settings.hf_token or False,
                etag_timeout=settings.fetch_timeout,
            )
        )
    except Exception as exc:  # noqa: BLE001 - every transport or hub failure becomes one of ours
        raise _translate(exc, ref, settings) from exc


def drop_download_cache(cache: Path, repo_id: str) -> None:
    """huggingface_hub's cache of one repo (files and locks) in ``cache``."""
    folder = f"models--{repo_id.replace('/', '--')}"
    for leftover in (cache / folder, cache / ".locks" / folder):
        shutil.rmtree(leftover, ignore_errors=True)


CHECKPOINT_FILES = re.compile(
    r"(config\.json|generation_config\.json|tokenizer\.json|tokenizer_config\.json|special_tokens_map\.json"
    r"|tokenizer\.model|model\.safetensors\.index\.json|[^/]+\.safetensors)\Z"
)


def download_checkpoint(ref: HubRef, settings: Settings, cache: Path) -> tuple[Path, str]:
    """A Hugging Face checkpoint's files (config, safetensors, tokenizer; never pickles) into
    ``cache``; return the local folder and the revision."""
    if settings.offline:
        raise OfflineError(f"offline mode is on (EDGESLM_OFFLINE or HF_HUB_OFFLINE); cannot fetch hf.co/{ref.repo_id}")
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    check_reachable(settings, ref)
    api = HfApi(endpoint=settings.hf_endpoint, token=settings.hf_token or False)
    try:
        wanted = [
            e.path
            for e in api.list_repo_tree(ref.repo_id, recursive=False, revision=ref.revision)
            if isinstance(e, RepoFile) and CHECKPOINT_FILES.match(e.path)
        ]
        if "config.json" not in wanted:
            raise ModelNotFoundError(f"hf.co/{ref.repo_id} has no config.json: not a Hugging Face model checkpoint")
    except (ModelNotFoundError, SourceError):
        raise
    except Exception as exc:  # noqa: BLE001 - every transport or hub failure becomes one of ours
        raise _translate(exc, ref, settings) from exc
    local = [download_file(ref, path, settings, cache) for path in wanted]
    return local[0].parent, ref.revision

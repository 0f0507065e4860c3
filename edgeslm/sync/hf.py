"""A Hugging Face model repo as a remote (``hf://ORG/REPO``), through ``huggingface_hub``.

The repo holds a store's layout: ``manifests/<host>/<namespace>/<model>/<tag>.json`` and
``blobs/sha256-<hex>`` (LFS files, whose LFS sha256 is their name). A push adds the missing blobs
and the manifests in one commit (the hub's own upload protocol: a blob it holds is not sent
again); a pull downloads blobs with the hub's resume and checks each against its name.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..bundle.layout import blob_member, manifest_member
from ..config import resolve_settings
from ..errors import (
    AuthenticationError,
    IntegrityError,
    InvalidModelFileError,
    ModelNotFoundError,
    OfflineError,
    SourceError,
)
from ..store import Store
from ..store.atomic import fsync_dir, sha256_file
from ..store.layers import DIGEST
from ..store.records import Manifest
from ..store.uploads import uploads_dir
from .remotes import Progress, Remote

log = logging.getLogger(__name__)
MAX_MANIFEST = 4 * 2**20


class HfRemote:
    def __init__(self, remote: Remote) -> None:
        from huggingface_hub import HfApi

        self.remote, self.repo = remote, remote.repo_id
        self.settings = resolve_settings()
        self.token = remote.key() or self.settings.hf_token or False
        self.api = HfApi(endpoint=self.settings.hf_endpoint, token=self.token)
        self.blobs: dict[str, int] = {}
        self.files: dict[str, Any] = {}
        self.queued: dict[str, Path] = {}

    def close(self) -> None:
        pass

    def _translate(self, exc: Exception) -> Exception:
        from huggingface_hub import errors

        where = f"hf://{self.repo} on {self.settings.hf_endpoint}"
        if isinstance(exc, errors.RepositoryNotFoundError):
            return ModelNotFoundError(f"{where} does not exist (or the token may not see it); check the name")
        if isinstance(exc, errors.HfHubHTTPError):
            status = exc.response.status_code if exc.response is not None else 0
            if status in (401, 403):
                return AuthenticationError(f"{where} refused the token ({status}); give one with write access: "
                                           f"edgeslm remote add {self.remote.name} hf://{self.repo} --key-file FILE "
                                           "--force")
            return SourceError(f"{where} answered with an error: {str(exc)[:300]}")
        if isinstance(exc, OSError) or "Connect" in type(exc).__name__ or "Timeout" in type(exc).__name__:
            return OfflineError(f"cannot reach {where} ({type(exc).__name__}); check the network or HF_ENDPOINT")
        cause = exc.__cause__ or exc
        return SourceError(f"{where}: {str(exc)[:200]} ({type(cause).__name__}: {str(cause)[:200]})")

    def _tree(self) -> dict[str, Any]:
        from huggingface_hub.hf_api import RepoFile

        try:
            entries = list(self.api.list_repo_tree(self.repo, recursive=True))
        except Exception as exc:  # noqa: BLE001 - every hub or transport failure becomes one of ours
            from huggingface_hub import errors

            if isinstance(exc, errors.RepositoryNotFoundError):
                return {}  # an empty remote: a push creates it
            raise self._translate(exc) from exc
        return {e.path: e for e in entries if isinstance(e, RepoFile)}

    def manifests(self) -> dict[str, Manifest]:
        self.files = self._tree()
        self.blobs = {p.removeprefix("blobs/"): e.size for p, e in self.files.items()
                      if p.startswith("blobs/") and DIGEST.match(p.removeprefix("blobs/"))}
        out = {}
        for path, entry in self.files.items():
            if path.startswith("manifests/") and path.endswith(".json"):
                if entry.size > MAX_MANIFEST:
                    raise InvalidModelFileError(f"hf://{self.repo}/{path} is too large to be a manifest")
                m = self._manifest(path)
                out[str(m.name)] = m
        return out

    def _download(self, path: str, cache: Path) -> Path:
        from huggingface_hub import hf_hub_download

        try:
            local = hf_hub_download(self.repo, path, cache_dir=cache, endpoint=self.settings.hf_endpoint,
                                    token=self.token)
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc) from exc
        return Path(os.path.realpath(local))

    def _manifest(self, path: str) -> Manifest:
        cache = self.settings.home / "hf-remote-cache"
        try:
            raw = self._download(path, cache).read_bytes()
        finally:
            self._drop_cache(cache)
        try:
            m = Manifest.from_json(raw)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InvalidModelFileError(f"hf://{self.repo}/{path} is not a valid manifest: {str(exc)[:200]}") from None
        if manifest_member(m.name) != path:
            raise InvalidModelFileError(f"hf://{self.repo}/{path} names the model {m.name}, which belongs elsewhere")
        return m

    def offset(self, digest: str) -> int | None:
        return None if digest in self.blobs else 0  # the hub's upload protocol resumes by itself

    def send(self, store: Store, digest: str, size: int, progress: Progress | None = None) -> None:
        self.queued[digest] = store.blob_path(digest)  # sent with the manifests, in one commit

    def publish(self, manifests: Sequence[Manifest], force: bool) -> list[str]:
        from huggingface_hub import CommitOperationAdd

        ops = [CommitOperationAdd(blob_member(d), str(p)) for d, p in self.queued.items()]
        ops += [CommitOperationAdd(manifest_member(m.name), m.to_json()) for m in manifests]
        try:
            self.api.create_repo(self.repo, exist_ok=True, private=True)
            self.api.create_commit(self.repo, ops, commit_message=f"edgeslm push: {', '.join(map(_name, manifests))}")
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc) from exc
        self.queued.clear()
        return [_name(m) for m in manifests]

    def fetch(self, store: Store, digest: str, size: int, progress: Progress | None = None) -> None:
        cache = store.root / "downloads"
        local = self._download(blob_member(digest), cache)
        try:
            actual = "sha256-" + sha256_file(local)
            if actual != digest or local.stat().st_size != size:
                raise IntegrityError(f"hf://{self.repo} sent wrong bytes for {digest} (they hash to {actual}); "
                                     "nothing was kept")
            dest = uploads_dir(store) / digest
            shutil.move(local, dest)
            fsync_dir(dest.parent)
            if progress:
                progress(size)
        finally:
            self._drop_cache(cache)

    def _drop_cache(self, cache: Path) -> None:
        """The hub's download cache of this repo; a cut download keeps its own (``.incomplete``) until then."""
        from ..sources.hub import drop_download_cache

        drop_download_cache(cache, self.repo)


def _name(m: Manifest) -> str:
    return str(m.name)

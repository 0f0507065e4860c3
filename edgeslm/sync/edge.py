"""Another ``edgeslm serve`` as a remote, over its sync routes (``serve/sync_routes.py``).

Blobs move in pieces that resume: an upload asks the server how much it holds (``HEAD``,
``Upload-Offset``) and sends from there; a download asks for ``Range: bytes=N-`` of what is
already here. A cut connection is retried from the new offset, a few times; what arrived is
checked whole against its digest before it can become a blob.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import httpx

from ..errors import (
    AuthenticationError,
    ConflictError,
    IntegrityError,
    InvalidModelFileError,
    OfflineError,
    PermissionDeniedError,
    SourceError,
)
from ..store import Store
from ..store.records import Manifest
from ..store.uploads import Partial
from .remotes import Progress, Remote

log = logging.getLogger(__name__)
CHUNK = 1 << 20
TRIES = 5  # attempts per blob, each from where the last stopped
TIMEOUT = httpx.Timeout(30.0, read=120.0, write=120.0)  # every wait has a deadline


class EdgeRemote:
    def __init__(self, remote: Remote, timeout: httpx.Timeout = TIMEOUT) -> None:
        self.remote = remote
        key = remote.key()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=remote.url, headers=headers, timeout=timeout, follow_redirects=False)

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            reply = self.http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise OfflineError(f"cannot reach remote {self.remote.name} at {self.remote.url} ({type(exc).__name__}: "
                               f"{str(exc)[:120]}); is 'edgeslm serve' running there?") from None
        if reply.status_code >= 400 and reply.status_code not in (404, 409):
            self._refused(reply)
        return reply

    def _refused(self, reply: httpx.Response) -> NoReturn:
        try:
            said = str(reply.json().get("error", ""))[:300]
        except (ValueError, AttributeError):
            said = reply.text[:300]
        said = "".join(c if c.isprintable() else "?" for c in said)
        name, code = self.remote.name, reply.status_code
        if code == 401:
            raise AuthenticationError(f"remote {name} wants a valid key ({said}); give one: edgeslm remote add {name} "
                                      f"{self.remote.url} --key-file FILE --force")
        if code == 403:
            raise PermissionDeniedError(f"remote {name} refused ({said}); pushing needs a key with the admin role, "
                                        "pulling one with the user or admin role")
        if code == 409:
            raise ConflictError(f"remote {name}: {said}")
        raise SourceError(f"remote {name} answered {code}: {said}")

    def manifests(self) -> dict[str, Manifest]:
        reply = self._call("GET", "/edgeslm/v1/manifests")
        if reply.status_code == 404:
            raise SourceError(f"{self.remote.url} is not an edgeslm server with sync routes (no /edgeslm/v1/manifests)")
        try:
            raw = reply.json()["manifests"]
            found = [Manifest.from_json(json.dumps(m).encode()) for m in raw]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            what = str(exc)[:200]
            raise InvalidModelFileError(f"remote {self.remote.name} sent an invalid manifest: {what}") from None
        return {str(m.name): m for m in found}

    def offset(self, digest: str) -> int | None:
        """None when the remote holds ``digest`` whole; else the bytes of it it has received."""
        reply = self._call("HEAD", f"/edgeslm/v1/uploads/{digest}")
        if reply.status_code == 200:
            return None
        text = reply.headers.get("Upload-Offset", "0")
        return int(text) if text.isdigit() else 0

    def send(self, store: Store, digest: str, size: int, progress: Progress | None = None) -> None:
        path = store.blob_path(digest)
        for attempt in range(1, TRIES + 1):
            offset = self.offset(digest)
            if offset is None:
                return
            if progress and attempt == 1:
                progress(offset)
            try:
                reply = self.http.post(f"/edgeslm/v1/uploads/{digest}", content=_read_from(path, offset, progress),
                                       headers={"Upload-Offset": str(offset), "Upload-Length": str(size),
                                                "Content-Type": "application/octet-stream"})
            except httpx.TransportError as exc:
                log.warning("sending %s was cut (%s); resuming (try %d of %d)", digest, exc, attempt, TRIES)
                continue
            if reply.status_code == 201:
                return
            if reply.status_code == 503:  # the server still finishes the cut request: wait for it
                time.sleep(0.2 * attempt)
            elif reply.status_code not in (202, 409):
                self._refused(reply)
        raise OfflineError(f"sending {digest} to remote {self.remote.name} was cut {TRIES} times; run the push again "
                           "to resume")

    def publish(self, manifests: Sequence[Manifest], force: bool) -> list[str]:
        body = {"manifests": [json.loads(m.to_json()) for m in manifests], "force": force}
        reply = self._call("POST", "/edgeslm/v1/publish", json=body)
        if reply.status_code != 200:
            self._refused(reply)
        return [str(n) for n in reply.json().get("published", [])]

    def fetch(self, store: Store, digest: str, size: int, progress: Progress | None = None) -> None:
        """Bring ``digest`` into the store's uploads, checked; resumes what an earlier try left."""
        with Partial(store, digest, size) as part:
            if progress:
                progress(part.offset)
            for attempt in range(1, TRIES + 1):
                if part.complete:
                    break
                try:
                    self._download(digest, part, progress)
                except httpx.TransportError as exc:
                    log.warning("fetching %s was cut (%s); resuming (try %d of %d)", digest, exc, attempt, TRIES)
            if not part.complete:
                raise OfflineError(f"fetching {digest} from remote {self.remote.name} was cut {TRIES} times; run the "
                                   "pull again to resume")
            try:
                part.finish()
            except IntegrityError as exc:
                raise IntegrityError(f"remote {self.remote.name} sent wrong bytes: {exc}") from None

    def _download(self, digest: str, part: Partial, progress: Progress | None) -> None:
        headers = {"Range": f"bytes={part.offset}-"} if part.offset else {}
        with self.http.stream("GET", f"/edgeslm/v1/blobs/{digest}", headers=headers) as reply:
            if reply.status_code >= 400:
                reply.read()
                self._refused(reply)
            if reply.status_code == 200 and part.offset:  # the server sent it all: start again
                part.restart()
            for chunk in reply.iter_bytes(CHUNK):
                part.write(chunk)
                if progress:
                    progress(len(chunk))


def _read_from(path: Path, offset: int, progress: Progress | None) -> Iterator[bytes]:
    with open(path, "rb") as fp:
        fp.seek(offset)
        while chunk := fp.read(CHUNK):
            yield chunk
            if progress:
                progress(len(chunk))

"""Responses kept for ``previous_response_id``, ``GET`` and ``DELETE /v1/responses/{id}``: one JSON
file per response under ``HOME/responses/OWNER/``, where OWNER is a digest of the API key's id (or
"local" on a server without keys), so one key never reads another's. Bounded (the oldest go past
``MAX_KEPT`` per owner) and expiring (``TTL``, as OpenAI keeps responses 30 days); written whole or
not at all. A response another key kept, one that expired and one never kept answer alike: not found."""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any

from ...errors import ResponseNotFoundError
from ...store.atomic import write_atomic

MAX_KEPT = 1000  # responses per owner
TTL = 30 * 86400.0  # seconds a response is kept
RESPONSE_ID = re.compile(r"resp_[0-9a-f]{32}\Z")


class KeptResponses:
    def __init__(self, home: Path) -> None:
        self.root = home / "responses"

    def save(self, owner: str, record: dict[str, Any]) -> None:
        folder = self._folder(owner)
        write_atomic(folder / f"{record['id']}.json", json.dumps(record).encode(), folder)
        kept = sorted(folder.glob("resp_*.json"), key=lambda p: p.stat().st_mtime)
        for old in kept[: max(0, len(kept) - MAX_KEPT)]:
            old.unlink(missing_ok=True)

    def load(self, owner: str, rid: str) -> dict[str, Any]:
        path = self._path(owner, rid)
        try:
            if time.time() - path.stat().st_mtime > TTL:
                path.unlink(missing_ok=True)
                raise FileNotFoundError
            record: dict[str, Any] = json.loads(path.read_bytes())
        except (FileNotFoundError, ValueError):
            raise ResponseNotFoundError(f"response '{rid[:80]}' not found (never kept with store, expired after "
                                        f"{TTL / 86400:.0f} days, deleted, or kept for another key)") from None
        return record

    def delete(self, owner: str, rid: str) -> None:
        self.load(owner, rid)  # not found: the same answer as a load
        self._path(owner, rid).unlink(missing_ok=True)

    def _path(self, owner: str, rid: str) -> Path:
        if not RESPONSE_ID.match(rid):
            raise ResponseNotFoundError(f"response '{rid[:80]}' not found (ids look like resp_ and 32 hex digits)")
        return self._folder(owner) / f"{rid}.json"

    def _folder(self, owner: str) -> Path:
        return self.root / hashlib.sha256(owner.encode()).hexdigest()[:24]

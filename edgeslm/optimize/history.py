"""The last optimize run of each model, kept in the store (``<store>/optimize/<hash>.json``): its
constraints, the size budget they implied and the winner, for whoever draws the variants later
(the web page's Pareto view draws the constraints as lines)."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..store import Store
from ..store.atomic import write_atomic
from ..store.records import now_iso
from .constraints import Constraints

log = logging.getLogger(__name__)
MAX_BYTES = 1 << 20  # a record longer than this is not one we wrote


def _path(store: Store, base: str) -> Path:
    return store.root / "optimize" / f"{hashlib.sha256(base.encode()).hexdigest()[:32]}.json"


def remember(
    store: Store, base: str, constraints: Constraints, size_budget: int | None, winner: str | None,
    tagged: str | None,
) -> None:
    record = {
        "model": base, "created": now_iso(), "constraints": asdict(constraints),
        "described": constraints.describe(), "size_budget": size_budget, "winner": winner, "tagged": tagged,
    }
    write_atomic(_path(store, base), json.dumps(record, indent=2).encode(), store.tmp_dir)


def last_run(store: Store, base: str) -> dict[str, Any] | None:
    """The record of ``base``'s last optimize run, or None (never run, or unreadable: logged)."""
    path = _path(store, base)
    try:
        with open(path, "rb") as fp:
            raw = fp.read(MAX_BYTES + 1)
        record = json.loads(raw) if len(raw) <= MAX_BYTES else None
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict) or record.get("model") != base:
        log.warning("ignoring an unreadable optimize record %s", path)
        return None
    return record

"""Evaluation results kept in the store (``<store>/results/<key>.json``): read, listed, written.

Light on purpose (no numpy, no engine): the server's web page reads them too.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from pathlib import Path

from ..store import Store
from ..store.atomic import write_atomic
from ..store.records import Manifest
from .result import EvalResult

log = logging.getLogger(__name__)

RESULT_KEY = re.compile(r"[0-9a-f]{32}\Z")  # result_key's names


def results_dir(store: Store) -> Path:
    return store.root / "results"


def load_result(store: Store, key: str) -> EvalResult | None:
    return _read_result(results_dir(store) / f"{key}.json")


def _read_result(path: Path) -> EvalResult | None:
    try:
        return EvalResult.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        log.warning("skipping unreadable result %s", path)
        return None


def all_results(store: Store) -> list[EvalResult]:
    """Every kept evaluation result (the folder also keeps optimize's sensitivity measurements)."""
    paths = sorted(results_dir(store).glob("*.json")) if results_dir(store).is_dir() else []
    return [r for r in map(_read_result, (p for p in paths if RESULT_KEY.match(p.stem))) if r is not None]


def latest_results(store: Store, manifests: Iterable[Manifest]) -> dict[str, EvalResult]:
    """The newest kept result of each model, matched by content (a copy shares its source's
    results), under the model's own name; models never evaluated are left out."""
    digests: dict[str, list[str]] = {}
    for m in manifests:
        digests.setdefault(m.digest, []).append(str(m.name))
    kept: dict[str, EvalResult] = {}
    for r in all_results(store):
        for name in digests.get(r.model_digest, ()):
            if name not in kept or r.created >= kept[name].created:
                kept[name] = r.renamed(name)
    return kept


def save_result(store: Store, result: EvalResult) -> None:
    data = json.dumps(result.to_dict(), indent=2).encode()
    write_atomic(results_dir(store) / f"{result.key}.json", data, store.tmp_dir)

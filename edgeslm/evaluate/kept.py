"""Evaluation results kept in the store (``<store>/results/<key>.json``): read, listed, written.

Light on purpose (no numpy, no engine): the server's web page reads them too.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from ..errors import InvalidNameError
from ..store import Store, parse_name
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


def kv_of(result: EvalResult) -> str:
    """The KV cache type the model ran with (``eval --kv-type``); results from before it: f16."""
    return str(result.settings.get("kv", "f16"))


def latest_results(store: Store, manifests: Iterable[Manifest]) -> dict[str, EvalResult]:
    """The newest kept result of each model, matched by content (a copy shares its source's
    results), under the model's own name; models never evaluated are left out. Only results with
    llama.cpp's default f16 cache: a ``--kv-type`` run measures the cache, not the weights."""
    digests: dict[str, list[str]] = {}
    for m in manifests:
        digests.setdefault(m.digest, []).append(str(m.name))
    kept: dict[str, EvalResult] = {}
    for r in (r for r in all_results(store) if kv_of(r) == "f16"):
        for name in digests.get(r.model_digest, ()):
            if name not in kept or r.created >= kept[name].created:
                kept[name] = r.renamed(name)
    return kept


def save_result(store: Store, result: EvalResult) -> None:
    data = json.dumps(result.to_dict(), indent=2).encode()
    write_atomic(results_dir(store) / f"{result.key}.json", data, store.tmp_dir)


def measured_by_digest(store: Store) -> dict[str, EvalResult]:
    """The newest kept result per model digest against a variant of the same model (a KLD against
    another model, which a shared vocabulary allows, says nothing of this one's quality), with an f16
    cache; a reference of other results counts as KLD 0."""
    results = [r for r in all_results(store) if kv_of(r) == "f16"
               and (r.reference is None or _family(r.reference) == _family(r.model))]
    references = {r.reference_digest for r in results}
    out: dict[str, EvalResult] = {}
    for r in results:
        if not r.has_reference:
            if r.model_digest not in references:
                continue
            r = replace(r, kld_mean=0.0, same_top=1.0, reference="itself")
        if r.model_digest not in out or r.created > out[r.model_digest].created:
            out[r.model_digest] = r
    return out


def kv_costs(store: Store) -> dict[tuple[str, str], float]:
    """(model digest, KV type) -> the mean KLD the cache type adds, from ``eval --kv-type`` runs
    against the model itself (the newest of each)."""
    out: dict[tuple[str, str], tuple[str, float]] = {}
    for r in all_results(store):
        key = (r.model_digest, kv_of(r))
        if key[1] != "f16" and r.reference_digest == r.model_digest and r.kld_mean is not None:
            if key not in out or r.created > out[key][0]:
                out[key] = (r.created, r.kld_mean)
    return {k: v for k, (_, v) in out.items()}


def _family(name: str) -> str | None:
    try:
        return parse_name(name).family
    except InvalidNameError:
        return None

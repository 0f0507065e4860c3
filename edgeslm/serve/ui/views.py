"""What the web page shows, composed from the store, kept results and the audit log.

Library functions that return plain JSON-ready dicts; ``ui`` answers them over HTTP. Nothing here
exposes a filesystem path: a model's source says what made it (its parent, the type asked, the
package), not where a file was.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ...access.audit import MAX_LINE, report, verify
from ...access.compliance import report_rows
from ...evaluate.kept import latest_results
from ...evaluate.result import EvalResult
from ...evaluate.task_results import TaskResult, latest_task_results
from ...formats.model_format import RUNTIME_OF
from ...optimize.history import last_run
from ...runner.manager import LoadedInfo
from ...store import Store
from ...store.records import Manifest

# a source's fields that say what made a model (others may hold local paths: never sent)
SOURCE_FIELDS = ("kind", "parent", "parent_name", "parent_type", "requested", "package", "quantization", "repo",
                 "revision", "llama_cpp", "made_with")
MAX_RECENT = 1000  # audit lines the page may ask for


def models_view(store: Store) -> dict[str, Any]:
    """Every stored model by family (``base`` name): its variants, their newest measured results
    (KLD and task accuracy),
    lineage, the bytes deleting each would free, and the family's last optimize constraints."""
    manifests = sorted(store.manifests(), key=lambda m: (m.name.base, m.size))
    results = latest_results(store, manifests)
    tasks = latest_task_results(store, manifests)
    owners: dict[str, set[str]] = {}
    for m in manifests:
        for digest in m.blob_sizes():
            owners.setdefault(digest, set()).add(str(m.name))
    names_of: dict[str, list[str]] = {}
    for m in manifests:
        names_of.setdefault(m.digest, []).append(str(m.name))
    families: dict[str, list[dict[str, Any]]] = {}
    for m in manifests:
        variant = _variant(m, results.get(str(m.name)), owners, names_of)
        variant["tasks"] = {task.value: _task(r) for task, r in tasks.get(str(m.name), {}).items()}
        families.setdefault(m.name.base, []).append(variant)
    return {
        "families": [
            {"name": base, "variants": variants, "optimize": optimize_limits(last_run(store, base))}
            for base, variants in families.items()
        ]
    }


def _variant(
    m: Manifest, result: EvalResult | None, owners: Mapping[str, set[str]], names_of: Mapping[str, list[str]]
) -> dict[str, Any]:
    i = m.info
    only_here = {d: size for d, size in m.blob_sizes().items() if owners.get(d) == {str(m.name)}}  # freed by rm
    source = {k: m.source[k] for k in SOURCE_FIELDS if k in m.source}
    # the parent as the store names it now: the name it was made from, else another name of that file
    named = names_of.get(m.source.get("parent", ""), [])
    parent = m.source.get("parent_name") if m.source.get("parent_name") in named else next(iter(named), None)
    return {
        "name": str(m.name), "tag": m.name.tag, "digest": m.digest, "format": m.format.value,
        "runtime": RUNTIME_OF[m.format].value, "size": m.size, "created": m.created,
        "architecture": i.architecture, "n_params": i.n_params, "size_class": i.size_class.value,
        "size_class_label": i.size_class_label, "bits_per_weight": i.bits_per_weight, "file_type": i.file_type,
        "type_mix": [{"type": s.ggml_type, "share": s.n_params / i.stored_values, "bytes": s.n_bytes}
                     for s in i.type_mix],
        "context_length": i.context_length, "source": source,
        "parent": parent,
        "adapters": len(m.adapters), "has_system": bool(m.defaults.get("system")),
        "remove": {"freed_bytes": sum(only_here.values()), "blobs": len(only_here)},
        "result": _result(result) if result else None,
    }


def _task(r: TaskResult) -> dict[str, Any]:
    """A task's kept score and what it was measured on (protocol, problems, when)."""
    return {"score": r.score, "passed": r.passed, "problems": r.problems, "protocol": r.protocol,
            "created": r.created, "sandbox": list(r.isolation)}


def _result(r: EvalResult) -> dict[str, Any]:
    speed = r.speed
    return {
        "created": r.created, "runtime": r.runtime, "reference": r.reference, "text": r.text,
        "ctx": r.settings.get("ctx"), "chunks": r.chunks, "tokens": r.tokens,
        "ppl": r.ppl, "ppl_err": r.ppl_err, "ppl_base": r.ppl_base,
        "kld_mean": r.kld_mean, "kld_err": r.kld_err, "kld_p99": r.kld.get("p99"), "kld_max": r.kld.get("max"),
        "same_top": r.same_top, "same_top_err": r.same_top_err,
        "tg_tps": speed.tg_tps if speed else None, "pp_tps": speed.pp_tps if speed else None,
        "peak_rss": speed.peak_rss if speed else None, "threads": speed.threads if speed else None,
    }


def optimize_limits(record: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The last optimize run's limits that the size × KLD view can draw, and the rest as text."""
    if record is None:
        return None
    c = record.get("constraints")
    c = c if isinstance(c, dict) else {}
    limits = [x for x in c.get("max_kld") or () if isinstance(x, list) and len(x) == 2]
    described = record.get("described")
    return {
        "created": _text(record.get("created")), "winner": _text(record.get("winner")),
        "tagged": _text(record.get("tagged")),
        "described": [str(x) for x in described] if isinstance(described, list) else [],
        "max_size": _number(c.get("max_size")), "size_budget": _number(record.get("size_budget")),
        "max_kld_mean": _number(next((limit for stat, limit in limits if stat == "mean"), None)),
    }


def _number(value: Any) -> float | None:
    """A limit from the stored record, or None where it holds something else (a hand-edited file)."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def server_view(loaded: Iterable[LoadedInfo], activity: Mapping[str, Any], started: float) -> dict[str, Any]:
    models = [
        {"name": x.name, "memory": x.memory, "expires_in": x.expires_in, "in_flight": x.in_flight, "slots": x.slots,
         "busy": min(x.in_flight, x.slots), "queued": max(0, x.in_flight - x.slots), "keep_alive": x.keep_alive,
         "pinned": x.pinned}
        for x in loaded
    ]
    return {
        "started": started, "uptime": time.time() - started, "models": models, "activity": activity,
        "slots_busy": sum(m["busy"] for m in models), "slots": sum(m["slots"] for m in models),
        "queued": sum(m["queued"] for m in models),
    }


# -- audit ------------------------------------------------------------------------------------


def recent_lines(path: Path, limit: int) -> list[dict[str, Any] | None]:
    """The last ``limit`` lines of the audit log, newest first (None: a line that is not JSON),
    read from the end of the file so that a long log costs no more than a short one."""
    limit = max(1, min(limit, MAX_RECENT))
    with open(path, "rb") as fp:
        end = fp.seek(0, os.SEEK_END)
        start = max(0, end - limit * 4096)
        fp.seek(start)
        tail = fp.read(min(end - start, limit * 4096 + MAX_LINE))
    lines = tail.split(b"\n")
    if start > 0:
        lines = lines[1:]  # the first may be cut
    out: list[dict[str, Any] | None] = []
    for raw in reversed([x for x in lines if x.strip()][-limit:]):
        try:
            fields = json.loads(raw)
        except ValueError:
            fields = None
        out.append(fields if isinstance(fields, dict) else None)
    return out


def audit_view(path: Path, limit: int) -> dict[str, Any]:
    """Recent entries, the chain's state (as ``edgeslm audit verify`` finds it) and the report."""
    checked = verify(path)
    return {
        "verify": {"ok": checked.ok, "lines": checked.lines, "problems": list(checked.problems[:50]),
                   "more_problems": max(0, len(checked.problems) - 50), "last_hash": checked.last_hash},
        "recent": recent_lines(path, limit),
        "report": report_rows(report(path)),
    }

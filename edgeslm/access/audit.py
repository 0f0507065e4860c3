"""The audit log: one JSON line per request, chained by hashes so that edits are detected.

Each line holds the request's facts (time, key id — never the key — role, client, route, model,
status, tokens in and out, duration), ``prev``: the sha256 of the previous line's bytes (64
zeros for the first), and ``hash``: the sha256 of the line itself without that field. An edited
line no longer matches its own hash; a deleted or reordered line breaks the next line's
``prev``. (Whoever can rewrite the whole file can recompute the chain: keep a copy of the last
hash elsewhere, as ``verify`` prints it, to pin the log up to that point.)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputFileError, OutputFileError

GENESIS = "0" * 64
MAX_LINE = 1 << 20  # a line longer than this is not one we wrote
REFUSED = frozenset({401, 403, 413, 429, 503})


@dataclass(frozen=True)
class AuditRecord:
    time: str  # ISO 8601, UTC
    key_id: str | None
    role: str | None
    client: str
    method: str
    route: str
    model: str | None
    status: int
    tokens_in: int = 0
    tokens_out: int = 0
    duration_ms: float = 0.0
    prompt: str | None = None  # only with --audit-prompts


def _digest(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, ensure_ascii=True).encode()).hexdigest()


def _line(record: AuditRecord, prev: str) -> tuple[bytes, str]:
    fields = {k: v for k, v in asdict(record).items() if v is not None or k in ("key_id", "role", "model")}
    fields["prev"] = prev
    fields["hash"] = _digest(fields)
    raw = json.dumps(fields, sort_keys=True, ensure_ascii=True).encode()  # escapes every control character
    return raw, hashlib.sha256(raw).hexdigest()


class AuditLog:
    """Appends records to ``path``, continuing the chain of whatever the file already holds."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as exc:
            raise OutputFileError(f"cannot open the audit log {path}: {exc.strerror}") from None
        self._prev = _last_hash(path)

    def write(self, record: AuditRecord) -> None:
        with self._lock:
            raw, digest = _line(record, self._prev)
            os.write(self._fd, raw + b"\n")
            self._prev = digest

    def close(self) -> None:
        os.close(self._fd)


def _last_hash(path: Path) -> str:
    """The hash of the last complete line (the chain continues from it)."""
    size = path.stat().st_size
    if size == 0:
        return GENESIS
    with open(path, "rb") as fp:
        fp.seek(max(0, size - MAX_LINE - 1))
        tail = fp.read()
    lines = tail.rstrip(b"\n").split(b"\n")
    return hashlib.sha256(lines[-1]).hexdigest()


# -- verify -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyResult:
    lines: int
    problems: tuple[str, ...]
    last_hash: str

    @property
    def ok(self) -> bool:
        return not self.problems


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    try:
        with open(path, "rb") as fp:
            for number, raw in enumerate(fp, start=1):
                yield number, raw.rstrip(b"\n")
    except OSError as exc:
        raise InputFileError(f"cannot read the audit log {path}: {exc.strerror}") from None


@dataclass(frozen=True)
class Anchor:
    """The log's length and last hash at one moment, kept elsewhere: a later log must still hold
    that line with that hash (a log cut at its end, or rewritten, no longer does)."""

    lines: int
    last_hash: str
    time: str

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode()

    @classmethod
    def read(cls, path: Path) -> Anchor:
        try:
            data = json.loads(path.read_bytes()[:4096])
            anchor = cls(int(data["lines"]), str(data["last_hash"]), str(data["time"]))
        except OSError as exc:
            raise InputFileError(f"cannot read the anchor {path}: {exc.strerror}") from None
        except (ValueError, KeyError, TypeError):
            raise InputFileError(f"{path} is not an audit anchor (edgeslm audit anchor writes one)") from None
        if anchor.lines < 0 or len(anchor.last_hash) != 64:
            raise InputFileError(f"{path} is not an audit anchor (edgeslm audit anchor writes one)")
        return anchor


def verify(path: Path, anchor: Anchor | None = None) -> VerifyResult:
    """Check every line's own hash and its link to the line before (and, with ``anchor``, that the
    anchored line is still there, unchanged)."""
    problems: list[str] = []
    prev, count = GENESIS, 0
    anchored = GENESIS if anchor is not None and anchor.lines == 0 else None
    for number, raw in _lines(path):
        count = number
        fields = _parse(raw)
        if fields is None:
            problems.append(f"line {number}: not a JSON object (edited or truncated)")
        else:
            claimed = fields.pop("hash", None)
            if claimed != _digest(fields):
                problems.append(f"line {number}: its content does not match its hash (edited)")
            if fields.get("prev") != prev:
                problems.append(
                    f"line {number}: does not follow line {number - 1} (a line was deleted, moved or edited)"
                )
        prev = hashlib.sha256(raw).hexdigest()
        if anchor is not None and number == anchor.lines:
            anchored = prev
    if anchor is not None and count < anchor.lines:
        problems.append(f"the log has {count:,} lines, fewer than the {anchor.lines:,} anchored at {anchor.time} "
                        "(cut at its end)")
    elif anchor is not None and anchored != anchor.last_hash:
        problems.append(f"line {anchor.lines:,} is not the line anchored at {anchor.time} (the log was rewritten)")
    return VerifyResult(count, tuple(problems), prev)


def _parse(raw: bytes) -> dict[str, Any] | None:
    if len(raw) > MAX_LINE:
        return None
    try:
        fields = json.loads(raw)
    except ValueError:
        return None
    return fields if isinstance(fields, dict) else None


# -- report -----------------------------------------------------------------------------------


@dataclass
class Tally:
    requests: int = 0
    refused: int = 0
    errors: int = 0
    tokens_in: int = 0
    tokens_out: int = 0

    def add(self, status: int, tokens_in: int, tokens_out: int) -> None:
        self.requests += 1
        self.refused += status in REFUSED
        self.errors += status >= 500 and status not in REFUSED
        self.tokens_in += tokens_in
        self.tokens_out += tokens_out


# routes that change the store or move models: what a compliance report lists one by one
STORE_ROUTES = ("/api/pull", "/api/create", "/api/copy", "/api/delete", "/api/push", "/edgeslm/v1/publish")
TRANSFER_PREFIXES = ("/api/blobs/", "/edgeslm/v1/blobs/", "/edgeslm/v1/uploads/",  # bytes in or out
                     "remote:")  # a device's own push, pull --from and sync (cli/sync_cmds.py)
MAX_CHANGES = 10_000


@dataclass
class Report:
    lines: int = 0  # read (in the period)
    unreadable: int = 0
    by: dict[str, dict[str, Tally]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(Tally)))
    statuses: Counter[int] = field(default_factory=Counter)
    changes: list[dict[str, Any]] = field(default_factory=list)  # store changes and transfers, oldest first


def report(path: Path, since: dt.date | None = None, until: dt.date | None = None) -> Report:
    """Requests, tokens and refusals per key, role, model and day (days ``since`` to ``until``,
    both included), and each store change or transfer."""
    out = Report()
    for _, raw in _lines(path):
        fields = _parse(raw)
        if fields is None:
            out.lines += 1
            out.unreadable += 1
            continue
        try:
            day = dt.datetime.fromisoformat(str(fields.get("time"))).date().isoformat()
        except ValueError:
            day = "?"
        if (since and (day == "?" or day < since.isoformat())) or (until and (day == "?" or day > until.isoformat())):
            continue
        out.lines += 1
        route = str(fields.get("route", ""))
        if (route in STORE_ROUTES or route.startswith(TRANSFER_PREFIXES)) and len(out.changes) < MAX_CHANGES:
            out.changes.append({k: fields.get(k) for k in ("time", "key_id", "role", "method", "route", "model",
                                                           "status")})
        try:
            status = int(fields.get("status", 0))
            tokens = int(fields.get("tokens_in", 0)), int(fields.get("tokens_out", 0))
        except (ValueError, TypeError):  # an edited line ('audit verify' names it)
            out.unreadable += 1
            continue
        groups = {"key": fields.get("key_id"), "role": fields.get("role"), "model": fields.get("model"), "day": day}
        for dimension, value in groups.items():
            out.by[dimension][str(value if value is not None else "-")].add(status, *tokens)
        out.statuses[status] += 1
    return out

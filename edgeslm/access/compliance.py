"""The audit log as a compliance report: JSON, CSV or a self-contained HTML page (no script), with
the chain's state and each store change or transfer; and the anchor that pins the log's end.

Every value from the log is untrusted: escaped in HTML, quoted in CSV where a spreadsheet would
run it as a formula.
"""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..errors import InvalidParameterError
from ..store.atomic import write_beside
from .audit import Anchor, Report, VerifyResult, verify

REPORT_COLUMNS = ("dimension", "value", "requests", "refused", "errors", "tokens_in", "tokens_out")
DIMENSIONS = ("key", "role", "model", "day")
CHANGE_COLUMNS = ("time", "key_id", "role", "method", "route", "model", "status")


def report_rows(r: Report) -> list[dict[str, Any]]:
    rows = []
    for dimension in DIMENSIONS:
        for value, t in sorted(r.by.get(dimension, {}).items()):
            rows.append({"dimension": dimension, "value": value, "requests": t.requests, "refused": t.refused,
                         "errors": t.errors, "tokens_in": t.tokens_in, "tokens_out": t.tokens_out})
    return rows


def report_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    """The report as CSV; a cell a spreadsheet would run as a formula (=, +, -, @) is quoted as text."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(REPORT_COLUMNS)
    for row in rows:
        writer.writerow([_cell(row[c]) for c in REPORT_COLUMNS])
    return out.getvalue()


def _cell(value: Any) -> Any:
    if isinstance(value, str) and value != "-" and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def report_json(r: Report, checked: VerifyResult, period: tuple[str | None, str | None]) -> dict[str, Any]:
    return {
        "period": {"from": period[0], "to": period[1]}, "lines": r.lines, "unreadable": r.unreadable,
        "chain": {"ok": checked.ok, "lines": checked.lines, "problems": list(checked.problems),
                  "last_hash": checked.last_hash},
        "by": {d: {v: asdict(t) for v, t in sorted(groups.items())} for d, groups in r.by.items()},  # as before
        "rows": report_rows(r), "statuses": {str(k): v for k, v in sorted(r.statuses.items())},
        "changes": r.changes,
    }


def report_html(r: Report, checked: VerifyResult, period: tuple[str | None, str | None], log_name: str) -> str:
    e = html.escape
    chain = (f'<p class="ok">Chain intact: {checked.lines:,} lines; last hash <code>{e(checked.last_hash)}</code></p>'
             if checked.ok else '<p class="bad">Chain broken:</p><ul>'
             + "".join(f"<li>{e(p)}</li>" for p in checked.problems[:200]) + "</ul>")
    sections = []
    rows = report_rows(r)
    for dimension in DIMENSIONS:
        body = "".join(
            "<tr>" + "".join(f"<td>{e(str(row[c]))}</td>" for c in REPORT_COLUMNS[1:]) + "</tr>"
            for row in rows
            if row["dimension"] == dimension
        )
        head = "".join(f"<th>{e(c)}</th>" for c in (dimension, *REPORT_COLUMNS[2:]))
        sections.append(f"<h2>Per {dimension}</h2><table><tr>{head}</tr>{body}</table>")
    changes = "".join(
        "<tr>" + "".join(f"<td>{e(str(c.get(k, '')))}</td>" for k in CHANGE_COLUMNS) + "</tr>" for c in r.changes
    )
    span = f"{period[0] or 'the start'} to {period[1] or 'the end'}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgeslm audit report</title>
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<style>body{{font:14px system-ui,sans-serif;margin:2rem}}table{{border-collapse:collapse}}
td,th{{border-bottom:1px solid #ddd;padding:.2rem .6rem;text-align:left}}
.ok{{color:#1a7f37}}.bad{{color:#b42318}}</style>
</head><body><h1>Audit report: {e(log_name)}</h1>
<p>Period: {e(span)}; {r.lines:,} requests in it ({r.unreadable} unreadable line(s)).
Made {e(dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))}.</p>
{chain}{"".join(sections)}
<h2>Store changes and transfers</h2><table><tr>{"".join(f"<th>{c}</th>" for c in CHANGE_COLUMNS)}</tr>{changes}</table>
</body></html>
"""


def parse_day(text: str | None, flag: str) -> dt.date | None:
    if text is None:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise InvalidParameterError(f"{flag} {text!r}: give a day as YYYY-MM-DD", params=flag) from None


def write_anchor(log: Path, out: Path) -> Anchor:
    """Pin the log as it is now (refused when its chain is already broken: that would pin the damage)."""
    checked = verify(log)
    if not checked.ok:
        raise InvalidParameterError(
            f"{log} is not intact ({checked.problems[0]}); an anchor would pin the damage: run 'edgeslm audit verify'"
        )
    anchor = Anchor(checked.lines, checked.last_hash, dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    write_beside(out, anchor.to_json())
    return anchor

"""The compliance report of the audit log (period, JSON/CSV/HTML, store changes) and anchors that
pin the log's end."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from edgeslm.access.audit import Anchor, AuditLog, AuditRecord, report, verify
from edgeslm.access.compliance import report_html, report_json, write_anchor
from edgeslm.errors import InputFileError, InvalidParameterError

DAYS = [
    ("2026-11-28", "/api/chat", "m"),
    ("2026-11-29", "/api/pull", "=HYPERLINK(1)"),
    ("2026-11-30", "/api/delete", "<script>alert(1)</script>"),
    ("2026-11-30", "/api/blobs/sha256-1", None),
]


def write_log(path: Path, rows: list[tuple[str, str, str | None]] = DAYS) -> Path:
    log = AuditLog(path)
    for day, route, model in rows:
        log.write(AuditRecord(f"{day}T10:00:00+00:00", "alice", "admin", "c", "POST", route, model, 200, 1, 2, 3.0))
    log.close()
    return path


def test_a_period_and_the_store_changes(tmp_path: Path) -> None:
    path = write_log(tmp_path / "audit.jsonl")
    r = report(path, dt.date(2026, 11, 29), dt.date(2026, 11, 30))
    assert r.lines == 3 and set(r.by["day"]) == {"2026-11-29", "2026-11-30"}
    assert [c["route"] for c in r.changes] == ["/api/pull", "/api/delete", "/api/blobs/sha256-1"]
    assert report(path, until=dt.date(2026, 11, 28)).lines == 1
    data = report_json(r, verify(path), ("2026-11-29", "2026-11-30"))
    assert data["chain"]["ok"] and data["period"] == {"from": "2026-11-29", "to": "2026-11-30"}
    assert {"dimension": "key", "value": "alice", "requests": 3}.items() <= data["rows"][0].items()
    page = report_html(r, verify(path), (None, None), "audit.jsonl")
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Chain intact" in page and "default-src 'none'" in page


def test_an_edited_line_is_unreadable_in_the_report_and_named_by_verify(tmp_path: Path) -> None:
    path = write_log(tmp_path / "audit.jsonl")
    lines = path.read_text().splitlines()
    fields = json.loads(lines[1])
    fields["status"] = "two hundred"
    lines[1] = json.dumps(fields, sort_keys=True)
    path.write_text("\n".join(lines) + "\n")
    r = report(path)
    assert r.unreadable == 1 and r.lines == 4
    assert not verify(path).ok and "line 2" in verify(path).problems[0]


def test_an_anchor_finds_a_cut_or_rewritten_end(tmp_path: Path) -> None:
    path = write_log(tmp_path / "audit.jsonl")
    anchor = write_anchor(path, tmp_path / "elsewhere" / "anchor.json")
    assert anchor.lines == 4 and verify(path, Anchor.read(tmp_path / "elsewhere" / "anchor.json")).ok
    write_log(path, DAYS[:1])  # the log goes on: still fine
    assert verify(path, anchor).ok
    lines = path.read_bytes().splitlines(keepends=True)
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(b"".join(lines[:3]))  # the last anchored line removed: the chain alone is still whole
    assert verify(cut).ok
    assert "fewer than the 4 anchored" in verify(cut, anchor).problems[0]
    rewritten = write_log(cut, [("2026-12-01", "/api/chat", "other")])  # a new 4th line, chained properly
    assert verify(rewritten).ok and "rewritten" in verify(rewritten, anchor).problems[0]
    with pytest.raises(InvalidParameterError, match="not intact"):
        broken = tmp_path / "broken.jsonl"
        broken.write_bytes(lines[1] + lines[0])
        write_anchor(broken, tmp_path / "a2.json")
    (tmp_path / "bad.json").write_text('{"lines": "x"}')
    with pytest.raises(InputFileError, match="not an audit anchor"):
        Anchor.read(tmp_path / "bad.json")


def test_the_cli(cli: Any, tmp_path: Path) -> None:
    path = write_log(tmp_path / "audit.jsonl")
    out = cli("audit", "report", str(path), "--format", "csv")
    assert out.code == 0 and out.out.startswith("dimension,value") and "model,'=HYPERLINK(1),1," in out.out
    later = cli("audit", "report", str(path), "--format", "csv", "--from", "2026-11-30").out
    assert "day,2026-11-30,2," in later and "2026-11-29" not in later
    page = tmp_path / "r" / "report.html"
    assert cli("audit", "report", str(path), "--format", "html", "-o", str(page)).code == 0
    assert "&lt;script&gt;" in page.read_text()
    assert json.loads(cli("audit", "report", str(path), "--json").out)["changes"][0]["route"] == "/api/pull"
    text = cli("audit", "report", str(path))
    assert "chain: intact" in text.out and "/api/delete" in text.out
    assert cli("audit", "anchor", str(path), "-o", str(tmp_path / "a.json")).code == 0
    assert cli("audit", "verify", str(path), "--anchor", str(tmp_path / "a.json")).code == 0
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:2]))
    cut = cli("audit", "verify", str(path), "--anchor", str(tmp_path / "a.json"))
    assert cut.code == 1 and "cut at its end" in cut.out
    wrong = cli("audit", "report", str(path), "--from", "2026-12-01", "--to", "2026-11-01")
    assert wrong.code != 0 and "after --to" in wrong.err
    assert "YYYY-MM-DD" in cli("audit", "report", str(path), "--to", "tomorrow").err

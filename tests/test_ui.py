"""The web page's server side: its files and headers, the views it reads, who may read them.

The page itself runs in a real browser in ``test_browser.py``; here are the HTTP answers and the
library functions behind them, with fake runners and tiny models.
"""

from __future__ import annotations

import csv
import io
import json
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from edgeslm.access.audit import AuditLog, AuditRecord, report
from edgeslm.access.compliance import report_csv, report_rows
from edgeslm.evaluate.kept import latest_results, results_dir, save_result
from edgeslm.evaluate.result import EvalResult, Speed
from edgeslm.evaluate.task_results import Answer, TaskResult, save_task_result
from edgeslm.optimize.constraints import Constraints
from edgeslm.optimize.history import last_run, remember
from edgeslm.serve.activity import Activity
from edgeslm.serve.ui.routes import assets
from edgeslm.serve.ui.views import audit_view, models_view, optimize_limits, recent_lines
from edgeslm.store import Store, parse_name

from . import servekit
from .fake_runner import FakeRunner
from .servekit import serving

models, keyed = servekit.models, servekit.keyed  # the shared fixtures


def raw_get(base: str, path: str) -> tuple[int, str]:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode(errors="replace")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_every_file_the_page_names_is_served_and_nothing_else() -> None:
    table = assets()
    index = table["index.html"][0].decode()
    named = set(re.findall(r'(?:href|src)="/ui/([^"#]+)"', index))
    for path, (body, _, _) in table.items():
        if path.endswith(".js"):
            named |= {str(Path(path).parent / m) for m in re.findall(r'from "\./([\w.-]+)"', body.decode())}
    assert named and named <= set(table), named - set(table)
    assert set(table) - named == {"index.html"}, "a file nothing loads"
    total = sum(len(body) for body, _, _ in table.values())
    assert total < 200_000, f"the page's files weigh {total:,} bytes"
    for path, (body, _, _) in table.items():
        text = body.decode()
        assert "innerHTML" not in text and "outerHTML" not in text and "insertAdjacentHTML" not in text, path
        assert "eval(" not in text and "new Function" not in text and "document.write" not in text, path
        assert not re.search(r"https?://", text.replace("http://www.w3.org/2000/svg", "")), f"{path}: a remote origin"


def test_the_page_is_public_with_strict_headers_and_its_data_is_not(keyed: tuple[str, dict[str, str]]) -> None:
    base, keys = keyed
    r = httpx.get(base + "/ui/", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"
    policy = r.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy and "unsafe" not in policy
    assert httpx.get(base + "/ui/", headers={"If-None-Match": r.headers["etag"]}, timeout=10).status_code == 304
    assert httpx.get(base + "/ui", timeout=10, follow_redirects=True).url.path == "/ui/"
    assert httpx.get(base + "/ui/js/main.js", timeout=10).headers["content-type"].startswith("text/javascript")
    assert httpx.get(base + "/ui/auth", timeout=10).json() == {"auth": True}
    for path in ("/ui/nope.js", "/ui/../api/tags", "/ui/js/../../edgeslm/__init__.py", "/ui//etc/passwd"):
        status, text = raw_get(base, path)  # sent as written: httpx would resolve the dots
        assert status == 404 and "models" not in text and "root:" not in text, path
    assert httpx.get(base + "/edgeslm/v1/models", timeout=10).status_code == 401
    assert (
        "default-src 'none'"
        in httpx.get(base + "/api/tags", headers=bearer(keys["user"])).headers["content-security-policy"]
    )


def test_session_says_what_each_role_may_do(keyed: tuple[str, dict[str, str]]) -> None:
    base, keys = keyed
    seen = {
        role: httpx.get(base + "/edgeslm/v1/session", headers=bearer(k), timeout=10).json() for role, k in keys.items()
    }
    assert seen["reader"]["role"] == "reader" and seen["reader"]["key_id"] == "reader-1"
    assert set(seen["reader"]["actions"]) == {"list", "show", "metrics"}
    assert "audit" in seen["admin"]["actions"] and "audit" not in seen["user"]["actions"]
    assert seen["admin"]["audit"] is True and seen["admin"]["server"]["parallel"] == 4


def test_the_pages_own_origin_may_post_and_another_may_not(keyed: tuple[str, dict[str, str]]) -> None:
    base, keys = keyed
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    own = httpx.post(base + "/api/chat", json=body, headers={**bearer(keys["user"]), "Origin": base}, timeout=30)
    assert own.status_code == 200, own.text
    other = httpx.post(
        base + "/api/chat", json=body, headers={**bearer(keys["user"]), "Origin": "http://evil.example"}, timeout=30
    )
    assert other.status_code == 403 and "Origin" in other.json()["error"]
    host = base.removeprefix("http://")
    spoofed = {**bearer(keys["user"]), "Origin": "http://evil.example:80", "Host": "evil.example:80"}
    assert httpx.post(base + "/api/chat", json=body, headers=spoofed, timeout=30).status_code == 403  # Host check
    assert httpx.get(base + "/api/version", headers={"Origin": f"http://{host}"}, timeout=10).status_code == 401


def test_the_server_view_counts_replies_of_the_last_minutes(keyed: tuple[str, dict[str, str]]) -> None:
    base, keys = keyed
    for _ in range(3):
        r = httpx.post(base + "/api/generate", json={"model": "tiny", "prompt": "x", "stream": False},
                       headers=bearer(keys["user"]), timeout=30)
        assert r.status_code == 200
    view = httpx.get(base + "/edgeslm/v1/server?minutes=5", headers=bearer(keys["user"]), timeout=10).json()
    assert [m["name"] for m in view["models"]] == ["tiny:latest"] and view["slots"] == 4 and view["uptime"] > 0
    assert view["activity"]["totals"]["replies"] == 3 and view["activity"]["totals"]["tokens"] == 3 * 6
    assert len(view["activity"]["points"]) == 20 and view["activity"]["points"][-1]["replies"] == 3
    assert view["activity"]["totals"]["ttft_mean"] > 0
    r = httpx.get(base + "/edgeslm/v1/server?minutes=99", headers=bearer(keys["user"]), timeout=10)
    assert r.status_code == 400


def test_activity_buckets_and_forgets() -> None:
    now = [1000.0]
    activity = Activity(clock=lambda: now[0])
    activity.add("m", 0.5, 11, 1.0)  # 10 intervals in 1 s
    now[0] += 20
    activity.add("m", 0.1, 1, 0.0)
    series = activity.series(minutes=1, bucket=15)
    assert [p["replies"] for p in series["points"]] == [0, 0, 1, 1]
    assert series["totals"]["decode_tps"] == 10.0 and series["totals"]["ttft_max"] == 0.5
    assert series["totals"]["throughput"] == 12 / 60
    now[0] += 3600
    assert activity.series()["totals"]["replies"] == 0


def _result(m: Any, created: str, kld: float | None) -> EvalResult:
    return EvalResult(
        key=f"{abs(hash((m.digest, created))):032x}"[:32], created=created, model=str(m.name), model_digest=m.digest,
        text="t", text_digest="d", settings={"ctx": 64}, chunks=1, eval_seconds=1.0, eval_tokens_per_second=1.0,
        file_size=m.size, n_params=1, bits_per_weight=1.0, type_mix=(), file_type=None, tokens=63, ppl=10.0,
        ppl_err=1.0, reference="tiny:f16" if kld is not None else None, kld_mean=kld,
        speed=Speed(10.0, 5.0, 123, 2, 64, 16),
    )


def _task(m: Any, created: str, problems: int, passed: int) -> TaskResult:
    answers = tuple(Answer(f"HumanEval/{i}", i < passed, "passed" if i < passed else "failed", "x", 1, "stop", 0.01)
                    for i in range(problems))
    return TaskResult(f"{abs(hash((m.digest, created, problems))):032x}"[:32], created, "humaneval", "p/1",
                      str(m.name), m.digest, problems, passed, 1.0, 4, ("pid", "rlimits"), answers)


def test_the_models_view_matches_results_by_content_and_shows_no_paths(models: Path, cli: Any) -> None:
    assert cli("cp", "tiny", "tiny:copy").code == 0
    assert cli("quantize", "tiny", "--type", "q8_0", "--allow-requantize").code == 0
    store = Store.open(models / "models")
    tiny, q8 = store.get(parse_name("tiny")), store.get(parse_name("tiny:q8_0"))
    save_result(store, _result(tiny, "2026-01-01T00:00:00+00:00", None))
    save_result(store, _result(q8, "2026-01-01T00:00:00+00:00", 0.5))
    save_result(store, _result(q8, "2026-02-01T00:00:00+00:00", 0.25))  # newer: wins
    (results_dir(store) / f"{'f' * 32}.json").write_text("{not json")  # skipped, logged
    remember(store, "tiny", Constraints(max_size=10_000_000, max_kld=(("mean", 0.3),)), 9_000_000, "tiny:q8_0", None)
    save_task_result(store, _task(q8, "2026-03-01T00:00:00+00:00", 10, 9))  # newer, but a --limit run
    save_task_result(store, _task(q8, "2026-01-01T00:00:00+00:00", 164, 100))  # all the problems: shown
    (results_dir(store) / "task-broken.json").write_text("{not json")  # skipped, logged
    view = models_view(store)
    (family,) = view["families"]
    by = {v["name"]: v for v in family["variants"]}
    assert set(by) == {"tiny:latest", "tiny:copy", "tiny:q8_0"}
    assert by["tiny:copy"]["result"]["ppl"] == 10.0 and by["tiny:copy"]["result"]["kld_mean"] is None  # a copy's
    assert by["tiny:q8_0"]["result"]["kld_mean"] == 0.25 and by["tiny:q8_0"]["parent"] == "tiny:latest"
    assert by["tiny:q8_0"]["source"]["requested"] == "Q8_0"
    assert by["tiny:latest"]["remove"]["freed_bytes"] == 0  # its blob is also the copy's
    assert by["tiny:q8_0"]["remove"] == {"freed_bytes": q8.size, "blobs": 1}
    assert family["optimize"]["max_size"] == 10_000_000 and family["optimize"]["max_kld_mean"] == 0.3
    assert family["optimize"]["size_budget"] == 9_000_000 and family["optimize"]["winner"] == "tiny:q8_0"
    assert str(models) not in json.dumps(view) and "path" not in json.dumps(by["tiny:latest"]["source"])
    assert latest_results(store, [q8])["tiny:q8_0"].created.startswith("2026-02")
    humaneval = by["tiny:q8_0"]["tasks"]["humaneval"]
    assert (humaneval["problems"], humaneval["passed"], humaneval["protocol"]) == (164, 100, "p/1")
    assert by["tiny:copy"]["tasks"] == {} and by["tiny:latest"]["tasks"] == {}


def test_an_optimize_record_that_is_not_ours_is_ignored(store: Store) -> None:
    remember(store, "m", Constraints(), None, None, None)
    assert last_run(store, "m") is not None and last_run(store, "other") is None
    (path,) = (store.root / "optimize").glob("*.json")
    for bad in (b"[1, 2]", b"{", json.dumps({"model": "another"}).encode(), b"x" * (2 << 20)):
        path.write_bytes(bad)
        assert last_run(store, "m") is None
    odd = {"model": "m", "constraints": {"max_size": "big", "max_kld": [["mean"], 3, ["mean", 0.2]]},
           "described": "x", "size_budget": True, "winner": 7}
    path.write_text(json.dumps(odd))
    assert optimize_limits(last_run(store, "m")) == {
        "created": None,
        "winner": None,
        "tagged": None,
        "described": [],
        "max_size": None,
        "size_budget": None,
        "max_kld_mean": 0.2,
    }


def test_the_audit_view_reads_the_tail_reports_breaks_and_quotes_formulas(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    for i in range(30):
        log.write(AuditRecord(f"2026-11-30T10:00:{i:02d}+00:00", "alice", "admin", "c", "POST", f"/r{i}",
                              "=HYPERLINK(\"http://x\")" if i == 3 else "m", 200, 1, 2, 3.0))
    log.close()
    recent = recent_lines(path, 5)
    assert [e["route"] for e in recent if e] == ["/r29", "/r28", "/r27", "/r26", "/r25"]
    view = audit_view(path, 10)
    assert view["verify"]["ok"] and view["verify"]["lines"] == 30 and len(view["recent"]) == 10
    rows = list(csv.DictReader(io.StringIO(report_csv(report_rows(report(path))))))
    assert {"dimension": "key", "value": "alice", "requests": "30"}.items() <= rows[0].items()
    assert any(r["value"] == '\'=HYPERLINK("http://x")' for r in rows)  # a formula stays text
    lines = path.read_bytes().split(b"\n")
    lines[4] = lines[4].replace(b'"status": 200', b'"status": 201')
    path.write_bytes(b"\n".join(lines))
    broken = audit_view(path, 10)["verify"]
    assert not broken["ok"] and any("line 5" in p for p in broken["problems"])


def test_the_audit_endpoints_for_admins(keyed: tuple[str, dict[str, str]]) -> None:
    base, keys = keyed
    httpx.get(base + "/api/tags", headers=bearer(keys["reader"]), timeout=10)
    view = httpx.get(base + "/edgeslm/v1/audit?limit=5", headers=bearer(keys["admin"]), timeout=10).json()
    assert view["enabled"] and view["verify"]["ok"] and view["recent"][0]["route"] == "/api/tags"
    r = httpx.get(base + "/edgeslm/v1/audit.csv", headers=bearer(keys["admin"]), timeout=10)
    assert r.headers["content-type"].startswith("text/csv") and "attachment" in r.headers["content-disposition"]
    assert "key,reader-1,1,0,0,0,0" in r.text
    assert httpx.get(base + "/edgeslm/v1/audit.csv", headers=bearer(keys["user"]), timeout=10).status_code == 403


def test_without_an_audit_log_the_page_says_so(models: Path) -> None:
    with serving(models, FakeRunner) as base:
        assert httpx.get(base + "/edgeslm/v1/audit", timeout=10).json() == {"enabled": False}
        r = httpx.get(base + "/edgeslm/v1/audit.csv", timeout=10)
        assert r.status_code == 404 and "--audit-log" in r.json()["error"]
        session = httpx.get(base + "/edgeslm/v1/session", timeout=10).json()
        assert session["auth"] is False and session["role"] is None and "delete" in session["actions"]


def test_the_web_page_keeps_the_server_process_light() -> None:
    """Reading results and optimize records must not pull the evaluation and search code (and what
    they import) into the HTTP process."""
    code = "import sys, edgeslm.serve.ui.routes; print(' '.join(sorted(sys.modules)))"
    loaded = set(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    )
    assert "edgeslm.evaluate.kept" in loaded and "edgeslm.optimize.history" in loaded
    heavy = {"edgeslm.evaluate.core", "edgeslm.optimize.core", "edgeslm.convert", "edgeslm.quantize", "llama_cpp"}
    assert not heavy & loaded, heavy & loaded

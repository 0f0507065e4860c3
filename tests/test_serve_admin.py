"""Keys and roles, and the hash-chained audit log (the server's parts that stand alone)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from edgeslm.access.audit import AuditLog, AuditRecord, report, verify
from edgeslm.access.keys import ROLES, Action, add_key, hash_key, load_keys
from edgeslm.errors import InputFileError, InvalidParameterError

from .conftest import CliResult

Cli = Callable[..., CliResult]


def test_keys_are_stored_hashed_and_found(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    alice, bob = add_key(path, "alice", "admin"), add_key(path, "bob", "reader")
    text = path.read_text()
    assert alice not in text and bob not in text and hash_key(alice) in text
    assert os.stat(path).st_mode & 0o077 == 0  # owner only
    ring = load_keys(path)
    found = ring.find(alice)
    assert found is not None and found.id == "alice" and found.may(Action.DELETE)
    reader = ring.find(bob)
    assert reader is not None and reader.may(Action.METRICS) and not reader.may(Action.GENERATE)
    assert ring.find(alice.upper()) is None and ring.find("") is None and ring.find(alice + " ") is None
    with pytest.raises(InvalidParameterError, match="already has a key with id 'alice'"):
        add_key(path, "alice", "user")
    with pytest.raises(InvalidParameterError, match="role 'root' is unknown"):
        add_key(path, "carol", "root")


def test_roles_follow_the_table() -> None:
    assert ROLES["admin"] == frozenset(Action)
    assert {a.value for a in ROLES["user"]} == {"generate", "embed", "list", "show", "ps", "fetch"}
    assert {a.value for a in ROLES["reader"]} == {"list", "show", "metrics"}


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("not toml = = =", "not valid TOML"),
        ('[[key]]\nid = "a"\nrole = "admin"\nkey = "esk-secret"\n', "holds a plain key"),
        ('[[key]]\nid = "a"\nrole = "god"\nsha256 = "' + "0" * 64 + '"\n', "role 'god' is unknown"),
        ('[[key]]\nid = "a"\nrole = "user"\nsha256 = "xyz"\n', "64 lowercase hex"),
        ('[[key]]\nid = "../a"\nrole = "user"\nsha256 = "' + "0" * 64 + '"\n', "id must be"),
        ('[[key]]\nid = "a"\nrole = "user"\nsha256 = "' + "0" * 64 + '"\n' * 1 + '[[key]]\nid = "a"\nrole = "user"\n'
         'sha256 = "' + "1" * 64 + '"\n', "appears twice"),
        ('other = 1\n', r"expected only \[\[key\]\] tables"),
    ],
)
def test_bad_key_files(tmp_path: Path, content: str, words: str) -> None:
    path = tmp_path / "k.toml"
    path.write_text(content)
    with pytest.raises(InputFileError, match=words):
        load_keys(path)


def _records(n: int) -> list[AuditRecord]:
    return [
        AuditRecord(
            time=f"2026-11-{27 + i % 2}T10:00:0{i}+00:00", key_id=("alice", "bob")[i % 2],
            role=("admin", "user")[i % 2], client="127.0.0.1", method="POST", route="/api/chat",
            model="smollm2-135m-instruct:latest",
            status=(200, 403)[i % 3 == 2], tokens_in=10 + i, tokens_out=5, duration_ms=12.5,
        )
        for i in range(n)
    ]


def test_audit_chain_detects_edits_deletions_and_moves(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    for r in _records(3):
        log.write(r)
    log.close()
    log = AuditLog(path)  # a restarted server continues the chain
    for r in _records(6)[3:]:
        log.write(r)
    log.close()
    result = verify(path)
    assert result.ok and result.lines == 6
    lines = path.read_bytes().splitlines(keepends=True)
    assert b"esk-" not in path.read_bytes() and json.loads(lines[0])["key_id"] == "alice"

    edited = lines[:]
    edited[2] = edited[2].replace(b'"tokens_out": 5', b'"tokens_out": 1')
    path.write_bytes(b"".join(edited))
    assert verify(path).problems == (
        "line 3: its content does not match its hash (edited)",
        "line 4: does not follow line 3 (a line was deleted, moved or edited)",
    )
    path.write_bytes(b"".join(lines[:3] + lines[4:]))
    assert verify(path).problems == ("line 4: does not follow line 3 (a line was deleted, moved or edited)",)
    path.write_bytes(b"".join([lines[1], lines[0]] + lines[2:]))
    assert len(verify(path).problems) == 3
    path.write_bytes(b"".join(lines[:5]) + b'{"truncat')
    assert verify(path).problems[-1] == "line 6: not a JSON object (edited or truncated)"


def test_control_characters_are_escaped(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    log = AuditLog(path)
    log.write(AuditRecord("2026-11-28T00:00:00+00:00", None, None, "1.2.3.4", "GET", "/api/\x1b[31mx\n", None, 404))
    log.close()
    raw = path.read_bytes()
    assert raw.count(b"\n") == 1 and b"\x1b" not in raw and verify(path).ok


def test_audit_report_and_cli(tmp_path: Path, cli: Cli) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    for r in _records(6):
        log.write(r)
    log.close()
    r = report(path)
    assert r.lines == 6 and r.by["key"]["alice"].requests == 3 and r.by["key"]["bob"].tokens_in == 11 + 13 + 15
    assert r.by["day"]["2026-11-27"].requests == 3 and sum(t.refused for t in r.by["role"].values()) == 2
    out = cli("audit", "report", str(path), "--json")
    assert out.code == 0 and json.loads(out.out)["by"]["model"]["smollm2-135m-instruct:latest"]["requests"] == 6
    ok = cli("audit", "verify", str(path))
    assert ok.code == 0 and "6 lines, intact" in ok.err
    path.write_bytes(path.read_bytes().replace(b'"status": 200', b'"status": 201', 1))
    bad = cli("audit", "verify", str(path))
    assert bad.code == 1 and "line 1: its content does not match its hash" in bad.out
    assert cli("audit", "verify", str(tmp_path / "missing.jsonl")).code == 66


def test_keys_cli(tmp_path: Path, cli: Cli) -> None:
    path = tmp_path / "keys.toml"
    added = cli("keys", "add", str(path), "--id", "ci-bot", "--role", "user")
    assert added.code == 0 and added.out.startswith("esk-") and "only time the key is shown" in added.err
    listed = cli("keys", "list", str(path))
    assert listed.code == 0 and "ci-bot" in listed.out and added.out.strip() not in listed.out
    assert cli("keys", "add", str(path), "--id", "x", "--role", "root").code == 2

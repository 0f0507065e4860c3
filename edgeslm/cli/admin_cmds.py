"""CLI: keys (API keys for serve) and audit (the server's audit log)."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..config import Settings
from ..serve.audit import report, verify
from ..serve.keys import ROLES, add_key, load_keys
from .output import print_json, print_table, status


def configure(sub: Any) -> None:
    keys = sub.add_parser("keys", help="API keys and roles for 'edgeslm serve'")
    ks = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    p: argparse.ArgumentParser = ks.add_parser("add", help="add a key to a key file; the key is shown once")
    p.set_defaults(run=cmd_keys_add)
    p.add_argument("file", type=Path)
    p.add_argument("--id", required=True, help="who or what uses the key (logged in the audit log)")
    p.add_argument("--role", required=True, choices=tuple(ROLES))
    p = ks.add_parser("list", help="ids and roles in a key file")
    p.set_defaults(run=cmd_keys_list)
    p.add_argument("file", type=Path)

    audit = sub.add_parser("audit", help="check or summarise a server audit log")
    au = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    p = au.add_parser("verify", help="check that no line was edited, deleted or moved")
    p.set_defaults(run=cmd_audit_verify)
    p.add_argument("file", type=Path)
    p = au.add_parser("report", help="requests, tokens and refusals per key, role, model and day")
    p.set_defaults(run=cmd_audit_report)
    p.add_argument("file", type=Path)
    p.add_argument("--json", action="store_true")


def cmd_keys_add(args: argparse.Namespace, settings: Settings) -> int:
    key = add_key(args.file, args.id, args.role)
    print(key)
    status(f"added {args.id} ({args.role}) to {args.file}; this is the only time the key is shown")
    return 0


def cmd_keys_list(args: argparse.Namespace, settings: Settings) -> int:
    ring = load_keys(args.file)
    print_table(("ID", "ROLE", "SHA256"), [(k.id, k.role, k.sha256[:12]) for k in ring.keys])
    return 0


def cmd_audit_verify(args: argparse.Namespace, settings: Settings) -> int:
    result = verify(args.file)
    for problem in result.problems:
        print(problem)
    verdict = "intact" if result.ok else f"{len(result.problems)} problem(s)"
    status(f"{args.file}: {result.lines:,} lines, {verdict}; last hash {result.last_hash}")
    return 0 if result.ok else 1


def cmd_audit_report(args: argparse.Namespace, settings: Settings) -> int:
    r = report(args.file)
    if args.json:
        by = {d: {v: asdict(t) for v, t in groups.items()} for d, groups in r.by.items()}
        print_json({"lines": r.lines, "unreadable": r.unreadable, "by": by, "statuses": dict(r.statuses)})
        return 0
    for dimension in ("key", "role", "model", "day"):
        groups = r.by.get(dimension, {})
        rows = [(v, t.requests, t.refused, t.errors, t.tokens_in, t.tokens_out) for v, t in sorted(groups.items())]
        print_table(
            (dimension.upper(), "REQUESTS", "REFUSED", "ERRORS", "TOKENS IN", "TOKENS OUT"), rows, right=(1, 2, 3, 4, 5)
        )
        print()
    if r.unreadable:
        status(f"{r.unreadable} unreadable line(s); run 'edgeslm audit verify {args.file}'")
    return 0

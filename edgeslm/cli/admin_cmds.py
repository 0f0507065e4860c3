"""CLI: keys (API keys for serve) and audit (the server's audit log)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..access.audit import Anchor, Report, VerifyResult, report, verify
from ..access.keys import ROLES, add_key, load_keys
from ..config import Settings
from ..errors import InvalidParameterError
from ..store.atomic import write_beside
from .output import print_table, status


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
    p.add_argument("--anchor", type=Path, metavar="FILE", help="also check the log still ends as anchored then")
    p = au.add_parser("report", help="requests, tokens and refusals per key, role, model and day")
    p.set_defaults(run=cmd_audit_report)
    p.add_argument("file", type=Path)
    p.add_argument("--format", choices=("text", "json", "csv", "html"), default=None, help="default: text")
    p.add_argument("--json", action="store_true", help="the same as --format json")
    p.add_argument("--from", dest="since", metavar="DAY", help="first day (YYYY-MM-DD, UTC) of the period")
    p.add_argument("--to", dest="until", metavar="DAY", help="last day (YYYY-MM-DD, UTC) of the period")
    p.add_argument("--anchor", type=Path, metavar="FILE", help="check the chain against this anchor too")
    p.add_argument("-o", "--output", type=Path, metavar="FILE", help="write the report here (default: stdout)")
    p = au.add_parser("anchor", help="record the log's length and last hash elsewhere (detects a cut end)")
    p.set_defaults(run=cmd_audit_anchor)
    p.add_argument("file", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True, metavar="FILE", help="the anchor (keep it elsewhere)")


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
    result = verify(args.file, Anchor.read(args.anchor) if args.anchor else None)
    for problem in result.problems:
        print(problem)
    verdict = "intact" if result.ok else f"{len(result.problems)} problem(s)"
    status(f"{args.file}: {result.lines:,} lines, {verdict}; last hash {result.last_hash}")
    return 0 if result.ok else 1


def cmd_audit_report(args: argparse.Namespace, settings: Settings) -> int:
    from ..access import compliance

    since, until = compliance.parse_day(args.since, "--from"), compliance.parse_day(args.until, "--to")
    if since and until and since > until:
        raise InvalidParameterError(f"--from {since} is after --to {until}", params=("--from", "--to"))
    r = report(args.file, since, until)
    fmt = "json" if args.json else args.format or "text"
    checked = verify(args.file, Anchor.read(args.anchor) if args.anchor else None)
    period = (args.since, args.until)
    if fmt == "text":
        _print_report(r, checked)
    else:
        text = {
            "json": lambda: json.dumps(compliance.report_json(r, checked, period), indent=2),
            "csv": lambda: compliance.report_csv(compliance.report_rows(r)),
            "html": lambda: compliance.report_html(r, checked, period, args.file.name),
        }[fmt]()
        if args.output:
            write_beside(args.output, text.encode())
            status(f"wrote {args.output}")
        else:
            print(text, end="" if text.endswith("\n") else "\n")
    if r.unreadable:
        status(f"{r.unreadable} unreadable line(s); run 'edgeslm audit verify {args.file}'")
    return 0


def _print_report(r: Report, checked: VerifyResult) -> None:
    for dimension in ("key", "role", "model", "day"):
        groups = r.by.get(dimension, {})
        rows = [(v, t.requests, t.refused, t.errors, t.tokens_in, t.tokens_out) for v, t in sorted(groups.items())]
        print_table(
            (dimension.upper(), "REQUESTS", "REFUSED", "ERRORS", "TOKENS IN", "TOKENS OUT"), rows, right=(1, 2, 3, 4, 5)
        )
        print()
    if r.changes:
        print_table(("TIME", "KEY", "METHOD", "ROUTE", "MODEL", "STATUS"),
                    [(c["time"], c["key_id"] or "-", c["method"], c["route"], c["model"] or "-", c["status"])
                     for c in r.changes])
        print()
    print(f"chain: {'intact' if checked.ok else 'BROKEN: ' + '; '.join(checked.problems[:3])}; "
          f"{checked.lines:,} lines; last hash {checked.last_hash}")


def cmd_audit_anchor(args: argparse.Namespace, settings: Settings) -> int:
    from ..access.compliance import write_anchor

    anchor = write_anchor(args.file, args.output)
    print(f"{args.output}: {anchor.lines:,} lines, last hash {anchor.last_hash}")
    status("keep it off this machine; 'edgeslm audit verify LOG --anchor FILE' then finds a cut or rewritten end")
    return 0

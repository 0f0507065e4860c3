"""CLI: remote (add, list, remove), push, sync, and pull --from (models between stores).

Every push, pull and sync is appended to the device's own audit log (``<home>/audit.log``, or
``--audit-log``): what left the machine and what came in, hash-chained like the server's.
"""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import EdgeslmError, http_status_for
from ..store import ModelName, Store, parse_name
from ..units import format_bytes
from .output import print_json, progress_bar, status

AUDIT_FILE = "audit.log"
Work = Callable[[Store, Any, list[ModelName], Callable[[int], None] | None], Any]  # (store, remote, names, bar)


def configure(sub: Any) -> None:
    remote = sub.add_parser("remote", help="other stores to push to and pull from: an edgeslm server or a hub repo")
    rs = remote.add_subparsers(dest="remote_command", metavar="ACTION", required=True)
    p: argparse.ArgumentParser = rs.add_parser("add", help="name a remote: http(s)://HOST:PORT or hf://ORG/REPO")
    p.set_defaults(run=cmd_remote_add)
    p.add_argument("name")
    p.add_argument("url")
    p.add_argument("--key-file", type=Path, metavar="FILE", help="a file holding the key (a server's) or token (hub)")
    p.add_argument("--force", action="store_true", help="replace a remote of this name")
    p = rs.add_parser("list", help="the remotes")
    p.set_defaults(run=cmd_remote_list)
    p.add_argument("--json", action="store_true")
    p = rs.add_parser("remove", help="forget a remote (nothing on it changes)")
    p.set_defaults(run=cmd_remote_remove)
    p.add_argument("name")
    p = sub.add_parser("push", help="send models to a remote: only the blobs it lacks; needs an admin key there")
    p.set_defaults(run=cmd_push)
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--to", required=True, metavar="REMOTE")
    _transfer_flags(p, "replace models of the same names with other content on the remote")
    p = sub.add_parser("sync", help="make this store hold a remote's models (all, or those named) as it does")
    p.set_defaults(run=cmd_sync)
    p.add_argument("names", nargs="*", metavar="NAME", help="default: every model on the remote")
    p.add_argument("--from", dest="source", required=True, metavar="REMOTE")
    p.add_argument("--prune", action="store_true", help="also remove every stored model not synced")
    _transfer_flags(p, None)


def _transfer_flags(p: argparse.ArgumentParser, force_help: str | None) -> None:
    if force_help:
        p.add_argument("--force", action="store_true", help=force_help)
    p.add_argument("--audit-log", type=Path, metavar="FILE", help=f"where the transfer is logged (<home>/{AUDIT_FILE})")
    p.add_argument("--json", action="store_true")


def cmd_remote_add(args: argparse.Namespace, settings: Settings) -> int:
    from ..sync import add_remote

    remote = add_remote(settings.home, args.name, args.url, args.key_file, force=args.force)
    key = f", key from {remote.key_file}" if remote.key_file else ", no key"
    status(f"remote {remote.name}: {remote.url} ({remote.kind.value}{key})")
    return 0


def cmd_remote_list(args: argparse.Namespace, settings: Settings) -> int:
    from ..sync import load_remotes

    remotes = load_remotes(settings.home)
    if args.json:
        print_json([{**asdict(r), "kind": r.kind.value} for r in remotes.values()])
        return 0
    if not remotes:
        status("no remotes yet; add one: edgeslm remote add NAME http://HOST:PORT --key-file FILE")
    for r in remotes.values():
        print(f"{r.name}\t{r.url}\t{r.kind.value}\t{'key: ' + r.key_file if r.key_file else 'no key'}")
    return 0


def cmd_remote_remove(args: argparse.Namespace, settings: Settings) -> int:
    from ..sync import remove_remote

    remote = remove_remote(settings.home, args.name)
    status(f"removed remote {remote.name} ({remote.url}); nothing on it changed")
    return 0


def cmd_push(args: argparse.Namespace, settings: Settings) -> int:
    from ..sync import push

    return _transfer(args, settings, "PUSH", args.to, lambda store, remote, names, bar: push(
        store, remote, names, force=args.force, progress=bar))


def cmd_pull_from(args: argparse.Namespace, settings: Settings) -> int:
    """``edgeslm pull NAME… --from REMOTE`` (store_cmds hands it here)."""
    from ..sync import pull

    return _transfer(args, settings, "PULL", args.source, lambda store, remote, names, bar: pull(
        store, remote, names, force=args.force, progress=bar))


def cmd_sync(args: argparse.Namespace, settings: Settings) -> int:
    from ..sync import sync

    return _transfer(args, settings, "SYNC", args.source, lambda store, remote, names, bar: sync(
        store, remote, names, prune=args.prune, progress=bar))


def _transfer(args: argparse.Namespace, settings: Settings, method: str, remote_name: str, work: Work) -> int:
    """Run ``work`` against the named remote with a progress bar, logged in the device's audit log."""
    from ..sync import get_remote

    names = [parse_name(n) for n in args.names]
    remote = get_remote(settings.home, remote_name)
    store = Store.open(settings.models_dir)
    label = f"{method.lower()} {'to' if method == 'PUSH' else 'from'} {remote.name}"
    with _Audited(args, settings, method, remote.name, remote.url, args.names or ["*"]), \
            progress_bar(None, label, enabled=not args.json) as bar:
        done = work(store, remote, names, bar)
    return _report(args, done, "sent" if method == "PUSH" else "fetched")


def _report(args: argparse.Namespace, done: Any, verb: str) -> int:
    if args.json:
        print_json(asdict(done))
        return 0
    same = [m for m in done.models if m not in done.changed]
    status(f"{done.remote}: {verb} {done.blobs_moved} blob(s), {format_bytes(done.bytes_moved)}; "
           f"{done.blobs_skipped} already there")
    for name in done.changed:
        print(f"updated\t{name}")
    for name in same:
        print(f"unchanged\t{name}")
    for name in done.removed:
        print(f"removed\t{name}")
    return 0


class _Audited:
    """Append one audit line when the transfer ends: its status 200, or the error's HTTP status."""

    def __init__(self, args: argparse.Namespace, settings: Settings, method: str, remote: str, url: str,
                 names: list[str]) -> None:
        self.path = args.audit_log or settings.home / AUDIT_FILE
        self.method, self.route, self.url, self.model = method, f"remote:{remote}", url, ", ".join(names)[:256]

    def __enter__(self) -> None:
        self.started = dt.datetime.now(dt.timezone.utc)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        from ..access.audit import AuditLog, AuditRecord

        code = 200 if exc is None else http_status_for(exc) if isinstance(exc, EdgeslmError) else 500
        now = dt.datetime.now(dt.timezone.utc)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        log = AuditLog(self.path)
        log.write(AuditRecord(
            time=now.isoformat(timespec="milliseconds"), key_id=None, role=None, client=self.url,
            method=self.method, route=self.route, model=self.model, status=code,
            duration_ms=round((now - self.started).total_seconds() * 1000, 1),
        ))
        log.close()

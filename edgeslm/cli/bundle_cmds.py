"""CLI: bundle (models sealed in one archive: create, verify, import; keys to sign them)."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..config import Settings
from ..store import Store, parse_name
from ..units import format_bytes
from .output import print_json, progress_bar, status


def configure(sub: Any) -> None:
    bundle = sub.add_parser("bundle", help="models sealed in one archive, for a machine without a network")
    bs = bundle.add_subparsers(dest="bundle_command", metavar="ACTION", required=True)
    p: argparse.ArgumentParser = bs.add_parser("create", help="write models (manifests and blobs) into one file")
    p.set_defaults(run=cmd_create)
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="FILE", help="the bundle, e.g. models.eslm")
    p.add_argument("--sign", type=Path, metavar="KEY", help="sign it with this private key (bundle keygen)")
    p = bs.add_parser("verify", help="check every digest (and the signature, with --key) without importing")
    p.set_defaults(run=cmd_verify)
    p.add_argument("file", type=Path)
    p.add_argument("--key", type=Path, metavar="PUB", help="require a signature by this public key")
    p.add_argument("--json", action="store_true")
    p = bs.add_parser("import", help="check everything, then add the bundle's models to the store")
    p.set_defaults(run=cmd_import)
    p.add_argument("file", type=Path)
    p.add_argument("--key", type=Path, metavar="PUB", help="require a signature by this public key")
    p.add_argument("--force", action="store_true", help="replace models of the same names with other content")
    p.add_argument("--json", action="store_true")
    p = bs.add_parser("keygen", help="a new Ed25519 key pair: FILE (private) and FILE.pub")
    p.set_defaults(run=cmd_keygen)
    p.add_argument("file", type=Path)


def cmd_create(args: argparse.Namespace, settings: Settings) -> int:
    from ..bundle import create_bundle

    store = Store.open(settings.models_dir)
    names = [parse_name(n) for n in args.names]
    with progress_bar(None, "bundling", enabled=True) as bar:
        made = create_bundle(store, names, args.output, key=args.sign, progress=bar)
    signed = "signed" if made.signed else "not signed"
    status(f"wrote {made.path}: {', '.join(made.models)}; {made.blobs} blob(s), {format_bytes(made.bytes)}, {signed}")
    return 0


def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    from ..bundle import verify_bundle

    report = verify_bundle(args.file, args.key)
    if args.json:
        print_json(asdict(report))
        return 0
    print(f"{args.file}: intact; {', '.join(report.models)}; {report.blobs} blob(s), {format_bytes(report.bytes)}")
    print(_signature(report.signed, report.key_checked))
    return 0


def cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    from ..bundle import import_bundle

    report = import_bundle(Store.open(settings.models_dir), args.file, args.key, force=args.force)
    if args.json:
        print_json(asdict(report))
        return 0
    print(f"imported {', '.join(report.imported) or 'nothing new'}"
          + (f"; already stored: {', '.join(report.unchanged)}" if report.unchanged else ""))
    print(f"{report.blobs_written} blob(s) written, {report.blobs_present} already stored; "
          + _signature(report.signed, report.key_checked))
    return 0


def cmd_keygen(args: argparse.Namespace, settings: Settings) -> int:
    from ..bundle.signing import generate_key

    public = generate_key(args.file)
    status(f"wrote {args.file} (private: keep it; sign with --sign) and {public} (give it to whoever imports)")
    return 0


def _signature(signed: bool, checked: bool) -> str:
    if checked:
        return "signature: valid for the key given"
    return "signature: present, not checked (give --key PUB)" if signed else "signature: none"

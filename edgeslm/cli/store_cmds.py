"""CLI commands over the store: pull, import, list, show, cp, rm, verify, catalog."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import DEFAULT_MODEL, Settings
from ..errors import UsageError
from ..formats.model_format import RUNTIME_OF
from ..formats.size_class import SIZE_CLASSES, SizeClass
from ..listing import list_models
from ..sources.catalog import CATALOG, CatalogEntry, filter_catalog
from ..store import Store, parse_name
from ..store.records import Manifest
from ..units import format_bytes, format_mib, format_params, parse_bytes, parse_count
from .output import confirm, print_fields, print_json, print_table, progress_bar, status

if TYPE_CHECKING:
    from ..show import ModelReport

Handler = Callable[[argparse.Namespace, Settings], int]


def _arg_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__
    return convert


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(f"{text} must be a positive integer")
    return value


def _command(sub: Any, name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
    parser.set_defaults(run=handler)
    return parser


def configure(sub: Any) -> None:
    classes = [c.value for c in SizeClass]
    p = _command(sub, "pull", cmd_pull, "add a builtin, catalogue or hf.co/ORG/REPO[:QUANT] model to the store")
    p.add_argument("names", nargs="*", metavar="NAME", default=[DEFAULT_MODEL], help=f"default: {DEFAULT_MODEL}")
    p.add_argument("--from", dest="source", metavar="REMOTE", help="from a remote (edgeslm remote add) instead")
    p.add_argument("--force", action="store_true", help="with --from: replace models of the same names")
    p.add_argument("--audit-log", type=Path, metavar="FILE", help="with --from: where it is logged (<home>/audit.log)")
    p.add_argument("--json", action="store_true")
    p = _command(sub, "import", cmd_import, "add a local GGUF file or ONNX Runtime GenAI folder to the store")
    p.add_argument("path", type=Path)
    p.add_argument("--name", help="name[:tag] to store it as (default: the file's or folder's name)")
    p.add_argument("--imatrix", type=Path, metavar="FILE", help="its importance matrix (llama-imatrix's), kept with it")
    p.add_argument("--json", action="store_true")
    p = _command(sub, "list", cmd_list, "list stored models (name:tag, size, params, class, type mix, digest)")
    p.add_argument("name", nargs="?", help="only this model (all its tags unless a tag is given)")
    p.add_argument("--class", dest="size_class", choices=classes)
    p.add_argument("--max-size", type=_arg_type(parse_bytes), help="e.g. 200MB, 1.5GiB")
    p.add_argument("--family", help="architecture or family, e.g. llama, gemma3, smollm2")
    p.add_argument("--json", action="store_true")
    p = _command(sub, "show", cmd_show, "everything about a stored model (or a .gguf file path)")
    p.add_argument("name", nargs="?", default=DEFAULT_MODEL, help=f"default: {DEFAULT_MODEL}")
    p.add_argument("--ctx", type=_arg_type(_positive_int), help="context length for the memory estimate")
    p.add_argument("--metadata", action="store_true", help="also print every metadata key")
    p.add_argument("--modelfile", action="store_true", help="print a Modelfile that recreates the model")
    p.add_argument("--json", action="store_true")
    p = _command(sub, "cp", cmd_cp, "copy a model to a new name (no bytes are copied)")
    p.add_argument("source")
    p.add_argument("destination")
    p = _command(sub, "rm", cmd_rm, "remove models, freeing blobs no other name uses")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask")
    p = _command(sub, "verify", cmd_verify, "re-hash every blob and check every manifest")
    p.add_argument("--json", action="store_true")
    p = _command(sub, "catalog", cmd_catalog, "the curated catalogue of model families")
    p.add_argument("--class", dest="size_class", choices=classes)
    p.add_argument("--license", dest="licence")
    p.add_argument("--family")
    p.add_argument("--max-params", type=_arg_type(parse_count), help="e.g. 2B, 500M")
    p.add_argument("--fits", type=_arg_type(parse_bytes), help="memory available, e.g. 4GB")
    p.add_argument("--json", action="store_true")


def _open(settings: Settings) -> Store:
    return Store.open(settings.models_dir)


def _summary(m: Manifest) -> dict[str, Any]:
    return {
        "name": str(m.name),
        "digest": m.digest,
        "size": m.size,
        "created": m.created,
        "source": dict(m.source),
        "format": m.format.value,
        "runtime": RUNTIME_OF[m.format].value,
        "files": {x.path: x.size for x in m.layers} or None,
        **m.info.to_dict(),
    }


def cmd_pull(args: argparse.Namespace, settings: Settings) -> int:
    from ..pull import pull

    if args.source:
        from .sync_cmds import cmd_pull_from

        return cmd_pull_from(args, settings)
    if args.force or args.audit_log:
        raise UsageError("--force and --audit-log go with --from REMOTE")
    store = _open(settings)
    results = []
    for name in args.names:
        with progress_bar(None, name, enabled=not args.json) as bar:
            result = pull(store, name, settings, progress=bar, show_hub_progress=not args.json)
        results.append(result)
        if not args.json:
            state = "pulled" if result.changed else "up to date"
            status(
                f"{state}: {result.manifest.name} ({format_bytes(result.manifest.size)}, {result.manifest.digest[:19]})"
            )
    if args.json:
        print_json([{**_summary(r.manifest), "changed": r.changed} for r in results])
    return 0


def cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    from ..importing import import_model, import_size

    name = parse_name(args.name) if args.name else None
    store = _open(settings)
    if args.imatrix:
        from ..calibrate import check_imatrix_for

        check_imatrix_for(args.path, args.imatrix)  # before the model is stored: both or neither
    with progress_bar(import_size(args.path), args.path.name, enabled=not args.json) as bar:
        manifest = import_model(store, args.path, name, progress=bar)
    if args.imatrix:
        from ..calibrate import adopt_imatrix

        kept = adopt_imatrix(store, manifest, args.imatrix)
        status(f"kept its importance matrix {args.imatrix.name} ({kept.name}): quantize --imatrix {manifest.name}")
    if args.json:
        print_json(_summary(manifest))
    else:
        status(f"imported {args.path} as {manifest.name} ({format_bytes(manifest.size)}, {manifest.digest[:19]})")
    return 0


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    size_class = SizeClass(args.size_class) if args.size_class else None
    models = list_models(
        _open(settings), name=args.name, size_class=size_class, max_size=args.max_size, family=args.family
    )
    if args.json:
        print_json([_summary(m) for m in models])
        return 0
    rows = [
        (
            str(m.name),
            m.format.value,
            format_bytes(m.size),
            format_params(m.info.n_params),
            m.info.size_class.value,
            m.info.architecture,
            m.info.type_mix_summary(),
            m.digest[7:19],
        )
        for m in models
    ]
    print_table(("NAME", "FORMAT", "SIZE", "PARAMS", "CLASS", "ARCH", "TYPE MIX", "DIGEST"), rows, right=(2, 3))
    return 0


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    from ..show import show_model

    if args.modelfile:
        from ..modelfile import modelfile_of

        store = _open(settings)
        print(modelfile_of(store, store.get(parse_name(args.name))), end="")
        return 0
    store = _open(settings)
    report = show_model(store, args.name, context_length=args.ctx)
    manifest = store.find(parse_name(args.name)) if not args.name.endswith(".gguf") else None
    if args.json:
        extra = {"adapters": [a.to_json() for a in manifest.adapters], "defaults": dict(manifest.defaults)} if (
            manifest and (manifest.adapters or manifest.defaults)) else {}
        print_json({**report.to_dict(), **extra})
    else:
        _print_report(report, with_metadata=args.metadata)
        if manifest is not None and (manifest.adapters or manifest.defaults):
            _print_custom(manifest)
    return 0


def _print_custom(m: Manifest) -> None:
    """What ``create`` added to the base: adapters, system prompt, parameters, messages, template."""
    d = m.defaults
    rows: list[tuple[str, Any]] = [
        (f"adapter {a.label or a.digest[:19]}", f"scale {a.scale:g}, {format_bytes(a.size)}, {a.digest[:19]}")
        for a in m.adapters
    ]
    if d.get("system") is not None:
        rows.append(("system", str(d["system"])[:200].replace("\n", " ")))
    rows += [(f"parameter {k}", json.dumps(v)) for k, v in (d.get("parameters") or {}).items()]
    if d.get("messages"):
        rows.append(("messages", f"{len(d['messages'])} example message(s)"))
    if d.get("template_source"):
        rows.append(("template", "its own (show --modelfile prints it)"))
    print("\n  custom model (edgeslm create)")
    print_fields(rows, indent=4)


def _print_report(r: ModelReport, *, with_metadata: bool) -> None:
    i = r.info
    print(f"  {r.name or r.path}")
    print_fields(
        [
            ("architecture", i.architecture),
            ("parameters", f"{format_params(i.n_params)} ({i.n_params:,})"),
            ("size class", i.size_class_label),
            ("file type", i.file_type or "not stated"),
            ("file size", f"{format_bytes(i.file_size)} ({i.file_size:,} bytes)"),
            ("bits per weight", f"{i.bits_per_weight:.2f}"),
            ("context length", i.context_length),
            ("embedding length", i.embedding_length),
            ("layers", i.block_count),
            ("heads / kv heads", f"{i.head_count} / {i.head_count_kv}"),
            ("vocabulary", f"{i.vocab_size} ({i.tokenizer_model or 'no tokenizer'})"),
            ("chat template", "yes" if i.has_chat_template else
             "no (an embedding model)" if i.embedding_only else "no (plain completion)"),
            ("license", i.general.get("license", "not stated")),
            ("name in file", i.general.get("name", "not stated")),
            ("digest", r.digest or "(not in the store)"),
            ("source", _source_text(r.source)),
        ]
    )
    if r.source.get("kind") in LINEAGE_KINDS:
        _print_lineage(r)
    if r.source.get("kind") == "catalogue":
        _print_provenance(r.source)
    m = r.memory
    print(
        f"\n  memory at {m.context_length:,} tokens of context: {format_mib(m.total_bytes)} "
        f"(weights {format_mib(m.weights_bytes)} + f{8 * i.kv_bytes_per_element} KV cache "
        f"{format_mib(m.kv_cache_bytes)})"
    )
    print("\n  tensor types")
    rows = [
        (
            s.ggml_type,
            f"{s.n_params:,}",
            f"{100 * s.n_params / i.stored_values:.1f}%",
            format_bytes(s.n_bytes),
            s.n_tensors,
        )
        for s in i.type_mix
    ]
    print_table(
        ("  TYPE", "PARAMS", "SHARE", "BYTES", "TENSORS"), [("  " + r[0], *r[1:]) for r in rows], right=(1, 2, 3, 4)
    )
    if with_metadata:
        print("\n  metadata")
        print_fields(sorted(r.metadata.items()), indent=4)


LINEAGE_KINDS = {"quantize": "quantized from", "convert": "built from"}  # sources with a parent in the store


def _source_text(source: dict[str, str]) -> str:
    if (verb := LINEAGE_KINDS.get(source.get("kind", ""))) is not None:
        return f"{verb} {source.get('parent_name')} (lineage below)"
    if source.get("kind") == "catalogue":
        return f"catalogue {source.get('catalogue')}, pinned to its upstream bytes (provenance below)"
    return ", ".join(f"{k}={v}" for k, v in source.items())


def _print_provenance(src: dict[str, str]) -> None:
    print("\n  provenance")
    rows = [
        ("upstream", f"{src.get('upstream')} at revision {src.get('revision')}"),
        ("file", src.get("file", "")),
        ("sha256", f"{src.get('sha256')} ("
                   + ("the weights it was converted from have it)" if src.get("mirror") and src.get("folder")
                      else "the stored bytes have it)")),
        ("licence", src.get("licence", "")),
        ("checkpoint", src.get("checkpoint", "")),
        ("fetched from", src.get("mirror", "")),
    ]
    print_fields(rows, indent=4)


def _print_lineage(r: ModelReport) -> None:
    src = r.source
    print("\n  lineage")
    rows = [
        ("parent", f"{src.get('parent_name')} ({src.get('parent', '')[:19]})"),
        ("parent type", src.get("parent_type", "")),
        ("type asked", src.get("requested", "")),
        ("type got", r.info.type_mix_summary(4)),
        ("options", src.get("options", "")),
        ("made with", src.get("llama_cpp") or src.get("made_with", "")),
    ]
    if src.get("imatrix"):
        rows.insert(4, ("imatrix", f"{src['imatrix'][:19]} on {src.get('imatrix_text', '?')} "
                                   f"({src.get('imatrix_chunks', '?')} tokens)"))
    print_fields(rows, indent=4)


def cmd_cp(args: argparse.Namespace, settings: Settings) -> int:
    src, dst = parse_name(args.source), parse_name(args.destination)
    manifest = _open(settings).copy(src, dst)
    status(f"copied {src} to {manifest.name}")
    return 0


def cmd_rm(args: argparse.Namespace, settings: Settings) -> int:
    store = _open(settings)
    plan = store.plan_remove([parse_name(n) for n in args.names])
    names = ", ".join(str(m.name) for m in plan.manifests)
    status(f"will remove {names}, freeing {format_bytes(plan.freed_bytes)} ({len(plan.blobs)} blob(s))")
    confirm("Remove?", args.yes)
    freed = store.execute_remove(plan)
    status(f"deleted {names}; freed {format_bytes(freed)}")
    return 0


def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    store = Store(settings.models_dir)  # not Store.open: verify sweeps itself and reports it
    with progress_bar(None, "verifying", enabled=not args.json) as bar:
        from ..store.verify import verify_store

        report = verify_store(store, progress=bar)
    if args.json:
        print_json(
            {
                "ok": report.ok,
                "checked_blobs": report.checked_blobs,
                "checked_manifests": report.checked_manifests,
                "problems": [{"subject": p.subject, "detail": p.detail} for p in report.problems],
                "removed_stale_temps": [p.name for p in report.swept.stale_temps],
                "removed_orphan_blobs": list(report.swept.orphan_blobs),
            }
        )
    else:
        for path in report.swept.stale_temps:
            status(f"removed stale temp file {path.name}")
        for digest in report.swept.orphan_blobs:
            status(f"removed unreferenced blob {digest}")
        for p in report.problems:
            print(f"PROBLEM {p.subject}: {p.detail}")
        verdict = "clean" if report.ok else f"{len(report.problems)} problem(s)"
        print(f"{report.checked_manifests} model(s), {report.checked_blobs} blob(s) checked: {verdict}")
    return 0 if report.ok else 1


def _catalogue_source(e: CatalogEntry) -> str:
    if e.builtin:
        return "builtin"
    if e.pinned:
        return f"{e.gguf_repo} (pinned, mirrored)"
    return e.gguf_repo or "(convert)"


def cmd_catalog(args: argparse.Namespace, settings: Settings) -> int:
    size_class = SizeClass(args.size_class) if args.size_class else None
    entries = filter_catalog(
        CATALOG,
        size_class=size_class,
        licence=args.licence,
        family=args.family,
        max_params=args.max_params,
        fits_bytes=args.fits,
    )
    if args.json:
        print_json(
            [{**e.__dict__, "size_class": e.size_class, "estimated_bytes": e.estimated_bytes()} for e in entries]
        )
        return 0
    rows = [
        (
            e.name,
            format_params(e.n_params) if e.n_params else "",
            e.size_class.value if e.size_class else "",
            e.licence or "",
            f"{e.context_length:,}" if e.context_length else "",
            e.recommended_quant,
            _catalogue_source(e),
        )
        for e in entries
    ]
    print_table(("NAME", "PARAMS", "CLASS", "LICENSE", "CONTEXT", "QUANT", "SOURCE"), rows, right=(1, 4))
    if not args.json:
        status("size classes: " + "; ".join(c.label for c in SIZE_CLASSES))
    return 0

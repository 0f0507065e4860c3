"""CLI: serve (the Ollama- and OpenAI-compatible server) and ps (what a running server has loaded)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ..config import DEFAULT_MODEL, Settings
from ..errors import OfflineError, UsageError
from ..runner import LOAD_TIMEOUT
from ..serve.limits import MAX_BODY
from ..serve.options import DEFAULT_KEEP_ALIVE, DEFAULT_PORT, ServeOptions, check_options
from ..units import format_bytes, parse_bytes
from .draft_flags import add_draft_flags, serve_drafts
from .kv_flags import add_kv_flag, serve_kv
from .output import print_json, print_table, status
from .tuned import add_batch_flags, tuned_threads, tuning


def _size(text: str) -> int:
    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def configure(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("serve", help="serve models over Ollama's and OpenAI's APIs")
    p.set_defaults(run=cmd_serve)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; Ollama's is 11434)")
    p.add_argument("--api-keys", type=Path, help="key file ('edgeslm keys add'); without it: loopback only, no keys")
    p.add_argument("--audit-log", type=Path, help="append one hash-chained JSON line per request to this file")
    p.add_argument("--audit-prompts", action="store_true", help="also log prompts in the audit log")
    p.add_argument("--parallel", type=int, default=4, help="requests decoded together per model (default 4)")
    p.add_argument("--ctx", type=int, default=2048, help="context tokens per parallel slot (default 2048)")
    p.add_argument("--queue", type=int, default=32, help="requests that may wait per model beyond the slots")
    p.add_argument("--max-loaded", type=int, default=3, help="models loaded at once (default 3)")
    p.add_argument("--max-memory", "--memory", dest="memory", type=_size,
                   help="memory for loaded models, by their plans (default: 3/4 of the machine's); a model whose "
                        "plan is larger is refused (HTTP 507), idle models are unloaded to make room")
    p.add_argument("--keep-alive", type=float, default=DEFAULT_KEEP_ALIVE, help="seconds an idle model stays")
    p.add_argument("--threads", type=int, help="threads per runner (default: edgeslm tune's, else physical cores)")
    add_kv_flag(p, per_model=True)
    add_batch_flags(p)
    p.add_argument("--cors-origin", action="append", default=[], help="a browser origin allowed to call (repeat)")
    p.add_argument("--allow-host", action="append", default=[], help="a Host name accepted on loopback (repeat)")
    p.add_argument("--max-body", type=_size, default=MAX_BODY, help="largest request body (default 8MiB)")
    p.add_argument(
        "--no-prompt-cache", dest="prompt_cache", action="store_false",
        help="decode every prompt in full (reproducible greedy replies; slower first tokens)",
    )
    p.add_argument(
        "--deterministic", action="store_true",
        help="decode every request in a batch of its own: a greedy reply is the same whatever runs beside it "
             "(requests can ask for it alone: 'deterministic': true; costs batching)",
    )
    p.add_argument(
        "--load-timeout", type=float, default=LOAD_TIMEOUT, metavar="SECONDS",
        help=f"a model still loading after this long is stopped and its requests fail (default {LOAD_TIMEOUT:g})",
    )
    p.add_argument("--pin", action="append", default=[], metavar="MODEL", help="load MODEL at start and keep it "
                   "loaded: never expired, never evicted for another model (repeatable)")
    add_draft_flags(p, models=False, per_model=True)
    p.add_argument("--preload", default=DEFAULT_MODEL, help=f"model loaded at start (default {DEFAULT_MODEL}; '' none)")
    ray = p.add_argument_group("scale-out on Ray Serve (the extra edgeslm[ray])")
    ray.add_argument("--ray", action="store_true", help="each --model a Ray Serve deployment of edgeslm runners")
    ray.add_argument("--model", action="append", default=[], metavar="NAME", help="a model to deploy (repeatable)")
    ray.add_argument("--min-replicas", type=int, default=1, help="replicas per model at least (default 1)")
    ray.add_argument("--max-replicas", type=int, default=2, help="replicas per model at most (default 2)")
    ray.add_argument("--replica-cpus", type=float, default=1.0, help="Ray CPUs reserved per replica (default 1)")
    ray.add_argument("--ray-address", metavar="ADDRESS", help="join this Ray cluster ('auto', ray://HOST:10001)")

    p = sub.add_parser("ps", help="models loaded by a running server")
    p.set_defaults(run=cmd_ps)
    p.add_argument("--server", help="HOST:PORT or URL of the server (default: $EDGESLM_HOST, else 127.0.0.1:8434)")
    p.add_argument("--json", action="store_true")


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from ..serve.app import create_app

    options = ServeOptions(
        host=args.host, port=args.port, api_keys=args.api_keys, audit_log=args.audit_log,
        audit_prompts=args.audit_prompts, parallel=args.parallel, ctx=args.ctx, max_loaded=args.max_loaded,
        memory=args.memory, queue=args.queue, keep_alive=args.keep_alive,
        threads=tuned_threads(args, settings),
        cors_origins=tuple(args.cors_origin), allowed_hosts=tuple(args.allow_host), max_body=args.max_body,
        preload=args.preload or None, pin=tuple(args.pin), prompt_cache=args.prompt_cache,
        load_timeout=args.load_timeout, draft=serve_drafts(args), kv=serve_kv(args.kv_type),
        tuning=tuning(args, settings), deterministic=args.deterministic,
    )
    check_options(options)
    if args.ray:
        return _serve_ray(args, options, settings)
    if args.model:
        raise UsageError("--model names the models of serve --ray; the plain server serves every stored model")
    app = create_app(options, settings)
    logging.getLogger("edgeslm").setLevel(logging.INFO)
    where = f"http://{'[' + args.host + ']' if ':' in args.host else args.host}:{args.port}"
    status(f"edgeslm serve on {where} — Ollama API at {where}/api, OpenAI API at {where}/v1")
    if options.api_keys is None:
        status("no --api-keys: listening on loopback only, every local client may use every route")
    config = uvicorn.Config(app, host=args.host, port=args.port, access_log=False, log_level="warning",
                            timeout_graceful_shutdown=5)
    uvicorn.Server(config).run()
    return 0


def _serve_ray(args: argparse.Namespace, options: ServeOptions, settings: Settings) -> int:
    from ..serve.ray_app import RayParams, require_ray, run_ray

    require_ray()
    params = RayParams(tuple(args.model), args.min_replicas, args.max_replicas, args.replica_cpus, args.ray_address)
    logging.getLogger("edgeslm").setLevel(logging.INFO)
    where = f"http://{'[' + args.host + ']' if ':' in args.host else args.host}:{args.port}"
    status(f"edgeslm serve --ray on {where}: {', '.join(params.models)}, {params.min_replicas}-{params.max_replicas} "
           f"replica(s) each of {options.parallel} slot(s)")
    run_ray(options, settings, params)
    return 0


def server_url(text: str) -> str:
    return text.rstrip("/") if "://" in text else f"http://{text}"


def cmd_ps(args: argparse.Namespace, settings: Settings) -> int:
    url = server_url(args.server or settings.server) + "/api/ps"
    request = urllib.request.Request(url)
    if settings.api_key:
        request.add_header("Authorization", f"Bearer {settings.api_key}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            data = json.load(response)
    except urllib.error.HTTPError as exc:
        detail = exc.read(2000).decode(errors="replace")
        raise UsageError(f"the server at {url} answered {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise OfflineError(f"no server at {url} ({exc}); start one with 'edgeslm serve'") from None
    if args.json:
        print_json(data)
        return 0
    rows = [
        (m["name"], format_bytes(int(m["size"])), f"{m.get('in_flight', 0)}/{m.get('slots', '?')}",
         m.get("context_length", ""), "pinned" if m.get("pinned") else m["expires_at"][:19].replace("T", " "),
         ", ".join(m.get("adapters") or []) or "-")
        for m in data.get("models", [])
    ]
    print_table(("NAME", "MEMORY", "BUSY/SLOTS", "CONTEXT", "EXPIRES (UTC)", "ADAPTERS"), rows, right=(1, 2, 3))
    if not rows:
        print("no models loaded", file=sys.stderr)
    return 0


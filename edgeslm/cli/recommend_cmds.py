"""CLI: recommend."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import Any

from ..config import DEFAULT_CONTEXT, Settings
from ..device import DEVICE_KINDS, Device, describe, detect
from ..optimize.constraints import parse_size
from ..recommend import QUALITY_LEVELS, USE_CASES, Recommendation, recommend
from ..store import Store
from ..units import format_bytes
from .output import print_json, print_table


def configure(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "recommend",
        help="what to run on this machine, or on a device you describe, with reasons",
        description="Without device options: this machine, detected. Any of --device, --ram, --cores, --simd, --gpu, "
        "--npu, --os describes another device (--ram is then required).",
    )
    p.set_defaults(run=cmd_recommend)
    p.add_argument("--device", choices=DEVICE_KINDS, help="the kind of device")
    p.add_argument("--ram", help="its RAM, e.g. 4GB")
    p.add_argument("--cores", type=int, help="its physical (performance) cores")
    p.add_argument("--simd", help="its SIMD features, comma-separated: NEON,DOTPROD or AVX2,AVX-512")
    p.add_argument("--gpu", help="its GPU, e.g. 'Adreno 740'; 'none' for none")
    p.add_argument("--npu", action="store_true", help="it has an NPU")
    p.add_argument("--os", dest="os_name", choices=("android", "ios", "linux", "darwin", "windows"))
    p.add_argument("--arch", choices=("arm64", "x86_64"))
    p.add_argument("--use-case", default="chat", choices=tuple(USE_CASES))
    p.add_argument("--quality", choices=QUALITY_LEVELS, help="how much quality matters (default: by use case)")
    p.add_argument(
        "--ctx", type=int, default=DEFAULT_CONTEXT,
        help=f"context length to budget the KV cache for (default {DEFAULT_CONTEXT})",
    )
    p.add_argument("--json", action="store_true")


def _device(args: argparse.Namespace) -> Device:
    described = any(
        v not in (None, False) for v in (args.device, args.ram, args.cores, args.simd, args.gpu, args.npu, args.os_name)
    )
    if not described:
        return detect()
    if args.ram is None:
        from ..errors import InvalidParameterError

        raise InvalidParameterError("a described device needs --ram, e.g. --ram 4GB")
    simd = tuple(s.strip().upper() for s in args.simd.split(",") if s.strip()) if args.simd else None
    gpus = () if args.gpu in (None, "none") else (args.gpu,)
    return describe(
        kind=args.device, ram=parse_size("--ram", args.ram), cores=args.cores, simd=simd, gpus=gpus, npu=args.npu,
        os_name=args.os_name, arch=args.arch,
    )


def cmd_recommend(args: argparse.Namespace, settings: Settings) -> int:
    device = _device(args)
    store = Store.open(settings.models_dir)
    from ..plan.profile import memory_constants

    rec = recommend(device, use_case=args.use_case, quality=args.quality, ctx=args.ctx, store=store,
                    constants=memory_constants(settings.home))
    if args.json:
        print_json(asdict(rec))
        return 0
    _print(rec)
    return 0


def _print(rec: Recommendation) -> None:
    d = rec.device
    where = "this machine (detected)" if d.detected else f"a described {d.kind}"
    free = f", {format_bytes(d.available_ram)} free" if d.available_ram is not None else ""
    print(f"Device: {where}: {d.kind}, {format_bytes(d.ram)} RAM{free}, {d.cores} cores, {d.arch}, {d.os}")
    print(f"  SIMD: {', '.join(d.simd) or 'none detected'}; GPU: {', '.join(d.gpus) or 'none'}; NPU: {d.npu}")
    for note in d.notes:
        print(f"  note: {note}")
    print(f"Use case: {rec.use_case} ({rec.quality}); context {rec.ctx:,} tokens\n")
    for a in rec.advice:
        print(f"{a.topic}: {a.choice}\n    {a.why}")
    print("\nFrom the catalogue:")
    if not rec.catalogue:
        print(f"  nothing in the catalogue fits {format_bytes(rec.budget)} for {rec.use_case}")
    print_table(("MODEL", "MEMORY", "WHY"), [(p.name, format_bytes(p.memory), p.why) for p in rec.catalogue])
    print("\nIn your store:")
    if not rec.local:
        print(f"  no stored model fits {format_bytes(rec.budget)} at {rec.ctx:,} tokens for {rec.use_case}")
    print_table(("MODEL", "MEMORY", "WHY"), [(p.name, format_bytes(p.memory), p.why) for p in rec.local])
    if rec.plan is not None:
        c = rec.plan.chosen
        print(f"\nPlanned for {format_bytes(rec.budget)} ({rec.plan.fitting} of {rec.plan.considered} configurations "
              f"fit): {c.name}, {c.ctx:,} tokens × {c.slots}, {c.kv} KV cache, {format_bytes(c.memory)}\n  "
              f"{rec.plan_note}")
    elif rec.plan_note:
        print(f"\nPlanned: none ({rec.plan_note})")

"""CLI: plan (what a configuration of a model takes on this machine, before it loads)."""

from __future__ import annotations

import argparse
from typing import Any

from ..config import Settings
from ..units import format_mib
from .kv_flags import add_kv_flag
from .output import print_json, print_table, status

PARTS = (("mapped", "weights, the mapped file"), ("repacked", "weights, llama.cpp's repacked copy"),
         ("kv_cache", "KV cache"), ("compute", "compute buffers"), ("vocabulary", "vocabulary tables"),
         ("base", "the runner process"))


def configure(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "plan", help="the memory a model takes at a context, slots and KV cache type, predicted before it loads",
        description="Peak memory of the runner that would serve MODEL, part by part, from its file's header.")
    p.set_defaults(run=cmd_plan)
    p.add_argument("model")
    p.add_argument("--ctx", type=int, default=2048, help="context tokens per slot (default 2048, as serve)")
    p.add_argument("--parallel", type=int, default=1, help="slots decoded together (default 1; serve's is 4)")
    add_kv_flag(p)
    p.add_argument("--json", action="store_true")


def cmd_plan(args: argparse.Namespace, settings: Settings) -> int:
    from ..device import system_ram
    from ..formats.kv_cache import kv_cache_for
    from ..plan.memory import plan_model
    from ..pull import ensure_pulled

    model = ensure_pulled(args.model, settings)
    runtime = model.engine(settings.engine)
    kv = args.kv_type or kv_cache_for(runtime, (model.defaults.get("parameters") or {}).get("kv_type"),
                                      settings.kv_type)
    plan = plan_model(model, runtime, ctx_per_slot=args.ctx, slots=args.parallel, kv=kv)
    ram = system_ram()
    if args.json:
        print_json({**plan.to_dict(), "runtime": runtime, "machine_ram": ram})
        return 0
    status(f"{plan.model} on {runtime}: {plan.slots} slot(s) × {plan.ctx_per_slot:,} tokens, KV cache {plan.kv_type}")
    rows = [(label, format_mib(getattr(plan, key))) for key, label in PARTS]
    print_table(("part", "peak memory"), [*rows, ("total", format_mib(plan.total))], right=(1,))
    status(f"{100 * plan.total / ram:.0f} % of this machine's {format_mib(ram)}; 'edgeslm serve' lets loaded models "
           "take ¾ of it by default (--memory)")
    return 0

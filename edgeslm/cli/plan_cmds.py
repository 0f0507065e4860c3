"""CLI: plan (what a configuration of a model takes on this machine, before it loads; with --ram,
the configuration to run under a memory budget)."""

from __future__ import annotations

import argparse
from typing import Any

from ..config import Settings
from ..errors import UsageError
from ..units import format_bytes, format_mib, parse_bytes
from .kv_flags import add_kv_flag
from .output import print_json, print_table, status
from .tuned import add_batch_flags, tuning


def configure(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "plan", help="the memory a model takes at a context, slots and KV cache type, before it loads; with --ram, "
                     "the configuration to run under a budget",
        description="Peak memory of the runner that would serve MODEL, part by part, from its file's header. With "
                    "--ram: over the stored GGUF, ONNX and MLX variants (of MODEL, or all), KV cache types, contexts "
                    "and slots, the configuration the use case wants that fits and meets the floors, by measured "
                    "quality.")
    p.set_defaults(run=cmd_plan)
    p.add_argument("models", nargs="*", metavar="MODEL")
    p.add_argument("--ctx", type=int, help="context tokens per slot (default 2048; with --ram: 2048 to 32768 tried)")
    p.add_argument("--parallel", type=int, help="slots decoded together (default 1)")
    add_kv_flag(p)
    p.add_argument("--ram", metavar="SIZE", help="the memory budget, e.g. 2GB: choose a configuration")
    p.add_argument("--use-case", default="chat", choices=("chat", "code", "rag"),
                   help="what ranks first: chat (quality, then speed), code (HumanEval pass@1), rag (context)")
    p.add_argument("--min-pass", type=float, metavar="SHARE", help="least HumanEval pass@1, measured (0.5)")
    p.add_argument("--max-kld", type=float, metavar="KLD", help="largest mean KL-divergence, measured")
    add_batch_flags(p)
    p.add_argument("--json", action="store_true")


def cmd_plan(args: argparse.Namespace, settings: Settings) -> int:
    if args.ram:
        return _choose(args, settings)
    if len(args.models) != 1:
        raise UsageError("plan: name one model (or give --ram SIZE to choose among the stored ones)")
    from ..device import system_ram
    from ..formats.kv_cache import kv_cache_for
    from ..plan.memory import PARTS, plan_model
    from ..plan.profile import memory_constants
    from ..pull import ensure_pulled

    model = ensure_pulled(args.models[0], settings)
    runtime = model.engine(settings.engine)
    kv = args.kv_type or kv_cache_for(runtime, (model.defaults.get("parameters") or {}).get("kv_type"),
                                      settings.kv_type)
    plan = plan_model(model, runtime, ctx_per_slot=2048 if args.ctx is None else args.ctx,
                      slots=1 if args.parallel is None else args.parallel, kv=kv,
                      constants=memory_constants(settings.home), tuning=tuning(args, settings))
    ram = system_ram()
    if args.json:
        print_json({**plan.to_dict(), "runtime": runtime, "machine_ram": ram})
        return 0
    status(f"{plan.model} on {runtime}: {plan.slots} slot(s) × {plan.ctx_per_slot:,} tokens, KV cache {plan.kv_type}")
    rows = [(label, format_mib(getattr(plan, key))) for key, label in PARTS]
    print_table(("part", "peak memory"), [*rows, ("total", format_mib(plan.total))], right=(1,))
    status(f"{100 * plan.total / ram:.0f} % of this machine's {format_mib(ram)}; 'edgeslm serve' lets loaded models "
           "take ¾ of it by default (--max-memory)")
    return 0


def _choose(args: argparse.Namespace, settings: Settings) -> int:
    from ..plan.profile import memory_constants
    from ..plan.search import USE_CASES, choose
    from ..store import Store

    try:
        budget = parse_bytes(args.ram)
    except ValueError as exc:
        raise UsageError(f"--ram {args.ram!r}: {exc}") from None
    if args.kv_type:
        raise UsageError("plan --ram tries f16, q8_0 and q4_0 KV caches itself; drop --kv-type")
    got = choose(Store.open(settings.models_dir), budget, args.use_case, names=args.models, ctx=args.ctx,
                 parallel=args.parallel, min_pass=args.min_pass, max_kld=args.max_kld,
                 constants=memory_constants(settings.home), tuning=tuning(args, settings))
    if args.json:
        print_json({"budget": got.budget, "use_case": got.use_case, "considered": got.considered,
                    "fitting": got.fitting, "chosen": got.chosen.__dict__, "pareto": [c.__dict__ for c in got.pareto],
                    "serve": got.serve_command, "modelfile": got.modelfile})
        return 0
    status(f"{got.considered} configurations, {got.fitting} fit in {format_bytes(got.budget)}; per model, those no "
           "other of its own beats on memory, KLD and context at once (KLD: against the model's own reference):")
    print_table(("model", "runtime", "ctx", "slots", "KV", "memory", "mean KLD", "pass@1", "tg t/s"),
                [_cells(c) for c in got.pareto], right=(2, 3, 5, 6, 7, 8))
    c = got.chosen
    status(f"\nchosen for {got.use_case} ({USE_CASES[got.use_case]}): {c.name}, {c.ctx:,} tokens × {c.slots}, "
           f"{c.kv} KV cache, {format_bytes(c.memory)}")
    print(f"\n{got.serve_command}\n\n# or as a Modelfile ('edgeslm create NAME -f Modelfile'):\n{got.modelfile}",
          end="")
    return 0


def _cells(c: Any) -> tuple[str, ...]:
    return (c.name, c.runtime, f"{c.ctx:,}", str(c.slots), c.kv, format_bytes(c.memory),
            "not measured" if c.kld is None else f"{c.kld:.4f}",
            "—" if c.pass_at_1 is None else f"{100 * c.pass_at_1:.1f} %",
            "—" if c.tg_tps is None else f"{c.tg_tps:.1f}")


def configure_tune(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "tune", help="measure this machine (memory per model, threads) into the device profile plan, run, bench "
                     "and serve use",
        description="Probe-load each MODEL's runner at two contexts and fit the memory plan's constants; measure "
                    "prompt processing and generation at 1 to all physical cores against llama.cpp's default; keep "
                    "both in HOME/device-profile.json (EDGESLM_NO_PROFILE=1 ignores it). Three differently shaped "
                    "models fit every constant; fewer fit the runner's base only.")
    p.set_defaults(run=cmd_tune)
    p.add_argument("models", nargs="+", metavar="MODEL")
    p.add_argument("--no-speed", action="store_true", help="memory only (no thread sweep)")
    p.add_argument("--json", action="store_true")


def cmd_tune(args: argparse.Namespace, settings: Settings) -> int:
    from ..plan.profile import save_profile
    from ..pull import ensure_pulled
    from ..tune import tune

    models = [ensure_pulled(name, settings) for name in args.models]
    for m in models:
        if m.engine(settings.engine) != "llama.cpp":
            raise UsageError(f"tune: {m.name} runs on {m.engine(settings.engine)}; tune measures llama.cpp models")
    done = tune(models, str(settings.home), speed=not args.no_speed,
                progress=None if args.json else (lambda text: status(f"  {text}")))
    path = save_profile(settings.home, done.profile)
    if args.json:
        print_json({**done.profile.to_dict(), "notes": list(done.notes), "path": str(path)})
        return 0
    c = done.profile.constants
    print_table(("model", "slots × ctx", "predicted", "measured", "error"),
                [(p.model, f"{p.slots} × {p.ctx_per_slot:,}", format_mib(p.total), format_mib(peak),
                  f"{100 * (p.total / peak - 1):+.1f} %") for p, peak in done.memory], right=(2, 3, 4))
    if done.speed:
        default = done.speed[-1]  # llama.cpp's default: every physical core
        print_table(("threads", "pp128 t/s", "tg32 t/s"),
                    [(f"{s['threads']:.0f}", f"{s['pp']:.1f}", f"{s['tg']:.1f}") for s in done.speed], right=(0, 1, 2))
        best_pp, best_tg = max(s["pp"] for s in done.speed), max(s["tg"] for s in done.speed)
        status(f"tuned: {done.profile.threads} threads for generation ({best_tg / default['tg']:.2f}× llama.cpp's "
               f"default of {default['threads']:.0f}), {done.profile.threads_batch} for prompts "
               f"({best_pp / default['pp']:.2f}×)")
    if done.batch_speed:
        base = next(b for b in done.batch_speed if b.default)
        print_table(("micro-batch", "flash attention", "pp512 t/s", "tg32 t/s"),
                    [("512" if b.default else str(b.ubatch), "llama.cpp's choice" if b.flash_attn is None
                      else "on" if b.flash_attn else "off", f"{b.pp:.1f}", f"{b.tg:.1f}") for b in done.batch_speed],
                    right=(2, 3))
        p = done.profile
        best = next((b for b in done.batch_speed if not b.default and (b.ubatch, b.flash_attn) == (p.n_ubatch,
                                                                                                  p.flash_attn)), None)
        if best is None:
            status("tuned: llama.cpp's defaults kept (no micro-batch and flash attention setting beat them by 5 %)")
        else:
            status(f"tuned: micro-batch {p.n_ubatch}, flash attention {'on' if p.flash_attn else 'off'}: prompts "
                   f"{best.pp / base.pp:.2f}×, generation {best.tg / base.tg:.2f}× llama.cpp's defaults (run, bench "
                   "and serve use it)")
    if done.mmap_runs:
        print_table(("model file", "load s", "peak memory", "pp512 t/s", "tg32 t/s"),
                    [("mapped" if m.mmap else "read in", f"{m.load_seconds:.2f}", format_mib(m.peak), f"{m.pp:.1f}",
                      f"{m.tg:.1f}") for m in done.mmap_runs], right=(1, 2, 3, 4))
        status(f"tuned: the model file {'mapped' if done.profile.use_mmap else 'read into memory'}")
    if done.kv_speed:
        print_table(("KV cache", "pp128 t/s", "tg32 t/s"), [(str(k["kv"]), f"{k['pp']:.1f}", f"{k['tg']:.1f}")
                                                           for k in done.kv_speed], right=(1, 2))
    if done.profile.read_bytes_per_s and done.profile.matmul_flops:
        status(f"ceilings: memory read {done.profile.read_bytes_per_s / 1e9:.1f} GB/s, F32 matmul "
               f"{done.profile.matmul_flops / 1e9:.0f} GFLOP/s (bench shows each test's share of them)")
    status(f"memory: runner base {format_mib(c.base)}, {c.per_vocab:.0f} B per vocabulary entry, "
           f"{c.per_activation:.1f} B per activation; repacked types {', '.join(sorted(c.repacked_types)) or 'none'}")
    for note in done.notes:
        status(f"note: {note}")
    status(f"kept in {path}")
    return 0

"""Predicted against measured peak memory of edgeslm's runner (the process that serves a model),
for models × contexts × slots × KV cache types.

Each configuration starts the real runner (``runner.Runner``: the worker ``serve`` starts), sends one
request whose prompt fills a whole micro-batch (the most compute memory a prefill touches) and
generates 8 tokens, then reads the worker's peak resident set (VmHWM). The prediction is
``plan.memory.plan_memory`` from the GGUF header alone. ``--fit`` first fits the machine's
constants (runner base, bytes per vocabulary entry, bytes per activation) by least squares
(``tune.fit``, what ``edgeslm tune`` does) on the
configurations given with ``--fit-configs``, then predicts every configuration with them: the
configurations not fitted on show how well the model generalises.

    .venv/bin/python benchmarks/memory_plan.py [--fit] [--write docs/memory.md]
    .venv/bin/python benchmarks/memory_plan.py --onnx [--fit] [--write docs/memory.md]

``--onnx``: the ONNX Runtime runner instead (``plan.memory.plan_onnx``, from the folder's config),
four ONNX models × seven shapes, every slot busy (a generator holds its cache only while it runs);
``--fit`` fits its three constants (base, resident share of the weight files, bytes per busy slot
per vocabulary entry) by least squares on all of them: an in-sample fit, said so in the output.

``--mlx``: the MLX runner (``plan.memory.plan_mlx``): SmolLM2 as mlx-lm 4- and 8-bit, one slot,
each prompt filling its context (mlx-lm's cache grows with the tokens, and a prefill step's attention
scores grow with the prompt: the plan is for a full context). MLX's Linux build runs on the CPU: its
constants are this machine's, not an Apple device's.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import tables  # noqa: E402
from parity import BENCH_HOME  # noqa: E402

from edgeslm.config import resolve_settings  # noqa: E402
from edgeslm.formats.kv_cache import KVCache  # noqa: E402
from edgeslm.generation import resolve_model  # noqa: E402
from edgeslm.plan.memory import MemoryConstants, MemoryPlan, plan_memory, plan_mlx, plan_onnx  # noqa: E402
from edgeslm.tune import fit, measured_peak  # noqa: E402

MODELS = ("smollm2-135m-instruct", "qwen2.5-coder:0.5b", "qwen2.5-coder:1.5b", "qwen2.5-coder:0.5b-q4_0")
# (model index, slots, ctx per slot, kv): 30 configurations over 3 models and a repacked variant
CONFIGS = [
    (0, 1, 512, "f16"), (0, 1, 2048, "f16"), (0, 4, 2048, "q8_0"), (0, 4, 8192, "f16"), (0, 8, 4096, "q4_0"),
    (0, 2, 32768, "q8_0"), (0, 1, 16384, "k=q8_0,v=f16"),
    (1, 1, 512, "f16"), (1, 1, 2048, "f16"), (1, 4, 2048, "q8_0"), (1, 4, 8192, "f16"), (1, 8, 4096, "q4_0"),
    (1, 2, 32768, "q8_0"), (1, 1, 32768, "f16"), (1, 4, 16384, "q4_0"), (1, 8, 2048, "f16"),
    (2, 1, 512, "f16"), (2, 1, 2048, "f16"), (2, 4, 2048, "q8_0"), (2, 4, 8192, "f16"), (2, 8, 4096, "q4_0"),
    (2, 2, 32768, "q8_0"), (2, 1, 32768, "f16"), (2, 4, 16384, "q4_0"), (2, 8, 2048, "f16"),
    (3, 1, 2048, "f16"), (3, 4, 8192, "q8_0"), (3, 2, 32768, "q4_0"), (3, 8, 1024, "f16"), (3, 1, 16384, "f16"),
]
FIT_ON = "0,1,7,8,16,17"  # two small-context loads of each model: base, vocabulary and activations
HEADER = ["| model | slots × ctx | KV | predicted | measured | error | weights (mapped + repacked) | KV cache |",
          "|---|---|---|---:|---:|---:|---:|---:|"]


def measured(home: Path, name: str, slots: int, ctx: int, kv: str) -> int:
    return measured_peak(resolve_model(name, resolve_settings(home=home, offline=True)), str(home), slots, ctx, kv)


def predicted(home: Path, name: str, slots: int, ctx: int, kv: str, constants: MemoryConstants) -> MemoryPlan:
    model = resolve_model(name, resolve_settings(home=home, offline=True))
    return plan_memory(model.path, name, ctx_per_slot=ctx, slots=slots, kv=KVCache.parse(kv), constants=constants)


ONNX_MODELS = ("smollm2-135m-instruct:onnx-int4", "qwen2.5-coder:0.5b-onnx-int4", "smollm2-135m-instruct:onnx-int8",
               "qwen2.5-coder:0.5b-onnx-int8")
ONNX_SHAPES = ((1, 512), (1, 2048), (1, 8192), (2, 2048), (4, 2048), (4, 4096), (2, 16384))  # slots, ctx per slot


def onnx_rows(home: Path, fit_them: bool) -> tuple[list[str], list[float], MemoryConstants]:
    import numpy as np

    settings = resolve_settings(home=home, offline=True)
    measured_plans = []
    for name in ONNX_MODELS:
        model = resolve_model(name, settings)
        for slots, ctx in ONNX_SHAPES:
            peak = measured_peak(model, str(home), slots, ctx, None, requests=slots)
            print(f"  {name} {slots} × {ctx}: {peak / 2**20:.0f} MiB", file=sys.stderr)
            measured_plans.append((model, slots, ctx, peak))
    constants = MemoryConstants()
    if fit_them:
        unit = MemoryConstants(onnx_base=0, onnx_weights=1.0, onnx_per_slot_vocab=1.0)
        plans = [(plan_onnx(m.name, m.info, ctx_per_slot=c, slots=s, constants=unit), peak)
                 for m, s, c, peak in measured_plans]
        a = np.array([[1.0, p.mapped, p.compute] for p, _ in plans])
        b = np.array([peak - p.kv_cache for p, peak in plans], dtype=float)
        (base, share, per_slot), *_ = np.linalg.lstsq(a, b, rcond=None)
        constants = replace(constants, onnx_base=int(base), onnx_weights=round(float(share), 2),
                            onnx_per_slot_vocab=round(float(per_slot), 1))
        print(f"fitted on all {len(plans)} (in-sample): {constants}", file=sys.stderr)
    rows, errors = [], []
    for model, slots, ctx, peak in measured_plans:
        plan = plan_onnx(model.name, model.info, ctx_per_slot=ctx, slots=slots, constants=constants)
        rows.append(row(plan, peak))
        errors.append(abs(plan.total / peak - 1))
    return rows, errors, constants


MLX_SHAPES = (("smollm2-135m-instruct:mlx-4bit-fp32", 512), ("smollm2-135m-instruct:mlx-4bit-fp32", 2048),
              ("smollm2-135m-instruct:mlx-4bit-fp32", 4096), ("smollm2-135m-instruct:mlx-8bit-fp32", 512),
              ("smollm2-135m-instruct:mlx-8bit-fp32", 2048))


def mlx_rows(home: Path) -> tuple[list[str], list[float]]:
    settings = resolve_settings(home=home, offline=True)
    rows, errors = [], []
    for name, ctx in MLX_SHAPES:
        model = resolve_model(name, settings)
        start = time.perf_counter()
        peak = measured_peak(model, str(home), 1, ctx, None, prompt=ctx - 16)
        print(f"  {name} 1 × {ctx}: {peak / 2**20:.0f} MiB ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
        plan = plan_mlx(model.name, model.info, ctx_per_slot=ctx)
        rows.append(row(plan, peak))
        errors.append(abs(plan.total / peak - 1))
    return rows, errors


def row(plan: MemoryPlan, peak: int) -> str:
    error = plan.total / peak - 1
    cells = [plan.model, f"{plan.slots} × {plan.ctx_per_slot:,}", plan.kv_type, f"{plan.total / 2**20:.0f} MiB",
             f"{peak / 2**20:.0f} MiB", f"{100 * error:+.1f} %",
             f"{plan.mapped / 2**20:.0f} + {plan.repacked / 2**20:.0f} MiB", f"{plan.kv_cache / 2**20:.0f} MiB"]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=BENCH_HOME)
    parser.add_argument("--configs", help="indices into CONFIGS, comma-separated (default: all)")
    parser.add_argument("--fit", action="store_true", help="fit the constants on --fit-configs first")
    parser.add_argument("--fit-configs", default=FIT_ON)
    parser.add_argument("--onnx", action="store_true", help="the ONNX Runtime runner's plan instead")
    parser.add_argument("--mlx", action="store_true", help="the MLX runner's plan instead")
    parser.add_argument("--write", type=Path, nargs="*", default=[])
    args = parser.parse_args()
    if args.onnx:
        rows, errors, constants = onnx_rows(args.home, args.fit)
        tables.write_all(args.write, "memory_plan.py:onnx", [*HEADER, *rows])
        print(f"peak RSS of edgeslm's ONNX Runtime runner with every slot busy, predicted from the folder's config "
              f"({constants}) and measured; |error| {summary(errors)}\n")
        print("\n".join([*HEADER, *rows]))
        return
    if args.mlx:
        rows, errors = mlx_rows(args.home)
        tables.write_all(args.write, "memory_plan.py:mlx", [*HEADER, *rows])
        print(f"peak RSS of edgeslm's MLX runner, one slot, the prompt filling the context, predicted from the "
              f"folder's config ({MemoryConstants()}) and measured; |error| {summary(errors)}\n")
        print("\n".join([*HEADER, *rows]))
        return
    chosen = [CONFIGS[int(i)] for i in args.configs.split(",")] if args.configs else CONFIGS
    constants = MemoryConstants()
    peaks: dict[tuple[Any, ...], int] = {}

    def peak_of(cfg: tuple[int, int, int, str]) -> int:
        if cfg not in peaks:
            start = time.perf_counter()
            peaks[cfg] = measured(args.home, MODELS[cfg[0]], *cfg[1:])
            print(f"  {MODELS[cfg[0]]} {cfg[1:]}: {peaks[cfg] / 2**20:.0f} MiB "
                  f"({time.perf_counter() - start:.0f} s)", file=sys.stderr)
        return peaks[cfg]

    if args.fit:
        unit = MemoryConstants(base=0, per_vocab=1.0, per_activation=1.0)  # the fit's multipliers (tune.unit_plan)
        fitted = [CONFIGS[int(i)] for i in args.fit_configs.split(",")]
        constants = fit([(predicted(args.home, MODELS[c[0]], *c[1:], unit), peak_of(c)) for c in fitted])
        print(f"fitted on {len(fitted)} configurations: {constants}", file=sys.stderr)
    rows, errors = [], []
    for cfg in chosen:
        plan = predicted(args.home, MODELS[cfg[0]], *cfg[1:], constants)
        peak = peak_of(cfg)
        rows.append(row(plan, peak))
        errors.append(abs(plan.total / peak - 1))
        print(rows[-1], file=sys.stderr)
    tables.write_all(args.write, "memory_plan.py:prediction", [*HEADER, *rows])
    print(f"peak RSS of edgeslm's runner, predicted from the GGUF header ({constants}) and measured (VmHWM after "
          f"a full micro-batch of prefill and 8 tokens); |error| {summary(errors)}\n")
    print("\n".join([*HEADER, *rows]))


def summary(errors: list[float]) -> str:
    return (f"max {100 * max(errors):.1f} %, median {100 * sorted(errors)[len(errors) // 2]:.1f} %, within 5 %: "
            f"{sum(e <= 0.05 for e in errors)} of {len(errors)}")


if __name__ == "__main__":
    main()

"""llama.cpp's own memory projection on the configurations of ``memory_plan.py``: ``llama-server``
(the native build, ``--fit on``, its default) prints "projected to use N MiB of host memory" before it
loads (model + context + compute, its ``common_memory_breakdown_print``); each configuration is then
loaded, sent one request whose prompt fills a micro-batch (600 token ids, as ``memory_plan.py``) and
8 tokens, and the server's peak resident set (VmHWM) read. The error is the projection's against
that peak, beside edgeslm's plan for its own runner on the same configuration (``memory_plan.py``'s
constants, or the device profile's with ``--profile``).

    .venv/bin/python benchmarks/native_projection.py [--configs 0,1,2] [--write docs/memory.md]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import httpx  # noqa: E402
import tables  # noqa: E402
from edgeslm_cli import native_bin  # noqa: E402
from memory_plan import CONFIGS, MODELS, measured, predicted  # noqa: E402
from parity import BENCH_HOME  # noqa: E402

from edgeslm.config import resolve_settings  # noqa: E402
from edgeslm.formats.kv_cache import KVCache, KVType  # noqa: E402
from edgeslm.generation import resolve_model  # noqa: E402
from edgeslm.plan.memory import MemoryConstants  # noqa: E402

PROJECTED = re.compile(r"projected to use (\d+) MiB of host memory")
HEADER = ["| model | slots × ctx | KV | llama.cpp's projection | llama-server peak | its error | edgeslm's plan "
          "error (its runner) |", "|---|---|---|---:|---:|---:|---:|"]
READY_S = 300.0


def native_peak(server: Path, path: str, slots: int, ctx: int, kv: str, port: int) -> tuple[int | None, int]:
    """(llama.cpp's projection in bytes, or None where it printed none; llama-server's VmHWM)."""
    cache = KVCache.parse(kv)
    cmd = [str(server), "-m", path, "-c", str(slots * ctx), "-np", str(slots), "--port", str(port), "-lv", "4",
           "-ctk", cache.k.value, "-ctv", cache.v.value, "--fit", "on"]
    if cache.v is not KVType.F16:
        cmd += ["-fa", "on"]  # a quantized V cache needs flash attention (as edgeslm's apply_kv)
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + READY_S
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise SystemExit(f"llama-server did not start: {log.read()[-2000:].decode(errors='replace')}")
                try:
                    if httpx.get(url + "/health", timeout=5).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
            prompt = list(range(1000, 1000 + min(ctx - 16, 600)))
            httpx.post(url + "/completion", json={"prompt": prompt, "n_predict": 8, "temperature": 0,
                                                  "cache_prompt": False}, timeout=600).raise_for_status()
            with open(f"/proc/{proc.pid}/status") as fp:
                peak = next(int(line.split()[1]) * 1024 for line in fp if line.startswith("VmHWM:"))
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        log.seek(0)
        found = PROJECTED.search(log.read().decode(errors="replace"))
    return (int(found.group(1)) * 2**20 if found else None), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=BENCH_HOME)
    parser.add_argument("--configs", help="indices into memory_plan.CONFIGS, comma-separated (default: all)")
    parser.add_argument("--native-bin", type=Path, default=None)
    parser.add_argument("--port", type=int, default=8497)
    parser.add_argument("--ours", action="store_true", help="also measure edgeslm's runner (else its plan only)")
    parser.add_argument("--write", type=Path, nargs="*", default=[])
    args = parser.parse_args()
    server = native_bin(args.native_bin) / "llama-server"
    chosen = [CONFIGS[int(i)] for i in args.configs.split(",")] if args.configs else CONFIGS
    constants = MemoryConstants()
    rows, theirs, ours = [], [], []
    for index, slots, ctx, kv in chosen:
        name = MODELS[index]
        model = resolve_model(name, resolve_settings(home=args.home, offline=True))
        projected, peak = native_peak(server, str(model.path), slots, ctx, kv, args.port)
        plan = predicted(args.home, name, slots, ctx, kv, constants)
        mine = f"{100 * (plan.total / measured(args.home, name, slots, ctx, kv) - 1):+.1f} %" if args.ours else "—"
        if args.ours:
            ours.append(abs(float(mine.split()[0]) / 100))
        error = None if projected is None else projected / peak - 1
        if error is not None:
            theirs.append(abs(error))
        rows.append("| " + " | ".join([
            name, f"{slots} × {ctx:,}", kv, "not printed" if projected is None else f"{projected / 2**20:.0f} MiB",
            f"{peak / 2**20:.0f} MiB", "—" if error is None else f"{100 * error:+.1f} %", mine]) + " |")
        print(rows[-1], file=sys.stderr)
    tables.write_all(args.write, "native_projection.py:projection", [*HEADER, *rows])
    if theirs:
        print(f"llama.cpp's projection against llama-server's peak: |error| max {100 * max(theirs):.1f} %, median "
              f"{100 * sorted(theirs)[len(theirs) // 2]:.1f} %, within 5 %: {sum(e <= 0.05 for e in theirs)} of "
              f"{len(theirs)}")
    if ours:
        print(f"edgeslm's plan against its runner's peak: |error| max {100 * max(ours):.1f} %, median "
              f"{100 * sorted(ours)[len(ours) // 2]:.1f} %")
    print("\n".join([*HEADER, *rows]))


if __name__ == "__main__":
    main()

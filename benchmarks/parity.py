"""edgeslm's prefill and decode speed and peak RSS against native llama-bench, same file, same run.

Native tools come from ../shared/tools/build-native-llama.sh (the llama.cpp version that
llama-cpp-python bundles). For each builtin model, runs alternate native / ours, each test in
a fresh process, and the medians are compared. Goal (issue 3): decode >= 0.97x native,
prefill >= 0.97x native, peak RSS <= native's.

    .venv/bin/python benchmarks/parity.py [--native-bin DIR] [-r 5] [-p 512] [-n 128] [-t THREADS]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeslm_cli import native_bin  # noqa: E402

from edgeslm.bench import BenchParams  # noqa: E402
from edgeslm.engines.base import physical_cores  # noqa: E402
from edgeslm.sources.builtin import BUILTINS  # noqa: E402
from edgeslm.sources.pinned import pinned_models  # noqa: E402


def run_measured(cmd: list[str]) -> tuple[str, int]:
    """Run ``cmd``; return its stdout and its own peak RSS in bytes (from wait4, as time -v does)."""
    with tempfile.TemporaryFile("w+") as err:  # a file, not a pipe: llama.cpp logs a lot
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        out = proc.stdout.read()  # type: ignore[union-attr]
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        if code != 0:
            err.seek(0)
            raise SystemExit(f"{cmd[0]} failed ({code}): {err.read().strip()[-300:]}")
    return out, usage.ru_maxrss * 1024


def native(bin_dir: Path, model: Path, p: int, n: int, threads: int) -> tuple[float | None, float | None, int]:
    cmd = [
        str(bin_dir / "llama-bench"),
        "-m",
        str(model),
        "-p",
        str(p),
        "-n",
        str(n),
        "-r",
        "1",
        "-t",
        str(threads),
        "-fa",
        "auto",
        "-o",
        "json",
    ]
    out, rss = run_measured(cmd)
    tps = {("pp" if r["n_prompt"] else "tg"): r["avg_ts"] for r in json.loads(out)}
    return tps.get("pp"), tps.get("tg"), rss


def ours(model: Path, p: int, n: int, threads: int) -> tuple[float | None, float | None, int]:
    params = BenchParams(n_prompt=p, n_gen=n, repetitions=1, threads=threads)
    out, rss = run_measured([sys.executable, "-m", "edgeslm.bench", str(model), json.dumps(asdict(params))])
    tps = {t["test"][:2]: t["samples_tps"][0] for t in json.loads(out)["tests"]}
    return tps.get("pp"), tps.get("tg"), rss


BENCH_HOME = Path.home() / ".cache" / "edgeslm-bench" / "home"  # outside the checkout: kept between runs
MODEL_CHOICES = [*BUILTINS, *pinned_models()]


def model_files(names: list[str] | None = None) -> dict[str, Path]:
    """GGUF paths of the builtins (default) or the named models: a builtin from its package, a
    pinned catalogue model (qwen2.5-coder:0.5b) pulled once into BENCH_HOME's store."""
    files = {}
    for name in names or list(BUILTINS):
        if name in pinned_models():
            files[name] = pinned_file(name)
            continue
        builtin = BUILTINS[name]
        parts = builtin.part_paths()
        if len(parts) == 1:
            files[name] = parts[0]
        else:  # assemble once into a cache file, as the store would
            target = Path.home() / ".cache" / "edgeslm-bench" / f"{name}.gguf"
            if not target.exists() or target.stat().st_size != builtin.size:
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "wb") as dst:
                    for part in parts:
                        dst.write(part.read_bytes())
            files[name] = target
    return files


def pinned_file(name: str) -> Path:
    """The blob of a pinned catalogue model, pulled into BENCH_HOME when it is not there yet."""
    from edgeslm.config import resolve_settings
    from edgeslm.pull import pull
    from edgeslm.store import Store

    store = Store.open(BENCH_HOME / "models")
    manifest = pull(store, name, resolve_settings(home=BENCH_HOME), show_hub_progress=False).manifest
    return store.blob_path(manifest.digest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--native-bin", type=Path, default=None, help="folder with llama-bench")
    parser.add_argument("-r", "--reps", type=int, default=5)
    parser.add_argument("-p", type=int, default=512)
    parser.add_argument("-n", type=int, default=128)
    parser.add_argument("-t", "--threads", type=int, default=physical_cores())
    parser.add_argument("--models", nargs="*", default=list(BUILTINS), choices=MODEL_CHOICES)
    args = parser.parse_args()
    bin_dir = native_bin(args.native_bin)
    print(
        f"threads {args.threads}, pp{args.p}, tg{args.n}, {args.reps} interleaved runs per side: medians, and"
        " best runs (the least disturbed by other load on the machine)\n"
    )
    header = (
        f"{'model':24} {'test':6} {'native t/s':>11} {'edgeslm t/s':>12} {'ratio':>7}   "
        f"{'best native':>11} {'best ours':>10} {'ratio':>7}"
    )
    print(header)
    for name, path in model_files(args.models).items():
        samples: dict[str, dict[str, list[float]]] = {
            "native": {"pp": [], "tg": [], "rss": []},
            "ours": {"pp": [], "tg": [], "rss": []},
        }
        for _ in range(args.reps):
            for side, fn in (
                ("native", lambda t, p=path: native(bin_dir, p, *t)),
                ("ours", lambda t, p=path: ours(p, *t)),
            ):
                pp, _, rss_pp = fn((args.p, 0, args.threads))
                _, tg, rss_tg = fn((0, args.n, args.threads))
                samples[side]["pp"].append(pp or 0.0)
                samples[side]["tg"].append(tg or 0.0)
                samples[side]["rss"].append(max(rss_pp, rss_tg) / 2**20)
        for test in ("pp", "tg"):
            nat, our = (statistics.median(samples[s][test]) for s in ("native", "ours"))
            best_nat, best_our = (max(samples[s][test]) for s in ("native", "ours"))
            label = f"{test}{args.p if test == 'pp' else args.n}"
            print(
                f"{name:24} {label:6} {nat:11.2f} {our:12.2f} {our / nat:7.3f}   "
                f"{best_nat:11.2f} {best_our:10.2f} {best_our / best_nat:7.3f}"
            )
        nat, our = (statistics.median(samples[s]["rss"]) for s in ("native", "ours"))
        print(f"{name:24} {'RSS':6} {nat:8.1f} MiB {our:9.1f} MiB {our / nat:7.3f}")


if __name__ == "__main__":
    main()

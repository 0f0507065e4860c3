"""Start-up time of the CLI: ``edgeslm --version`` and ``edgeslm list`` against ``python -c pass``.

Goal (issue 13): each within 0.15 s of a bare interpreter on the same machine, median of 10,
``list`` over a store holding 10 models. The three commands run in turn (pass, --version, list,
pass, ...), each as a fresh process, after one warm-up round, so drift hits all three alike.

    .venv/bin/python benchmarks/startup.py [--runs 10]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeslm.config import resolve_settings  # noqa: E402
from edgeslm.store import Store, parse_name  # noqa: E402
from tests.ggufbuild import write_tiny_model  # noqa: E402

GOAL = 0.15  # seconds over the bare interpreter


def make_home(root: Path, n_models: int) -> Path:
    home = root / "home"
    store = Store.open(resolve_settings(home=home, offline=True).models_dir)
    for i in range(n_models):
        path = write_tiny_model(root / f"m{i}.gguf", seed=i)
        store.add_file(path, parse_name(f"model-{i}:v1"), source={"kind": "file", "path": str(path)})
    return home


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, timeout=3600)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {done.stderr.decode()[-500:]}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = make_home(Path(tmp), 10)
        cli = [sys.executable, "-m", "edgeslm", "--home", str(home)]
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "edgeslm --version": [*cli, "--version"],
            "edgeslm list (10 models)": [*cli, "list"],
        }
        listed = subprocess.run([*cli, "list"], capture_output=True, text=True, timeout=3600).stdout
        assert listed.count("model-") == 10, listed
        times: dict[str, list[float]] = {k: [] for k in commands}
        for round_ in range(args.runs + 1):
            for label, cmd in commands.items():
                t = timed(cmd)
                if round_:  # the first round warms the file cache
                    times[label].append(t)
    base = statistics.median(times["python -c pass"])
    print(f"{'command':28} {'median s':>9} {'min s':>7} {'max s':>7} {'over python':>12}  goal ≤ {GOAL} s")
    for label, ts in times.items():
        med = statistics.median(ts)
        over = med - base
        verdict = "" if label.startswith("python") else ("met" if over <= GOAL else "NOT met")
        print(f"{label:28} {med:9.3f} {min(ts):7.3f} {max(ts):7.3f} {over:12.3f}  {verdict}")


if __name__ == "__main__":
    main()

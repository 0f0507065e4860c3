"""What Ray Serve costs: ``edgeslm serve --ray`` against plain ``edgeslm serve`` and native
llama-server, same model, slots and threads, same run, one at a time on this machine.

8 clients stream /v1/completions at once (greedy, up to ``-n`` tokens, several requests each):
aggregate generation tok/s and time to first token. With one replica the Ray path adds the
ingress → replica hop per request and per streamed chunk; the ratio says what that costs here.
(On one machine more replicas only share its cores; Ray pays off across machines.)

    .venv/bin/python benchmarks/ray_serve.py [--native-bin DIR] [-n 64] [--requests 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from edgeslm_cli import native_bin  # noqa: E402
from parity import model_files  # noqa: E402
from serve_throughput import CLIENTS, concurrent_run, running  # noqa: E402

from edgeslm.engines.base import physical_cores  # noqa: E402

MODEL = "smollm2-135m-instruct"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--native-bin", type=Path, default=None, help="folder with llama-server")
    parser.add_argument("-n", type=int, default=64, help="tokens per request")
    parser.add_argument("--requests", type=int, default=2, help="requests per client")
    parser.add_argument("--parallel", type=int, default=4, help="slots (llama-server -np, serve --parallel)")
    parser.add_argument("--port", type=int, default=8492)
    args = parser.parse_args()
    bin_dir = native_bin(args.native_bin)
    threads, ctx, url = physical_cores(), 1024, f"http://127.0.0.1:{args.port}"
    path = model_files()[MODEL]
    runs = {}
    with tempfile.TemporaryDirectory(prefix="ray-bench-") as home:
        pull = [sys.executable, "-m", "edgeslm", "--home", home, "pull", MODEL]
        subprocess.run(pull, check=True, capture_output=True, timeout=3600)
        ours = [sys.executable, "-m", "edgeslm", "--home", home, "serve", "--port", str(args.port), "--parallel",
                str(args.parallel), "--ctx", str(ctx), "--threads", str(threads)]
        commands = {
            "llama-server": (
                [
                    str(bin_dir / "llama-server"),
                    "-m",
                    str(path),
                    "-np",
                    str(args.parallel),
                    "-c",
                    str(args.parallel * ctx),
                    "-t",
                    str(threads),
                    "--port",
                    str(args.port),
                    "--no-webui",
                ],
                "/health",
            ),
            "edgeslm serve": ([*ours, "--preload", MODEL], "/api/tags"),
            "edgeslm serve --ray": (
                [
                    *ours,
                    "--ray",
                    "--model",
                    MODEL,
                    "--min-replicas",
                    "1",
                    "--max-replicas",
                    "1",
                    "--replica-cpus",
                    "0.5",
                ],
                "/api/tags",
            ),
        }
        for label, (cmd, ready) in commands.items():
            with running(cmd, url, ready):
                concurrent_run(url, MODEL, 8, 1)  # warm: the model loaded, the first replica started
                runs[label] = concurrent_run(url, MODEL, args.n, args.requests)
    print(f"{MODEL}: {CLIENTS} clients x {args.requests} requests, {args.n} tokens, {args.parallel} slots, "
          f"{threads} threads")
    for label, r in runs.items():
        print(f"{label:22s} {r['tps']:7.1f} tok/s   TTFT p50 {r['ttft_p50'] * 1000:6.0f} ms   "
              f"ratio to llama-server {r['tps'] / runs['llama-server']['tps']:.2f}")
    print(f"serve --ray / serve: {runs['edgeslm serve --ray']['tps'] / runs['edgeslm serve']['tps']:.2f}")


if __name__ == "__main__":
    main()

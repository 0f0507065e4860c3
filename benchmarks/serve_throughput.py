"""edgeslm serve against native llama-server on the same model and settings, same run.

For each builtin model, one server at a time on this machine (native first, then ours):
8 clients stream /v1/completions at once, each several requests in a row (greedy, up to
``-n`` tokens, distinct prompts); aggregate generation tok/s = completion tokens / wall time,
time to first token p50/p95. Then one client alone: decode tok/s of a stream (tokens after the
first / time after the first), against native ``llama-bench`` tg on the same file and threads.
Goals (issue 7): aggregate >= 1.0x llama-server -np 8; single stream >= 0.95x llama-bench tg.
Last, the peak RSS (VmHWM) of the process that holds the model: llama-server itself, and
edgeslm's runner worker (goal, issue 13: <= 1.05x llama-server + 20 MiB).

    .venv/bin/python benchmarks/serve_throughput.py [--native-bin DIR] [-n 128] [--requests 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from edgeslm_cli import native_bin  # noqa: E402
from parity import model_files, native  # noqa: E402

from edgeslm.engines.base import physical_cores  # noqa: E402

CLIENTS = 8
TOPICS = [
    "the sea",
    "a lighthouse keeper",
    "the first snow",
    "a city at night",
    "an old clock",
    "a long train ride",
    "a garden in spring",
    "a lost letter",
    "the desert wind",
    "a quiet library",
]


def prompt(i: int) -> str:
    return f"Here is a long, detailed story about {TOPICS[i % len(TOPICS)]}.\n\nOnce upon a time,"


def stream_one(url: str, model: str, text: str, n: int) -> tuple[float, list[float], int]:
    """(time to first token, arrival times of the text chunks, completion tokens) of one streamed request."""
    body = {
        "model": model,
        "prompt": text,
        "max_tokens": n,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    arrivals: list[float] = []
    tokens = 0
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=300) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("choices") and event["choices"][0].get("text"):
                arrivals.append(time.perf_counter())
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    return arrivals[0] - start if arrivals else float("nan"), arrivals, tokens


def concurrent_run(url: str, model: str, n: int, requests: int) -> dict[str, float]:
    ttfts: list[float] = []
    total = [0]
    lock = threading.Lock()

    def client(c: int) -> None:
        for r in range(requests):
            ttft, _, tokens = stream_one(url, model, prompt(c * requests + r), n)
            with lock:
                ttfts.append(ttft)
                total[0] += tokens

    threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=3600)
    if any(t.is_alive() for t in threads):
        raise SystemExit("a client was still waiting after an hour; the server under test hung")
    wall = time.perf_counter() - start
    q = statistics.quantiles(ttfts, n=20)
    return {"tps": total[0] / wall, "tokens": total[0], "ttft_p50": statistics.median(ttfts), "ttft_p95": q[18]}


def single_run(url: str, model: str, n: int, reps: int, bench: Callable[[], float]) -> dict[str, float]:
    """One client's streams, each paired with a native llama-bench tg run just before it (the server
    idles meanwhile), so that both see the same load on the machine."""
    rates, ttfts, tgs = [], [], []
    for i in range(reps):
        tgs.append(bench())
        ttft, arrivals, tokens = stream_one(url, model, prompt(i), n)
        if len(arrivals) > 1:
            rates.append((tokens - 1) / (arrivals[-1] - arrivals[0]))
        ttfts.append(ttft)
    ratios = [r / t for r, t in zip(rates, tgs, strict=True)]
    return {
        "tps": statistics.median(rates),
        "ttft_p50": statistics.median(ttfts),
        "tg": statistics.median(tgs),
        "ratio": statistics.median(ratios),
    }


def tg(bin_dir: Path, path: Path, args: argparse.Namespace) -> float:
    return native(bin_dir, path, 0, args.n, args.threads)[1] or 0.0


def wait_ready(url: str, proc: subprocess.Popen[bytes], path: str) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode})")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not become ready")


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fp:
        return next(int(line.split()[1]) for line in fp if line.startswith("VmHWM:")) / 1024


def model_process(server: int) -> int:
    """The process that holds the model: edgeslm's runner worker (a child of the server), or the server."""
    children = [c for task in Path(f"/proc/{server}/task").iterdir() for c in (task / "children").read_text().split()]
    for child in children:  # a runner is started from one of the server's threads, not always the main one
        if b"edgeslm.runner.worker" in Path(f"/proc/{child}/cmdline").read_bytes():
            return int(child)
    return server


@contextmanager
def running(cmd: list[str], url: str, ready_path: str) -> Iterator[int]:
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        try:
            wait_ready(url, proc, ready_path)
            yield proc.pid
        finally:
            proc.terminate()
            proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--native-bin", type=Path, default=None, help="folder with llama-server and llama-bench")
    parser.add_argument("-n", type=int, default=128, help="tokens per request")
    parser.add_argument("--requests", type=int, default=4, help="requests per client in the concurrent run")
    parser.add_argument("--ctx", type=int, default=1024, help="context tokens per slot")
    parser.add_argument("-t", "--threads", type=int, default=physical_cores())
    parser.add_argument("--port", type=int, default=8491)
    parser.add_argument("--reps", type=int, default=5, help="single-client streams (each paired with llama-bench)")
    parser.add_argument("--models", nargs="*", default=None)
    args = parser.parse_args()
    bin_dir = native_bin(args.native_bin)
    url = f"http://127.0.0.1:{args.port}"
    print(
        f"{CLIENTS} clients x {args.requests} requests, up to {args.n} tokens each, greedy; {args.threads} threads; "
        f"{args.ctx} tokens per slot\n"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as home:
        for name, path in model_files().items():
            if args.models and name not in args.models:
                continue
            subprocess.run(
                [sys.executable, "-m", "edgeslm", "--home", home, "pull", name],
                check=True,
                capture_output=True,
                timeout=3600,
            )
            native_cmd = [
                str(bin_dir / "llama-server"),
                "-m",
                str(path),
                "-np",
                str(CLIENTS),
                "-c",
                str(CLIENTS * args.ctx),
                "-t",
                str(args.threads),
                "-tb",
                str(args.threads),
                "--port",
                str(args.port),
                "--no-webui",
            ]
            ours_cmd = [
                sys.executable,
                "-m",
                "edgeslm",
                "--home",
                home,
                "serve",
                "--port",
                str(args.port),
                "--parallel",
                str(CLIENTS),
                "--ctx",
                str(args.ctx),
                "--threads",
                str(args.threads),
                "--preload",
                name,
            ]
            result = {}
            for side, cmd, ready in (("native", native_cmd, "/health"), ("edgeslm", ours_cmd, "/api/version")):
                with running(cmd, url, ready) as pid:
                    stream_one(url, name, "Warm up.", 8)
                    result[side] = {
                        "many": concurrent_run(url, name, args.n, args.requests),
                        "one": single_run(url, name, args.n, args.reps, lambda p=path: tg(bin_dir, p, args)),
                        "rss": peak_rss_mib(model_process(pid)),
                    }
            rows.append((name, result))
    for name, r in rows:
        nat, our = r["native"], r["edgeslm"]
        many, one = (nat["many"], our["many"]), (nat["one"], our["one"])
        print(name)
        line(
            "8 clients, aggregate tok/s",
            many[0]["tps"],
            many[1]["tps"],
            f"ratio {many[1]['tps'] / many[0]['tps']:.3f} (goal >= 1.0)",
        )
        line("8 clients, TTFT p50 (s)", many[0]["ttft_p50"], many[1]["ttft_p50"])
        line("8 clients, TTFT p95 (s)", many[0]["ttft_p95"], many[1]["ttft_p95"])
        line(
            "1 client, stream tok/s",
            one[0]["tps"],
            one[1]["tps"],
            f"llama-bench tg{args.n} {one[1]['tg']:.1f}; edgeslm / llama-bench {one[1]['ratio']:.3f} (goal >= 0.95; "
            f"llama-server's {one[0]['ratio']:.3f})",
        )
        line("1 client, TTFT p50 (s)", one[0]["ttft_p50"], one[1]["ttft_p50"])
        line("tokens (8 clients)", many[0]["tokens"], many[1]["tokens"])
        rss = nat["rss"], our["rss"]
        goal = 1.05 * rss[0] + 20
        line("peak RSS (MiB), model process", rss[0], rss[1], f"ratio {rss[1] / rss[0]:.3f}; goal <= {goal:.1f} MiB")


def line(label: str, native_value: float, ours: float, note: str = "") -> None:
    print(f"  {label:28} llama-server {native_value:8.3f}   edgeslm {ours:8.3f}   {note}")


if __name__ == "__main__":
    main()

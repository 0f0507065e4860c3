"""An editing session replayed against ``edgeslm serve`` and native ``llama-server``: a file "typed"
line by line, a fill-in-the-middle request per line (``/infill``: the file above the cursor, the
file below it), as an editor's completion plugin sends them. Reported per server: time to the first
streamed token (p50, p90) and how often the suggestion's first line is the line the author wrote.
Then the keystroke that cancels: a request for a long suggestion is dropped at its first token (the
client closes the stream, as a plugin does when the user types on) and the next line's request sent
at once; with one slot, its time to first token shows whether the dropped request freed the slot
(p50 beside the replay's, which had the slot free).

The files are edgeslm's own modules: written after the models were trained, so a suggestion cannot
be recalled from training data. Both servers keep their prompt cache on, as an editor's server does
(consecutive requests share the file's start).

    .venv/bin/python benchmarks/fim.py [--model qwen2.5-coder:0.5b] [--lines 40] [--write docs/serve.md]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import tables  # noqa: E402
from edgeslm_cli import native_bin  # noqa: E402
from parity import BENCH_HOME, pinned_file  # noqa: E402
from serve_throughput import running  # noqa: E402

FILES = ("edgeslm/formats/fim.py", "edgeslm/serve/openai/kept.py", "edgeslm/plan/search.py", "edgeslm/units.py")
HEADER = ["| server | requests | TTFT p50 | TTFT p90 | first line exact | TTFT p50 ÷ llama-server "
          "| TTFT p50 after a dropped request |", "|---|---:|---:|---:|---:|---:|---:|"]
DROPPED_TOKENS = 512  # what the dropped request asked for: minutes of decoding if it kept its slot


def session(lines_per_file: int) -> list[tuple[str, str, str]]:
    """(prefix, suffix, the line held out) for each request: lines with code on them, taken evenly
    through each file after its imports."""
    out = []
    per = max(1, lines_per_file // len(FILES))
    for name in FILES:
        lines = (ROOT / name).read_text().splitlines(keepends=True)
        start = next((i for i, s in enumerate(lines) if s.startswith(("def ", "class ", "@"))), 0)
        code = [i for i in range(start, len(lines)) if lines[i].strip() and not lines[i].strip().startswith("#")]
        for i in code[:: max(1, len(code) // per)][:per]:
            out.append(("".join(lines[:i]), "".join(lines[i + 1:]), lines[i].strip()))
    return out


def ask(url: str, model: str, prefix: str, suffix: str, n: int) -> tuple[float, str]:
    """Seconds to the first streamed piece of text, and the whole suggestion."""
    body = {"model": model, "input_prefix": prefix, "input_suffix": suffix, "n_predict": n, "temperature": 0,
            "top_k": 1, "stream": True, "cache_prompt": True}
    start, first, text = time.perf_counter(), None, []
    with httpx.stream("POST", f"{url}/infill", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data:"):
                continue
            piece: dict[str, Any] = json.loads(line[5:])
            if piece.get("content"):
                first = first or time.perf_counter() - start
                text.append(piece["content"])
    return first or time.perf_counter() - start, "".join(text)


def replay(url: str, model: str, requests: list[tuple[str, str, str]], n: int) -> dict[str, float]:
    ttft, exact = [], 0
    for prefix, suffix, held in requests:
        seconds, text = ask(url, model, prefix, suffix, n)
        ttft.append(seconds)
        exact += (text.strip().splitlines() or [""])[0].strip() == held
    return {"p50": statistics.median(ttft), "p90": sorted(ttft)[int(0.9 * (len(ttft) - 1))],
            "exact": exact / len(requests), "n": len(requests)}


def after_dropped(url: str, model: str, requests: list[tuple[str, str, str]], n: int) -> float:
    """The median time to first token of a request sent the moment the one before was dropped."""
    ttft = []
    for (p1, s1, _), (p2, s2, _) in zip(requests[::2], requests[1::2], strict=False):
        body = {"model": model, "input_prefix": p1, "input_suffix": s1, "n_predict": DROPPED_TOKENS,
                "temperature": 0, "top_k": 1, "stream": True, "cache_prompt": True}
        with httpx.stream("POST", f"{url}/infill", json=body, timeout=600) as r:
            r.raise_for_status()
            next(line for line in r.iter_lines() if line.startswith("data:") and '"content":""' not in line)
        ttft.append(ask(url, model, p2, s2, n)[0])  # the stream above is closed: the keystroke
    return statistics.median(ttft)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder:0.5b")
    parser.add_argument("--lines", type=int, default=40, help="requests in the session")
    parser.add_argument("--n", type=int, default=24, help="tokens per suggestion")
    parser.add_argument("--ctx", type=int, default=8192)
    parser.add_argument("--native-bin", type=Path)
    parser.add_argument("--port", type=int, default=8497)
    parser.add_argument("--write", type=Path, nargs="*", default=[])
    args = parser.parse_args()
    path = pinned_file(args.model)
    url = f"http://127.0.0.1:{args.port}"
    requests = session(args.lines)
    serve = [sys.executable, "-m", "edgeslm", "--home", str(BENCH_HOME), "serve", "--port", str(args.port),
             "--parallel", "1", "--ctx", str(args.ctx)]
    with running(serve, url, "/api/version"):
        ours = replay(url, args.model, requests, args.n)
        ours["dropped"] = after_dropped(url, args.model, requests, args.n)
    native = [str(native_bin(args.native_bin) / "llama-server"), "-m", str(path), "--port", str(args.port),
              "-c", str(args.ctx), "-np", "1", "--alias", args.model]
    with running(native, url, "/health"):
        theirs = replay(url, args.model, requests, args.n)
        theirs["dropped"] = after_dropped(url, args.model, requests, args.n)
    rows = []
    for label, m in (("edgeslm serve", ours), ("llama-server", theirs)):
        rows.append(f"| {label} | {m['n']:.0f} | {m['p50']:.2f} s | {m['p90']:.2f} s | {100 * m['exact']:.1f} % | "
                    f"{m['p50'] / theirs['p50']:.2f} | {m['dropped']:.2f} s |")
    print(f"{args.model}, {len(requests)} requests (one per line of {len(FILES)} of edgeslm's modules), "
          f"{args.n} tokens each, greedy, streamed, one at a time\n")
    print("\n".join([*HEADER, *rows]))
    tables.write_all(args.write, "fim.py:session", [*HEADER, *rows])


if __name__ == "__main__":
    main()

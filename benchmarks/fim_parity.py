"""Fill-in-the-middle against llama-server: the same ``/infill`` requests (a prefix, a suffix, other
files as ``input_extra``) to ``edgeslm serve`` and native ``llama-server`` on the same GGUF, greedy:
the prompt's token count and the generated tokens must be the same. The cases are cut from real
Python files in this venv (the standard library's), at a line, the middle held out; the table
lists the cases that differ (none: a line that says so).

    .venv/bin/python benchmarks/fim_parity.py [--model qwen2.5-coder:0.5b] [--ctx 4096] \\
        [--write docs/serve.md]
"""

from __future__ import annotations

import argparse
import inspect
import sys
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

HEADER = ["| case | prompt tokens: edgeslm / llama-server | generated tokens equal | first line of the middle |",
          "|---|---:|---|---|"]


def cases(count: int) -> list[tuple[str, dict[str, Any]]]:
    """(label, body) of each request: functions of the standard library cut at a line, each fifth with
    its module's opening as another file's text (``input_extra``)."""
    import importlib

    functions = []
    for name in ("textwrap", "json.decoder", "shlex", "string", "fnmatch", "glob", "bisect", "heapq", "calendar",
                 "difflib", "inspect", "argparse"):
        module = importlib.import_module(name)
        functions += [f for _, f in sorted(vars(module).items()) if inspect.isfunction(f)
                      and f.__module__ == module.__name__ and len(inspect.getsource(f).splitlines()) >= 6]
    out = []
    for n, fn in enumerate(functions[:: max(1, len(functions) // count)][:count]):
        lines = inspect.getsource(fn).splitlines(keepends=True)
        cut = len(lines) // 2
        body: dict[str, Any] = {"input_prefix": "".join(lines[:cut]), "input_suffix": "".join(lines[cut + 1:])}
        label = f"{fn.__module__}.{fn.__name__}, line {cut + 1}"
        if n % 5 == 4:
            module = inspect.getmodule(fn)
            body["input_extra"] = [{"filename": f"{fn.__module__}.py", "text": inspect.getsource(module)[:2000]}]
            label += ", its module as input_extra"
        out.append((label, body))
    return out


def ask(url: str, model: str, body: dict[str, Any], n: int) -> dict[str, Any]:
    got = httpx.post(f"{url}/infill", json={"model": model, **body, "n_predict": n, "temperature": 0,
                                            "top_k": 1, "return_tokens": True, "cache_prompt": False}, timeout=600)
    got.raise_for_status()
    reply: dict[str, Any] = got.json()
    return reply


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder:0.5b")
    parser.add_argument("--ctx", type=int, default=4096, help="context per slot (llama-server: -c with -np 1)")
    parser.add_argument("--n", type=int, default=32, help="tokens generated per request")
    parser.add_argument("--cases", type=int, default=50)
    parser.add_argument("--native-bin", type=Path)
    parser.add_argument("--port", type=int, default=8496)
    parser.add_argument("--write", type=Path, nargs="*", default=[])
    args = parser.parse_args()
    path = pinned_file(args.model)
    url = f"http://127.0.0.1:{args.port}"
    asked = cases(args.cases)
    serve = [sys.executable, "-m", "edgeslm", "--home", str(BENCH_HOME), "serve", "--port", str(args.port),
             "--parallel", "1", "--ctx", str(args.ctx), "--no-prompt-cache"]
    with running(serve, url, "/api/version"):
        ours = [ask(url, args.model, body, args.n) for _, body in asked]
    native = [str(native_bin(args.native_bin) / "llama-server"), "-m", str(path), "--port", str(args.port),
              "-c", str(args.ctx), "-np", "1", "--alias", args.model]
    with running(native, url, "/health"):
        theirs = [ask(url, args.model, body, args.n) for _, body in asked]
    rows, same = [], 0
    for (label, _), a, b in zip(asked, ours, theirs, strict=True):
        equal = a["tokens_evaluated"] == b["tokens_evaluated"] and a["tokens"] == b["tokens"]
        same += equal
        first = (b["content"].strip().splitlines() or [""])[0][:60].replace("|", "\\|")
        if not equal or len(rows) < 3:  # every difference, and the first cases as a sample
            rows.append(f"| {label} | {a['tokens_evaluated']} / {b['tokens_evaluated']} | "
                        f"{'yes' if a['tokens'] == b['tokens'] else 'no'} | `{first}` |")
    extra = sum("input_extra" in b for _, b in asked)
    total = (f"| **all {len(asked)} cases** ({extra} with input_extra) | {same} of {len(asked)} the same prompt | "
             f"{sum(a['tokens'] == b['tokens'] for a, b in zip(ours, theirs, strict=True))} of {len(asked)} | — |")
    print(f"{args.model}, {args.ctx} tokens a slot, greedy, {args.n} tokens; the first three cases and every one "
          "that differs:\n")
    print("\n".join([*HEADER, total, *rows]))
    tables.write_all(args.write, "fim_parity.py:infill", [*HEADER, total, *rows])


if __name__ == "__main__":
    main()

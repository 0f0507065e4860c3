"""HumanEval pass@1 of the Qwen2.5-Coder models as shipped, by edgeslm and by native llama-server on
the same file in the same run, beside the figure the model's authors published.

Per model: ``edgeslm eval MODEL --task humaneval --force`` (the authors' protocol, N slots, each
completion run in the sandbox), then the same chats — system, user, the reply pre-filled with a
code fence — through llama-server's OpenAI endpoint (``--jinja``, its assistant prefill, greedy,
the same stop strings, the same number of slots), each reply checked by the same harness. Printed:
pass@1 of both, the authors' figure, problems where the two pass differently and whether their
texts differ (batched decoding can flip a near-tie), identical replies, and wall time.

    .venv/bin/python benchmarks/task_accuracy.py [--models qwen2.5-coder:0.5b,qwen2.5-coder:1.5b] \\
        [--limit N] [--slots 4] [--write README.md docs/tasks.md]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import httpx  # noqa: E402
import tables  # noqa: E402
from edgeslm_cli import edgeslm, native_bin  # noqa: E402
from parity import BENCH_HOME, pinned_file  # noqa: E402
from serve_throughput import running  # noqa: E402

from edgeslm.store import Store, parse_name  # noqa: E402
from edgeslm.tasks import humaneval  # noqa: E402
from edgeslm.tasks.core import Task, load_task_result, task_key  # noqa: E402
from edgeslm.tasks.sandbox import run_python  # noqa: E402

AUTHORS = {"qwen2.5-coder:0.5b": 61.6, "qwen2.5-coder:1.5b": 70.7}  # Qwen2.5-Coder report v3, Table 16
HEADER = ["| model | edgeslm pass@1 | llama-server pass@1 | authors (original weights) | pass differently "
          "| identical replies | edgeslm time | llama-server time |", "|---|---:|---:|---:|---:|---:|---:|---:|"]


def ours(home: Path, model: str, args: argparse.Namespace) -> tuple[dict[str, Any], float]:
    start = time.perf_counter()
    limit = ["--limit", str(args.limit)] if args.limit else []
    edgeslm(home, "eval", model, "--task", "humaneval", "--slots", str(args.slots), "--force", *limit, "--json")
    seconds = time.perf_counter() - start
    store = Store.open(home / "models")
    manifest = store.get(parse_name(model))
    count = len(humaneval.load_problems()[: args.limit])
    kept = load_task_result(store, task_key(manifest.digest, Task.HUMANEVAL, humaneval.PROTOCOL, count))
    assert kept is not None, "eval kept no result"
    return {a.task_id: {"reply": a.reply, "passed": a.passed} for a in kept.answers}, seconds


def native(model: str, args: argparse.Namespace) -> tuple[dict[str, Any], float]:
    problems = humaneval.load_problems()[: args.limit]
    ctx = humaneval.MAX_TOKENS + 1024
    url = f"http://127.0.0.1:{args.port}"
    cmd = [str(native_bin(args.native_bin) / "llama-server"), "-m", str(pinned_file(model)), "--port", str(args.port),
           "--jinja", "-np", str(args.slots), "-c", str(ctx * args.slots), "--alias", model]

    def ask(problem: humaneval.Problem) -> tuple[str, dict[str, Any]]:
        body = {"model": model, "messages": humaneval.messages(problem), "temperature": 0, "top_k": 1,
                "max_tokens": humaneval.MAX_TOKENS, "stop": list(humaneval.STOP), "seed": 0}
        reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=3600).json()
        text = reply["choices"][0]["message"]["content"] or ""
        return problem.task_id, {"reply": text, "passed": run_python(humaneval.program(problem, text)).passed}

    with running(cmd, url, "/health"):
        start = time.perf_counter()
        with ThreadPoolExecutor(args.slots) as pool:
            answers = dict(pool.map(ask, problems))
        return answers, time.perf_counter() - start


def row(model: str, mine: dict[str, Any], theirs: dict[str, Any], times: tuple[float, float]) -> str:
    n = len(mine)
    differ = [t for t in mine if mine[t]["passed"] != theirs[t]["passed"]]
    same_text = sum(mine[t]["reply"] == theirs[t]["reply"] for t in mine)
    flips = sum(mine[t]["reply"] != theirs[t]["reply"] for t in differ)
    cells = [model, f"{100 * sum(a['passed'] for a in mine.values()) / n:.1f} ({n})",
             f"{100 * sum(a['passed'] for a in theirs.values()) / n:.1f}", f"{AUTHORS.get(model, float('nan')):.1f}",
             f"{len(differ)} ({flips} with different text)", f"{same_text} of {n}",
             f"{times[0] / 60:.1f} min", f"{times[1] / 60:.1f} min"]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="qwen2.5-coder:0.5b,qwen2.5-coder:1.5b")
    parser.add_argument("--limit", type=int, help="only the first N problems (a quick look)")
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--home", type=Path, default=BENCH_HOME)
    parser.add_argument("--native-bin", type=Path)
    parser.add_argument("--port", type=int, default=8497)
    parser.add_argument("--write", type=Path, nargs="*", default=[])
    args = parser.parse_args()
    rows = []
    for model in args.models.split(","):
        mine, mine_s = ours(args.home, model, args)
        theirs, theirs_s = native(model, args)
        rows.append(row(model, mine, theirs, (mine_s, theirs_s)))
        print(rows[-1], file=sys.stderr)
        tables.write_all(args.write, "task_accuracy.py:humaneval", [*HEADER, *rows], merge=1)
    print(f"HumanEval greedy pass@1 (%), protocol {humaneval.PROTOCOL}, {args.slots} slots, each completion run in "
          "edgeslm's sandbox; the authors' figures are for the original weights (Qwen2.5-Coder report, Table 16)\n")
    print("\n".join([*HEADER, *rows]))
    print(json.dumps({"slots": args.slots, "limit": args.limit}), file=sys.stderr)


if __name__ == "__main__":
    main()

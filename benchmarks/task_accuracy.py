"""HumanEval pass@1 and tool-call accuracy of the Qwen2.5-Coder models as shipped, by edgeslm and by
native llama-server on the same file in the same run, beside the figure the model's authors published.

Per model: ``edgeslm eval MODEL --task humaneval --force`` (the authors' protocol, N slots, each
completion run in the sandbox), then the same chats — system, user, the reply pre-filled with a
code fence — through llama-server's OpenAI endpoint (``--jinja``, its assistant prefill, greedy,
the same stop strings, the same number of slots), each reply checked by the same harness. Printed:
pass@1 of both, the authors' figure, problems where the two pass differently and whether their
texts differ (batched decoding can flip a near-tie), identical replies, and wall time.

Tools: ``edgeslm eval MODEL --task tools --force`` beside the same 150 requests sent to llama-server's
OpenAI endpoint (``tools``, ``tool_choice: auto``, ``parallel_tool_calls: true``, greedy), its
returned ``tool_calls`` scored by the same rules; accuracy per kind of case.

    .venv/bin/python benchmarks/task_accuracy.py [--models qwen2.5-coder:0.5b,qwen2.5-coder:1.5b] \\
        [--tasks humaneval,tools] [--limit N] [--slots 4] [--write docs/tasks.md]
"""

from __future__ import annotations

import argparse
import contextlib
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

from edgeslm.evaluate.task_results import Task, load_task_result, task_key  # noqa: E402
from edgeslm.store import Store, parse_name  # noqa: E402
from edgeslm.tasks import humaneval, tool_calls  # noqa: E402
from edgeslm.tasks.sandbox import run_python  # noqa: E402

AUTHORS = {"qwen2.5-coder:0.5b": 61.6, "qwen2.5-coder:1.5b": 70.7}  # Qwen2.5-Coder report v3, Table 16
HEADER = ["| model | edgeslm pass@1 | llama-server pass@1 | authors (original weights) | pass differently "
          "| identical replies | edgeslm time | llama-server time |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
TOOLS_HEADER = ["| model | server | all | single | choose | parallel | none | time |",
                "|---|---|---:|---:|---:|---:|---:|---:|"]


def ours(home: Path, model: str, task: Task, args: argparse.Namespace) -> tuple[dict[str, Any], float]:
    """edgeslm's answers (problem id -> reply, passed) and wall time, from the result eval keeps."""
    start = time.perf_counter()
    limit = ["--limit", str(args.limit)] if args.limit else []
    edgeslm(home, "eval", model, "--task", task.value, "--slots", str(args.slots), "--force", *limit, "--json")
    seconds = time.perf_counter() - start
    store = Store.open(home / "models")
    manifest = store.get(parse_name(model))
    protocol = humaneval.PROTOCOL if task is Task.HUMANEVAL else tool_calls.PROTOCOL
    count = len((humaneval.load_problems() if task is Task.HUMANEVAL else tool_calls.load_suite())[: args.limit])
    kept = load_task_result(store, task_key(manifest.digest, task, protocol, count))
    assert kept is not None, "eval kept no result"
    return {a.task_id: {"reply": a.reply, "passed": a.passed} for a in kept.answers}, seconds


def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    reply: dict[str, Any] = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=3600).json()
    return reply


def native_humaneval(url: str, model: str, args: argparse.Namespace) -> tuple[dict[str, Any], float]:
    def ask(problem: humaneval.Problem) -> tuple[str, dict[str, Any]]:
        body = {"model": model, "messages": humaneval.messages(problem), "temperature": 0, "top_k": 1,
                "max_tokens": humaneval.MAX_TOKENS, "stop": list(humaneval.STOP), "seed": 0}
        text = post(url, body)["choices"][0]["message"]["content"] or ""
        text = text.removeprefix(humaneval.PREFILL)  # llama-server's reply repeats the pre-filled fence
        return problem.task_id, {"reply": text, "passed": run_python(humaneval.program(problem, text)).passed}

    start = time.perf_counter()
    with ThreadPoolExecutor(args.slots) as pool:
        answers = dict(pool.map(ask, humaneval.load_problems()[: args.limit]))
    return answers, time.perf_counter() - start


def native_tools(url: str, model: str, args: argparse.Namespace) -> tuple[dict[str, Any], float]:
    def ask(case: tool_calls.Case) -> tuple[str, dict[str, Any]]:
        body = {"model": model, "messages": [{"role": "user", "content": case.request}], "tools": list(case.tools),
                "tool_choice": "auto", "parallel_tool_calls": True, "temperature": 0, "top_k": 1,
                "max_tokens": tool_calls.MAX_TOKENS, "seed": 0}
        message = post(url, body)["choices"][0]["message"]
        calls = []
        for call in message.get("tool_calls") or []:
            try:
                calls.append((call["function"]["name"], json.loads(call["function"]["arguments"])))
            except (KeyError, TypeError, ValueError):
                calls.append(("(unparsable)", {}))
        passed, _ = tool_calls.score(case, calls)
        return case.id, {"reply": json.dumps(message), "passed": passed}

    start = time.perf_counter()
    with ThreadPoolExecutor(args.slots) as pool:
        answers = dict(pool.map(ask, tool_calls.load_suite()[: args.limit]))
    return answers, time.perf_counter() - start


def minutes(seconds: float, slots: int) -> str:
    return f"{seconds / 60:.1f} min ({slots} slots)"


def humaneval_row(model: str, mine: dict[str, Any], theirs: dict[str, Any], times: tuple[float, float],
                  slots: int) -> str:
    """One model's row; ``theirs`` empty where llama-server was not asked (``--native-tasks``)."""
    n = len(mine)
    if not theirs:
        cells = [model, f"{100 * sum(a['passed'] for a in mine.values()) / n:.1f} ({n})", "not run",
                 f"{AUTHORS.get(model, float('nan')):.1f}", "—", "—", minutes(times[0], slots), "—"]
        return "| " + " | ".join(cells) + " |"
    differ = [t for t in mine if mine[t]["passed"] != theirs[t]["passed"]]
    same_text = sum(mine[t]["reply"] == theirs[t]["reply"] for t in mine)
    flips = sum(mine[t]["reply"] != theirs[t]["reply"] for t in differ)
    cells = [model, f"{100 * sum(a['passed'] for a in mine.values()) / n:.1f} ({n})",
             f"{100 * sum(a['passed'] for a in theirs.values()) / n:.1f}", f"{AUTHORS.get(model, float('nan')):.1f}",
             f"{len(differ)} ({flips} with different text)", f"{same_text} of {n}",
             minutes(times[0], slots), minutes(times[1], slots)]
    return "| " + " | ".join(cells) + " |"


def tools_row(model: str, server: str, answers: dict[str, Any], seconds: float, slots: int) -> str:
    kinds = {c.id: c.kind for c in tool_calls.load_suite()}

    def share(ids: list[str]) -> str:
        return f"{100 * sum(answers[i]['passed'] for i in ids) / len(ids):.1f}" if ids else "—"

    cells = [model, server, f"{share(list(answers))} ({len(answers)})"]
    cells += [share([i for i in answers if kinds[i] == kind]) for kind in tool_calls.KINDS]
    return "| " + " | ".join([*cells, minutes(seconds, slots)]) + " |"


def sandbox_overhead(runs: int = 50) -> str:
    """The sandbox's own cost: an empty program, start to reaped, median of ``runs``."""
    times = sorted(run_python("pass").seconds for _ in range(runs))
    return f"sandbox overhead: median {1000 * times[runs // 2]:.1f} ms per run ({runs} empty programs, " \
           f"max {1000 * times[-1]:.1f} ms); isolation {', '.join(run_python('pass').isolation)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="qwen2.5-coder:0.5b,qwen2.5-coder:1.5b")
    parser.add_argument("--tasks", default="humaneval,tools")
    parser.add_argument("--limit", type=int, help="only the first N problems (a quick look)")
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--native-tasks", help="the tasks also sent to llama-server (default: all of --tasks; "
                        "'none' for edgeslm alone)")
    parser.add_argument("--home", type=Path, default=BENCH_HOME)
    parser.add_argument("--native-bin", type=Path)
    parser.add_argument("--port", type=int, default=8497)
    parser.add_argument("--write", type=Path, nargs="*", default=[])
    args = parser.parse_args()
    tasks = [Task(t) for t in args.tasks.split(",")]
    native = tasks if args.native_tasks is None else [Task(t) for t in args.native_tasks.split(",") if t != "none"]
    overhead = sandbox_overhead()  # first, on a quiet machine
    print(overhead, file=sys.stderr)
    he_rows: list[str] = []
    tool_rows: list[str] = []
    for model in args.models.split(","):
        mine = {task: ours(args.home, model, task, args) for task in tasks}
        ctx = humaneval.MAX_TOKENS + 1024
        url = f"http://127.0.0.1:{args.port}"
        cmd = [str(native_bin(args.native_bin) / "llama-server"), "-m", str(pinned_file(model)), "--port",
               str(args.port), "--jinja", "-np", str(args.slots), "-c", str(ctx * args.slots), "--alias", model]
        with running(cmd, url, "/health") if native else contextlib.nullcontext():
            if Task.HUMANEVAL in mine:
                theirs, seconds = native_humaneval(url, model, args) if Task.HUMANEVAL in native else ({}, 0.0)
                he_rows.append(humaneval_row(model, mine[Task.HUMANEVAL][0], theirs,
                                             (mine[Task.HUMANEVAL][1], seconds), args.slots))
                tables.write_all(args.write, "task_accuracy.py:humaneval", [*HEADER, *he_rows], merge=1)
            if Task.TOOLS in mine:
                tool_rows.append(tools_row(model, "edgeslm", *mine[Task.TOOLS], args.slots))
                if Task.TOOLS in native:
                    tool_rows.append(tools_row(model, "llama-server --jinja", *native_tools(url, model, args),
                                               args.slots))
                tables.write_all(args.write, "task_accuracy.py:tools", [*TOOLS_HEADER, *tool_rows], merge=2)
        print("\n".join([*he_rows, *tool_rows]), file=sys.stderr)
    print(f"HumanEval greedy pass@1 (%), protocol {humaneval.PROTOCOL}, {args.slots} slots, each completion run in "
          "edgeslm's sandbox; the authors' figures are for the original weights (Qwen2.5-Coder report, Table 16)\n")
    print("\n".join([*HEADER, *he_rows]))
    print(f"\n{overhead}")
    print(f"\ntool-call accuracy (%), protocol {tool_calls.PROTOCOL}, by kind of case\n")
    print("\n".join([*TOOLS_HEADER, *tool_rows]))


if __name__ == "__main__":
    main()

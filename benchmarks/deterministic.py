"""What ``deterministic`` costs: the same greedy requests from concurrent clients through one runner,
decoded in the shared batch (llama.cpp's batching) and each in a batch of its own (``deterministic``),
alternating rounds; aggregate generated tokens per second, the ratio, and whether every
deterministic reply equals the same request run alone.

    .venv/bin/python benchmarks/deterministic.py [--model qwen2.5-coder:0.5b] [--clients 4] \\
        [--rounds 3] [--write docs/serve.md]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import tables  # noqa: E402
from parity import BENCH_HOME  # noqa: E402

from edgeslm.engines.base import SamplingParams  # noqa: E402
from edgeslm.runner import Chunk, Job, Runner  # noqa: E402

PROMPTS = ["Write a Python function that checks whether a number is prime.", "Explain what a hash map is.",
           "Write a haiku about the sea.", "List three uses of binary search.", "What does TCP stand for?",
           "Write a SQL query that counts rows per day.", "Name the planets of the solar system.",
           "Write a bash loop over the files of a folder."]
HEADER = ["| model | clients | batched tok/s | deterministic tok/s | ratio | replies equal to alone |",
          "|---|---:|---:|---:|---:|---|"]


async def one(runner: Runner, prompt: str, sampling: SamplingParams, n: int) -> list[int]:
    job = Job([{"role": "user", "content": prompt}], sampling, n)
    return [ev.token async for ev in runner.agenerate(job) if isinstance(ev, Chunk) and ev.token is not None]


async def round_of(runner: Runner, clients: int, sampling: SamplingParams, n: int) -> tuple[float, list[list[int]]]:
    start = time.perf_counter()
    replies = await asyncio.gather(*(one(runner, PROMPTS[i % len(PROMPTS)], sampling, n) for i in range(clients)))
    return sum(len(r) for r in replies) / (time.perf_counter() - start), list(replies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder:0.5b")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--home", type=Path, default=BENCH_HOME)
    parser.add_argument("--write", type=Path, nargs="*", default=[])
    args = parser.parse_args()
    greedy, exact = SamplingParams(temperature=0), SamplingParams(temperature=0, deterministic=True)
    runner = Runner(args.model, slots=args.clients, ctx_per_slot=512, home=str(args.home))
    try:
        alone = [asyncio.run(one(runner, PROMPTS[i % len(PROMPTS)], exact, args.tokens)) for i in range(args.clients)]
        batched, apart, equal = [], [], True
        for _ in range(args.rounds):
            batched.append(asyncio.run(round_of(runner, args.clients, greedy, args.tokens))[0])
            speed, replies = asyncio.run(round_of(runner, args.clients, exact, args.tokens))
            apart.append(speed)
            equal = equal and replies == alone
    finally:
        runner.close()
    b, d = statistics.median(batched), statistics.median(apart)
    row = f"| {args.model} | {args.clients} | {b:.1f} | {d:.1f} | {d / b:.2f} | {'yes' if equal else 'no'} |"
    tables.write_all(args.write, "deterministic.py:cost", [*HEADER, row])
    print(f"greedy, {args.tokens} tokens per reply, medians of {args.rounds} alternating rounds\n")
    print("\n".join([*HEADER, row]))


if __name__ == "__main__":
    main()

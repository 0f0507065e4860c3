"""``eval --task``: what a model gets right, through the batching runner, each answer checked.

Problems go through one runner (``runner.Runner``, the server's) with N slots decoding side by
side; each reply is checked as it arrives (HumanEval: run in ``sandbox`` on a worker thread)
while the next problems decode. Results are kept in the store by content — the model's digest,
the task, its protocol version and the problem count — like KLD results; an interrupted run
keeps nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ..engines.base import SamplingParams
from ..errors import InvalidParameterError
from ..evaluate.task_results import Answer, Task, TaskResult, load_task_result, save_task_result, task_key
from ..store import Store
from ..store.resolve import ResolvedModel
from . import humaneval
from .sandbox import Limits, run_python

log = logging.getLogger(__name__)
GREEDY = SamplingParams(temperature=0.0, top_k=1, top_p=1.0, min_p=0.0, seed=0)
Progress = Callable[[int, int, int], None]  # done, total, passed so far


def parse_tasks(text: str) -> list[Task]:
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    known = ", ".join(t.value for t in Task)
    unknown = [n for n in names if n not in {t.value for t in Task}]
    if unknown or not names:
        raise InvalidParameterError(f"no task named {unknown[0] if unknown else repr(text)}; tasks: {known}",
                                    params="task")
    return [Task(n) for n in dict.fromkeys(names)]


@dataclass(frozen=True)
class Checked:
    passed: bool
    outcome: str  # HumanEval: the sandbox's (passed, failed, killed, timeout); tools: "ok" or why not
    seconds: float = 0.0
    isolation: tuple[str, ...] = ()


@dataclass(frozen=True)
class Item:
    """One problem: its id, the runner job that asks it, and the check of a reply (blocking: run
    on a worker thread)."""

    id: str
    job: Any  # runner.messages.Job
    check: Callable[[str], Checked]


@dataclass(frozen=True)
class Spec:
    task: Task
    protocol: str
    items: tuple[Item, ...]  # what is generated (retrieval generates nothing: no items)
    ctx: int  # tokens per slot: the longest prompt and the reply
    count: int | None = None  # the problems, where they are not items (retrieval's queries)

    @property
    def problems(self) -> int:
        return len(self.items) if self.count is None else self.count


def spec_for(task: Task, model: ResolvedModel, limit: int | None) -> Spec:
    if task is Task.HUMANEVAL:
        return humaneval_spec(limit)
    if task is Task.TOOLS:
        return tools_spec(model, limit)
    from . import retrieval

    return Spec(Task.RETRIEVAL, retrieval.PROTOCOL, (), 0, len(retrieval.load_set().queries[:limit]))


def humaneval_spec(limit: int | None) -> Spec:
    from ..runner.messages import Job

    limits = Limits()

    def check(problem: humaneval.Problem) -> Callable[[str], Checked]:
        def run(reply: str) -> Checked:
            done = run_python(humaneval.program(problem, reply), limits)
            return Checked(done.passed, done.outcome.value, round(done.seconds, 4), done.isolation)
        return run

    problems = humaneval.load_problems()[:limit]
    items = tuple(Item(p.task_id, Job(prompt=humaneval.messages(p), sampling=GREEDY, max_tokens=humaneval.MAX_TOKENS,
                                      stop=humaneval.STOP), check(p)) for p in problems)
    prompt_room = max(len(p.prompt) for p in problems) // 2 + 256  # characters / 2 bounds the tokens
    return Spec(Task.HUMANEVAL, humaneval.PROTOCOL, items, humaneval.MAX_TOKENS + prompt_room)


def tools_spec(model: ResolvedModel, limit: int | None) -> Spec:
    from . import tool_calls

    def check(case: tool_calls.Case, plan: Any) -> Callable[[str], Checked]:
        def run(reply: str) -> Checked:
            calls = [(c.name, c.arguments) for c in plan.read(reply).calls]
            passed, why = tool_calls.score(case, calls)
            return Checked(passed, why)
        return run

    items = []
    fmt = tool_calls.tool_format(model)  # one template read for the whole suite
    for case in tool_calls.load_suite()[:limit]:
        plan = tool_calls.plan_for(fmt, case)
        items.append(Item(case.id, tool_calls.job_for(model, plan, case, GREEDY), check(case, plan)))
    return Spec(Task.TOOLS, tool_calls.PROTOCOL, tuple(items), 2048)


def kept_task(store: Store, model: ResolvedModel, task: Task, limit: int | None = None,
              spec: Any = None) -> TaskResult | None:
    """The kept result of ``model`` on ``task`` with this protocol and problem count, if any (nothing runs)."""
    if model.digest is None:
        return None
    spec = spec or spec_for(task, model, limit)
    kept = load_task_result(store, task_key(model.digest, task, spec.protocol, spec.problems))
    return kept.renamed(model.name) if kept is not None else None


def run_task(
    store: Store,
    model: ResolvedModel,
    task: Task,
    *,
    limit: int | None = None,
    slots: int = 4,
    threads: int | None = None,
    home: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
    runner_factory: Callable[..., Any] | None = None,
) -> TaskResult:
    """Score ``model`` on ``task`` (its first ``limit`` problems), greedy; kept by content."""
    if model.digest is None:
        raise InvalidParameterError(
            f"{model.name} is not in the store; task results are kept by a stored model's digest: import it first"
        )
    if limit is not None and limit < 1:
        raise InvalidParameterError(f"limit {limit}: give at least 1 problem", params="limit")
    if not 1 <= slots <= 64:
        raise InvalidParameterError(f"slots {slots} is out of range; valid: 1 to 64", params="slots")
    if task is not Task.RETRIEVAL:
        model.info.check_generates(model.name)
    spec = spec_for(task, model, limit)
    if not force and (kept := kept_task(store, model, task, limit, spec)) is not None:
        return kept
    key = task_key(model.digest, task, spec.protocol, spec.problems)
    from ..runner.process import Runner

    start = time.perf_counter()
    runner = (runner_factory or Runner)(model, slots=slots, ctx_per_slot=max(spec.ctx, 512), threads=threads,
                                        home=home, prompt_cache=True)
    try:
        work = _retrieve(runner, spec.problems, progress) if task is Task.RETRIEVAL else \
            _answer_all(runner, spec.items, slots, progress)
        answers = asyncio.run(work)
    finally:
        runner.close()
    result = TaskResult(
        key=key, created=datetime.now(timezone.utc).isoformat(timespec="seconds"), task=task.value,
        protocol=spec.protocol, model=model.name, model_digest=model.digest, problems=spec.problems,
        passed=sum(a.passed for a, _ in answers), seconds=round(time.perf_counter() - start, 2), slots=slots,
        isolation=answers[0][1] if answers else (), answers=tuple(a for a, _ in answers),
    )
    save_task_result(store, result)
    return result


async def _answer_all(
    runner: Any, items: Sequence[Item], slots: int, progress: Progress | None
) -> list[tuple[Answer, tuple[str, ...]]]:
    gate = asyncio.Semaphore(slots)
    done = passed = 0

    async def one(item: Item) -> tuple[Answer, tuple[str, ...]]:
        nonlocal done, passed
        async with gate:
            reply, finish, tokens = await _generate(runner, item.job)
        checked = await asyncio.to_thread(item.check, reply)
        done, passed = done + 1, passed + checked.passed
        if progress:
            progress(done, len(items), passed)
        answer = Answer(item.id, checked.passed, checked.outcome, reply, tokens, finish, checked.seconds)
        return answer, checked.isolation

    return list(await asyncio.gather(*(one(item) for item in items)))


async def _retrieve(runner: Any, count: int, progress: Progress | None) -> list[tuple[Answer, tuple[str, ...]]]:
    """Embed the passages and the first ``count`` queries (as ``/v1/embeddings`` does), then rank."""
    from . import retrieval

    kept = retrieval.load_set()
    queries = kept.queries[:count]
    passages = (await runner.aembed(list(kept.passages), truncate=True)).vectors
    asked = (await runner.aembed([q.text for q in queries], truncate=True)).vectors
    out: list[tuple[Answer, tuple[str, ...]]] = []
    passed = 0
    for i, (q, vec) in enumerate(zip(queries, asked, strict=True), 1):
        rank = retrieval.rank_of(vec, passages, q.relevant)
        passed += rank <= retrieval.TOP_K
        out.append((Answer(q.id, rank <= retrieval.TOP_K, f"rank {rank}", q.text, 0, "stop", 0.0), ()))
        if progress:
            progress(i, len(queries), passed)
    return out


async def _generate(runner: Any, job: Any) -> tuple[str, str, int]:
    from ..runner.messages import Chunk, Done

    pieces: list[str] = []
    finish, tokens = "stop", 0
    async for event in runner.agenerate(job):
        if isinstance(event, Chunk):
            pieces.append(event.text)
        elif isinstance(event, Done):
            finish, tokens = event.finish, event.completion_tokens
    return "".join(pieces), finish, tokens

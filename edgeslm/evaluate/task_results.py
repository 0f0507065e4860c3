"""Task results kept in the store (``<store>/results/task-<key>.json``): the record, read and written.

Light on purpose (no engine, no runner): the web page and ``compare`` read them too.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from ..store import Store
from ..store.atomic import write_atomic
from ..store.records import Manifest
from .kept import results_dir

log = logging.getLogger(__name__)
TASK_SCHEMA = 1


class Task(str, Enum):
    HUMANEVAL = "humaneval"
    TOOLS = "tools"
    RETRIEVAL = "retrieval"  # an embedding model: recall@5 (the score) and MRR on the kept set


@dataclass(frozen=True)
class Answer:
    """One problem: the model's reply as generated, and how its check ended."""

    task_id: str
    passed: bool
    # HumanEval: the sandbox's (passed, failed, killed, timeout); tools: "ok" or why not; retrieval: "rank N"
    outcome: str
    reply: str
    completion_tokens: int
    finish: str  # stop or length
    check_seconds: float


@dataclass(frozen=True)
class TaskResult:
    key: str
    created: str
    task: str
    protocol: str
    model: str
    model_digest: str
    problems: int
    passed: int
    seconds: float
    slots: int
    isolation: tuple[str, ...]  # what the sandbox applied (HumanEval; the first answer's: every run gets the same)
    answers: tuple[Answer, ...]

    @property
    def score(self) -> float:
        return self.passed / self.problems if self.problems else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "schema": TASK_SCHEMA, "score": self.score}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskResult:
        answers = tuple(Answer(**a) for a in data["answers"])
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k not in ("answers", "isolation")}
        return cls(**fields, isolation=tuple(data["isolation"]), answers=answers)

    def renamed(self, name: str) -> TaskResult:
        return TaskResult(**{**self.__dict__, "model": name})


def task_key(digest: str, task: Task, protocol: str, problems: int) -> str:
    basis = json.dumps([digest, task.value, protocol, problems, TASK_SCHEMA])
    return hashlib.sha256(basis.encode()).hexdigest()[:32]


def load_task_result(store: Store, key: str) -> TaskResult | None:
    return _read(results_dir(store) / f"task-{key}.json")


def save_task_result(store: Store, result: TaskResult) -> None:
    results_dir(store).mkdir(parents=True, exist_ok=True)
    write_atomic(results_dir(store) / f"task-{result.key}.json", json.dumps(result.to_dict()).encode(),
                 store.tmp_dir)


def latest_task_results(store: Store, manifests: Iterable[Manifest]) -> dict[str, dict[Task, TaskResult]]:
    """Per model name, per task: the kept result over the most problems (the newest among those),
    matched by content as KLD results are; models never measured are left out."""
    names: dict[str, list[str]] = {}
    for m in manifests:
        names.setdefault(m.digest, []).append(str(m.name))
    folder = results_dir(store)
    out: dict[str, dict[Task, TaskResult]] = {}
    for path in sorted(folder.glob("task-*.json")) if folder.is_dir() else []:
        result = _read(path)
        if result is None or result.task not in {t.value for t in Task}:
            continue
        task = Task(result.task)
        for name in names.get(result.model_digest, ()):
            best = out.setdefault(name, {}).get(task)
            if best is None or (result.problems, result.created) > (best.problems, best.created):
                out[name][task] = result.renamed(name)
    return out


def _read(path: Path) -> TaskResult | None:
    try:
        return TaskResult.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("ignoring unreadable task result %s", path)
        return None

"""eval --task humaneval: the data, the authors' protocol, sanitising, scoring, keeping results."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from edgeslm.errors import InputFileError, InvalidParameterError
from edgeslm.runner.messages import Chunk, Done, Job
from edgeslm.store import Store
from edgeslm.store.resolve import ResolvedModel
from edgeslm.tasks import humaneval, tool_calls
from edgeslm.tasks.core import Task, load_task_result, parse_tasks, run_task, task_key
from edgeslm.tasks.sandbox import run_python
from edgeslm.tools.native import ToolFormat
from edgeslm.tools.plan import plan_tools


def _canonical() -> dict[str, str]:
    with gzip.open(humaneval.data_path(), "rt") as f:
        return {item["task_id"]: item["prompt"] + item["canonical_solution"] for item in map(json.loads, f)}


def test_the_data_file_is_humanevals() -> None:
    problems = humaneval.load_problems()
    assert len(problems) == 164 and problems[0].task_id == "HumanEval/0" and problems[-1].task_id == "HumanEval/163"
    assert all(p.entry_point.isidentifier() and "def check" in p.test for p in problems)


def test_every_canonical_solution_passes_through_the_harness() -> None:
    """The harness itself, proven on the answers the dataset ships: prompt + canonical solution,
    sanitised as a reply is, run with its tests in the sandbox."""
    canonical = _canonical()
    failed = [p.task_id for p in humaneval.load_problems()
              if not run_python(humaneval.program(p, canonical[p.task_id])).passed]
    assert failed == []


def test_a_wrong_solution_fails() -> None:
    problem = humaneval.load_problems()[2]  # truncate_number
    wrong = "def truncate_number(number: float) -> float:\n    return number\n"
    assert not run_python(humaneval.program(problem, wrong)).passed


def test_the_prompt_is_the_authors() -> None:
    problem = humaneval.load_problems()[0]
    system, user, assistant = humaneval.messages(problem)
    assert system == {"role": "system", "content": humaneval.SYSTEM}
    asked = "Can you complete the following Python function?"
    assert user["content"] == f"{asked}\n```python\n{problem.prompt.strip()}\n```\n"
    assert assistant == {"role": "assistant", "content": "```python\n"}
    assert "\n```" in humaneval.STOP and "\n#" in humaneval.STOP and humaneval.MAX_TOKENS == 2048


def test_the_reply_stops_at_the_fence_and_tabs_become_spaces() -> None:
    assert humaneval.reply_code("def f():\n\treturn 1\n```\nThis function returns 1.") == "def f():\n    return 1\n"


def test_sanitize_keeps_imports_and_what_the_entry_point_reaches() -> None:
    reply = (
        "import math\nfrom typing import List\n\nHELP = 3\nUNUSED = 4\n\n"
        "def helper(x):\n    return x * HELP\n\n"
        "def unrelated():\n    return 0\n\n"
        "def solve(xs: List[int]) -> int:\n    return sum(helper(x) for x in xs)\n\n"
        "print(solve([1, 2]))\nassert solve([1]) == 3\n"
    )
    out = humaneval.sanitize(reply, "solve")
    assert "import math" in out and "from typing import List" in out
    assert "def helper" in out and "HELP = 3" in out and "def solve" in out
    assert "unrelated" not in out and "UNUSED" not in out and "print(" not in out and "assert" not in out


def test_sanitize_takes_the_longest_part_that_parses() -> None:
    reply = "Here is the function you asked for:\ndef solve(x):\n    return x + 1\nHope it helps!"
    assert humaneval.sanitize(reply, "solve") == "def solve(x):\n    return x + 1"


def test_a_reply_with_no_code_fails_without_stopping_anything() -> None:
    problem = humaneval.load_problems()[2]
    assert humaneval.sanitize("I cannot help with that.", problem.entry_point) == ""
    result = run_python(humaneval.program(problem, "I cannot help with that."))
    assert not result.passed and "NameError" in result.stderr


@pytest.mark.parametrize("text", ["", "  ,", "humaneval,nope", "mmlu"])
def test_an_unknown_task_is_refused_by_name(text: str) -> None:
    with pytest.raises(InvalidParameterError, match="tasks: humaneval, tools"):
        parse_tasks(text)


def test_tasks_parse() -> None:
    assert parse_tasks(" HumanEval ,humaneval,tools") == [Task.HUMANEVAL, Task.TOOLS]


@pytest.mark.parametrize(
    "content",
    [b"not gzip at all", gzip.compress(b"{\"task_id\": 1}\n"), gzip.compress(b"[1, 2]\n"),
     gzip.compress(b'{"task_id": "a", "prompt": "p", "entry_point": "x; import os", "test": "t"}\n'),
     gzip.compress(b""), gzip.compress(b" " * (humaneval.MAX_DATA_BYTES + 10))],
)
def test_a_data_file_that_is_not_humanevals_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "HumanEval.jsonl.gz"
    path.write_bytes(content)
    with pytest.raises(InputFileError, match=str(path)):
        humaneval.load_problems(path)


class _Replies:
    """A runner that answers each problem with its canonical solution (or a wrong one), and can
    be made to fail after some replies (an interrupt half-way)."""

    def __init__(self, answers: dict[str, str], fail_after: int | None = None) -> None:
        self.answers, self.fail_after, self.served, self.closed = answers, fail_after, 0, False
        self.by_prompt = {humaneval.USER.format(prompt=p.prompt.strip()): p.task_id for p in humaneval.load_problems()}

    def __call__(self, model: Any, **kwargs: Any) -> _Replies:
        self.kwargs = kwargs
        return self

    async def agenerate(self, job: Job) -> AsyncIterator[Chunk | Done]:
        if self.fail_after is not None and self.served >= self.fail_after:
            raise KeyboardInterrupt
        self.served += 1
        prompt = cast(list[dict[str, str]], job.prompt)
        assert prompt[-1] == {"role": "assistant", "content": humaneval.PREFILL} and job.sampling.temperature == 0
        text = self.answers[self.by_prompt[prompt[1]["content"]]] + "\n```"
        yield Chunk(text.split("\n```")[0], 1)
        yield Done("stop", 10, 5, 0.1, 0.1)

    def close(self) -> None:
        self.closed = True


def _model() -> ResolvedModel:
    info = SimpleNamespace(check_generates=lambda name: None)  # a model that generates
    return cast(ResolvedModel, SimpleNamespace(name="fake:q4", digest="sha256:" + "ab" * 32, info=info))


def test_pass_at_1_is_counted_and_kept_by_content(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "models")
    answers = _canonical()
    answers["HumanEval/1"] = "def separate_paren_groups(s):\n    return []\n"
    runner = _Replies(answers)
    result = run_task(store, _model(), Task.HUMANEVAL, limit=6, slots=3, runner_factory=runner)
    assert (result.problems, result.passed) == (6, 5) and runner.closed and runner.kwargs["slots"] == 3
    assert [a.task_id for a in result.answers] == [f"HumanEval/{i}" for i in range(6)]
    assert not result.answers[1].passed and result.answers[1].outcome == "failed"
    assert result.protocol == humaneval.PROTOCOL and result.isolation
    key = task_key(_model().digest or "", Task.HUMANEVAL, humaneval.PROTOCOL, 6)
    assert load_task_result(store, key) == result
    no_runner = _Replies({}, fail_after=0)  # kept: the runner is never asked
    again = run_task(store, _model(), Task.HUMANEVAL, limit=6, runner_factory=no_runner)
    assert again == result


def test_an_interrupted_run_keeps_nothing(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "models")
    runner = _Replies(_canonical(), fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        run_task(store, _model(), Task.HUMANEVAL, limit=8, slots=2, runner_factory=runner)
    assert runner.closed
    results = store.root / "results"
    assert not (results.exists() and list(results.glob("task-*.json")))


@pytest.mark.parametrize("kwargs", [{"limit": 0}, {"slots": 0}, {"slots": 65}])
def test_bad_limits_are_refused(tmp_path: Path, kwargs: dict[str, int]) -> None:
    with pytest.raises(InvalidParameterError):
        run_task(Store.open(tmp_path / "models"), _model(), Task.HUMANEVAL, runner_factory=_Replies({}), **kwargs)


# --- the tool-call suite ---------------------------------------------------------------------------


def _hermes(*calls: tuple[str, dict[str, Any]]) -> str:
    return "".join(f"<tool_call>\n{json.dumps({'name': n, 'arguments': a})}\n</tool_call>\n" for n, a in calls)


def _read(case: tool_calls.Case, text: str) -> tuple[bool, str]:
    """The reply read by the serving path's parser for the Hermes format, then scored."""
    plan = replace(plan_tools(list(case.tools), "auto", True, has_format=False), fmt=ToolFormat.HERMES)
    return tool_calls.score(case, [(c.name, c.arguments) for c in plan.read(text).calls])


@pytest.fixture(scope="module")
def suite() -> dict[str, tool_calls.Case]:
    return {c.id: c for c in tool_calls.load_suite()}


def test_the_suite_has_150_cases_in_four_kinds(suite: dict[str, tool_calls.Case]) -> None:
    kinds = Counter(c.kind for c in suite.values())
    assert len(suite) >= 150 and set(kinds) == set(tool_calls.KINDS) and min(kinds.values()) >= 35
    assert all(len(c.tools) >= 4 for c in suite.values() if c.kind == "choose")
    assert all(len(c.expect) >= 2 for c in suite.values() if c.kind == "parallel")


def test_a_right_call_scores(suite: dict[str, tool_calls.Case]) -> None:
    case = suite["single-get_weather-1"]  # Seattle, in fahrenheit
    assert _read(case, _hermes(("get_weather", {"city": "Seattle, WA", "unit": "fahrenheit"}))) == (True, "ok")
    assert _read(case, "Sure! " + _hermes(("get_weather", {"city": "seattle", "unit": "fahrenheit"})))[0]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("It is probably raining in Seattle.", "no call"),
        ("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Seattle\"\n</tool_call>", "no call"),
        (_hermes(("get_time", {"timezone": "America/Los_Angeles"})), "no call"),  # the parser keeps offered tools only
        (_hermes(("get_weather", {"city": "Seattle", "unit": "kelvin"})), "not one of"),
        (_hermes(("get_weather", {"city": 7, "unit": "fahrenheit"})), "not string"),
        (_hermes(("get_weather", {"unit": "fahrenheit"})), "missing required argument city"),
        (_hermes(("get_weather", {"city": "Seattle", "unit": "fahrenheit", "days": 3})), "not in the tool's schema"),
        (_hermes(("get_weather", {"city": "Portland", "unit": "fahrenheit"})), "answers no expected call"),
        (_hermes(("get_weather", {"city": "Seattle"})), "answers no expected call"),  # the unit asked for is missing
        (_hermes(("get_weather", {"city": "Seattle", "unit": "fahrenheit"}),
                 ("get_weather", {"city": "Seattle", "unit": "fahrenheit"})), "2 calls where 1"),
    ],
)
def test_a_wrong_reply_scores_nothing_and_says_why(suite: dict[str, tool_calls.Case], text: str, why: str) -> None:
    passed, said = _read(suite["single-get_weather-1"], text)
    assert not passed and why in said


def test_a_call_to_a_tool_not_offered_is_wrong(suite: dict[str, tool_calls.Case]) -> None:
    passed, why = tool_calls.score(suite["single-get_weather-1"], [("get_time", {"timezone": "UTC"})])
    assert not passed and "not offered" in why


def test_types_are_checked_strictly(suite: dict[str, tool_calls.Case]) -> None:
    case = suite["single-set_timer-0"]  # 15 minutes, an integer
    assert _read(case, _hermes(("set_timer", {"minutes": 15})))[0]
    assert not _read(case, _hermes(("set_timer", {"minutes": "15"})))[0]
    assert not _read(case, _hermes(("set_timer", {"minutes": 15.5})))[0]
    assert not _read(case, _hermes(("set_timer", {"minutes": True})))[0]
    assert not _read(case, _hermes(("set_timer", {"minutes": 0})))[0]  # below its minimum


def test_parallel_calls_match_in_any_order(suite: dict[str, tool_calls.Case]) -> None:
    case = suite["parallel-0"]  # London and Madrid
    london, madrid = ("get_weather", {"city": "London"}), ("get_weather", {"city": "Madrid, Spain"})
    assert _read(case, _hermes(madrid, london))[0] and _read(case, _hermes(london, madrid))[0]
    assert not _read(case, _hermes(london))[0] and not _read(case, _hermes(london, london))[0]


def test_no_call_is_right_only_where_no_tool_fits(suite: dict[str, tool_calls.Case]) -> None:
    case = suite["none-0"]  # a haiku, weather and time offered
    assert _read(case, "Crimson leaves descend") == (True, "ok")
    passed, why = _read(case, _hermes(("get_weather", {"city": "Paris"})))
    assert not passed and "no tool fits" in why


@pytest.mark.parametrize(
    "doc",
    ["not json", "[]", '{"tools": {}, "cases": []}',
     '{"tools": {}, "cases": [{"id": "a", "kind": "single", "tools": ["nope"], "request": "r", "expect": []}]}'],
)
def test_a_suite_that_is_not_one_is_refused(tmp_path: Path, doc: str) -> None:
    path = tmp_path / "suite.json"
    path.write_text(doc)
    with pytest.raises(InputFileError, match=str(path)):
        tool_calls.load_suite(path)


def test_a_case_whose_answer_names_a_tool_not_offered_is_refused(tmp_path: Path) -> None:
    doc = json.loads(tool_calls.suite_path().read_text())
    doc["cases"][0]["expect"][0]["name"] = "get_time"
    path = tmp_path / "suite.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(InputFileError, match="disagree"):
        tool_calls.load_suite(path)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--task", "mmlu"), "named mmlu; tasks: humaneval, tools"),
        (("--task", "humaneval", "--limit", "0"), "give at least 1"),
        (("--task", "tools", "--slots", "0"), "slots 0 is out of range"),
    ],
)
def test_eval_task_bad_input_is_a_clear_error(cli: Any, tmp_path: Path, args: tuple[str, ...], words: str) -> None:
    from .ggufbuild import write_runnable_model

    assert cli("import", str(write_runnable_model(tmp_path / "m.gguf")), "--name", "m").code == 0
    done = cli("eval", "m", *args)
    assert done.code == 2 and words in done.err


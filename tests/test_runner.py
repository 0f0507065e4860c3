"""Model runners: a worker process per model, requests batched inside it, crashes contained."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeslm.engines.base import SamplingParams, Tuning
from edgeslm.errors import ContextOverflowError, EngineError, InvalidParameterError, ModelNotFoundError
from edgeslm.generation import generate as generate_locally
from edgeslm.generation import load
from edgeslm.runner import Chunk, Done, Runner

from .servekit import generate

GREEDY = SamplingParams(temperature=0)
CHAT = [{"role": "user", "content": "What is the capital of France?"}]


def test_the_server_side_loads_no_native_code() -> None:
    code = "import sys, edgeslm.runner, edgeslm.access.keys, edgeslm.access.audit; print('llama_cpp' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


@pytest.fixture
def runner(builtin_home: Path, home: Path) -> Iterator[Runner]:
    shutil.copytree(builtin_home, home, dirs_exist_ok=True)
    r = Runner("smollm2-135m-instruct", slots=2, ctx_per_slot=256)
    yield r
    r.close()


def collect(events: Iterator[Chunk | Done]) -> tuple[str, Done]:
    parts, done = [], None
    for ev in events:
        if isinstance(ev, Chunk):
            parts.append(ev.text)
        else:
            done = ev
    assert done is not None
    return "".join(parts), done


@pytest.mark.real_model
def test_runner_output_equals_local_generation(runner: Runner, home: Path) -> None:
    model = load("smollm2-135m-instruct", ctx=256)
    try:
        for prompt, kwargs in (
            (CHAT, {"max_tokens": 32}),
            ("The capital of France is", {"max_tokens": 20, "stop": ["."]}),
        ):
            local = generate_locally(model, prompt, sampling=GREEDY, **kwargs)  # type: ignore[arg-type]
            text, done = collect(generate(runner, prompt, GREEDY, **kwargs))  # type: ignore[arg-type]
            assert text == local.text and done.finish == local.finish_reason
            assert done.completion_tokens == len(local.tokens) and done.prompt_tokens == local.last.prompt_tokens
    finally:
        model.close()


@pytest.mark.real_model
def test_concurrent_requests_queue_for_the_slots(runner: Runner) -> None:
    results: dict[int, tuple[str, Done]] = {}
    prompts = ["Once upon a time", "def f(x):", "Water boils at", "The sea is", "Paris is"]

    def ask(i: int) -> None:
        results[i] = collect(generate(runner, prompts[i], GREEDY, max_tokens=16))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]  # 5 requests, 2 slots
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(results) == list(range(5))
    for i, (text, done) in results.items():
        assert done.completion_tokens == 16 or done.finish == "stop", (i, text)


@pytest.mark.real_model
def test_cancel_and_bad_requests_leave_the_runner_serving(runner: Runner) -> None:
    stream = generate(runner, "Tell me a very long story", SamplingParams(temperature=0.8, seed=1), max_tokens=200)
    for k, _ in enumerate(stream):
        if k == 3:
            break
    stream.close()  # frees the slot
    with pytest.raises(ContextOverflowError, match="400 tokens but the context holds 256 per request; nothing was cut"):
        collect(generate(runner, "word " * 399, GREEDY, max_tokens=4))
    # half a million tokens of paste: refused from its size, before any tokenizing
    with pytest.raises(ContextOverflowError, match=r"2,000,000 bytes are at least .* nothing was cut or tokenized"):
        collect(generate(runner, "word " * 400_000, GREEDY, max_tokens=4))
    bad = SamplingParams(temperature=0)
    object.__setattr__(bad, "temperature", float("nan"))  # what a client could send past the HTTP checks
    with pytest.raises(InvalidParameterError, match="temperature"):
        collect(generate(runner, "hi", bad, max_tokens=4))
    text, done = collect(generate(runner, "Hi", GREEDY, max_tokens=4))
    assert done.completion_tokens <= 4 and runner.alive


@pytest.mark.real_model
def test_truncation_only_when_asked_drops_the_oldest_turns(runner: Runner) -> None:
    """A chat over the context: refused by default (naming how to ask for truncation); with truncate,
    the oldest turns go, the system message and the last turn stay; a text loses its start."""
    chat = [{"role": "system", "content": "You are SYSTEMKEPT."}]
    for i in range(12):
        chat += [{"role": "user", "content": f"Question {i}: " + "tell me about the sea " * 6},
                 {"role": "assistant", "content": f"Answer {i}: the sea is large."}]
    chat.append({"role": "user", "content": "LASTQUESTION: say hi."})
    with pytest.raises(ContextOverflowError, match=r"nothing was cut: shorten it, ask for truncation"):
        collect(generate(runner, chat, GREEDY, max_tokens=8))
    text, done = collect(generate(runner, chat, GREEDY, max_tokens=8, truncate=True, return_prompt_ids=True))
    kept = runner_text(runner, done.prompt_ids)
    assert done.prompt_tokens <= 256 - 8 and done.completion_tokens > 0
    assert "SYSTEMKEPT" in kept and "LASTQUESTION" in kept and "Question 0:" not in kept and "Question 11:" in kept
    kept_turns = [m for m in chat if m["role"] == "system" or f"{m['content'][:12]}" in kept]
    again, _ = collect(generate(runner, kept_turns, GREEDY, max_tokens=8))
    assert again == text  # the same reply as the kept turns asked directly
    text_prompt = "START " + "word " * 600 + "END"
    _, cut = collect(generate(runner, text_prompt, GREEDY, max_tokens=8, truncate=True, return_prompt_ids=True))
    words = runner_text(runner, cut.prompt_ids)
    assert cut.prompt_tokens == 256 - 8 and words.endswith("END") and "START" not in words
    one = [{"role": "user", "content": "word " * 400}]  # one turn: nothing to drop
    with pytest.raises(ContextOverflowError, match="its last turn alone does not fit even truncated"):
        collect(generate(runner, one, GREEDY, max_tokens=8, truncate=True))


def runner_text(runner: Runner, ids: tuple[int, ...]) -> str:
    from edgeslm.generation import load as load_model

    model = load_model("smollm2-135m-instruct", ctx=256)
    try:
        return b"".join(model.engine.token_bytes(t, special=True) for t in ids).decode("utf-8", errors="replace")
    finally:
        model.close()


@pytest.mark.real_model
def test_a_killed_runner_fails_only_its_requests(runner: Runner) -> None:
    stream = generate(runner, "Tell me a very long story", SamplingParams(temperature=0.8, seed=1), max_tokens=400)
    next(stream)
    os.kill(runner.pid, signal.SIGKILL)
    with pytest.raises(EngineError, match="stopped .* during this request; the next request restarts it"):
        collect(stream)
    assert not runner.alive
    with pytest.raises(EngineError, match="has stopped"):
        collect(generate(runner, "Hi", GREEDY, max_tokens=4))
    again = Runner("smollm2-135m-instruct", slots=1, ctx_per_slot=128)
    try:
        assert collect(generate(again, "Hi", GREEDY, max_tokens=4))[1].completion_tokens <= 4
    finally:
        again.close()


@pytest.mark.real_model
def test_a_runner_decodes_prompts_in_the_micro_batch_it_was_given(builtin_home: Path, home: Path) -> None:
    shutil.copytree(builtin_home, home, dirs_exist_ok=True)
    small = Runner("smollm2-135m-instruct", slots=2, ctx_per_slot=256, tuning=Tuning(16, True, False))
    try:
        assert small.info["n_batch"] == 16
        text, done = collect(generate(small, "Count from one to twenty: one, two, three, four, five, six, seven",
                                      GREEDY, max_tokens=8))
        assert done.prompt_tokens > 16 and done.completion_tokens >= 1 and text  # a prompt over several steps
    finally:
        small.close()


def test_an_unknown_model_is_refused_at_start(home: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="not found"):
        Runner("no-such-model", slots=1, ctx_per_slot=64)


@pytest.mark.parametrize(("choice", "grammars", "constrained"),
                         [("auto", True, True), ("auto", False, False), ("required", False, True)])
def test_a_runtime_without_grammars_answers_auto_tool_calls_unconstrained(
    builtin_home: Path, choice: str, grammars: bool, constrained: bool
) -> None:
    """tool_choice "auto" on onnxruntime/mlx: no grammar (the parser reads the calls); a forced call
    keeps its grammar, which such a batch then refuses by name."""
    import json
    from collections import deque
    from types import SimpleNamespace

    from edgeslm.config import resolve_settings
    from edgeslm.runner import worker
    from edgeslm.runner.messages import Job

    tool = {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    tooling = {"format": "hermes", "tools": [tool], "render": [tool], "choice": choice, "name": None, "parallel": True}
    job = Job([{"role": "user", "content": "time in Paris?"}], SamplingParams(temperature=0), 8, tooling=tooling)
    model = load("smollm2-135m-instruct", ctx=256, settings=resolve_settings(home=builtin_home, offline=True))
    try:
        batch, waiting = SimpleNamespace(ctx_per_slot=256, grammars=grammars), deque[worker._Request]()
        worker._handle(json.dumps(job.message("r1")).encode(), model, batch, waiting, {})
    finally:
        model.close()
    assert len(waiting) == 1
    assert (waiting[0].sampling.grammar is not None) is constrained

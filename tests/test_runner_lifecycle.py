"""Runner life cycles with deadlines: workers that hang on load or close, die while loading, or
fail; the manager fails their waiters, retries on the next request and never blocks while closing."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edgeslm.config import resolve_settings
from edgeslm.errors import EngineError, InvalidModelFileError, RunnerTimeoutError, http_status_for
from edgeslm.runner import Embeddings, LoadState, Runner
from edgeslm.runner.manager import ManagerParams, ModelManager
from edgeslm.runner.state import Lifecycle

from .ggufbuild import write_runnable_model

FAKE_WORKER = str(Path(__file__).with_name("fake_worker.py"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fp:  # a zombie is dead, only not reaped yet
        return fp.read().rsplit(")", 1)[1].split()[0] != "Z"


class Modes:
    """The fake worker's mode, and the pids of the workers started so far."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def set(self, mode: str) -> None:
        self.path.write_text(mode + "\n")

    def pids(self) -> list[int]:
        return [int(x) for x in self.path.read_text().split()[1:]]

    def wait_for_pid(self) -> int:
        deadline = time.monotonic() + 30
        while not self.pids():
            assert time.monotonic() < deadline, "the fake worker never started"
            time.sleep(0.01)
        return self.pids()[-1]

    def runner(self, name: str = "m:latest", **kwargs: Any) -> Runner:
        return Runner(name, slots=1, ctx_per_slot=64, worker=(sys.executable, FAKE_WORKER, str(self.path)), **kwargs)


@pytest.fixture
def modes(tmp_path: Path) -> Modes:
    return Modes(tmp_path / "mode")


def test_a_worker_that_never_says_ready_is_killed_at_the_deadline(modes: Modes) -> None:
    modes.set("hang-load")
    start = time.monotonic()
    with pytest.raises(RunnerTimeoutError, match=r"did not finish loading within 1 s and was stopped; the next"):
        modes.runner(load_timeout=1.0)
    assert time.monotonic() - start < 5
    assert not _alive(modes.pids()[0])
    assert http_status_for(RunnerTimeoutError("x")) == 503


def test_a_worker_killed_while_loading_fails_the_load_at_once(modes: Modes) -> None:
    modes.set("hang-load")
    failures: list[BaseException] = []

    def load() -> None:
        try:
            modes.runner(load_timeout=60.0)
        except EngineError as exc:
            failures.append(exc)

    thread = threading.Thread(target=load)
    start = time.monotonic()
    thread.start()
    os.kill(modes.wait_for_pid(), signal.SIGKILL)
    thread.join(30)
    assert time.monotonic() - start < 10 and len(failures) == 1
    assert "exited while loading (code -9)" in str(failures[0])


def test_a_worker_that_fails_to_load_raises_its_own_error(modes: Modes) -> None:
    modes.set("fail-load")
    with pytest.raises(InvalidModelFileError, match="bad tensor"):
        modes.runner()


def test_a_worker_that_ignores_close_is_killed_after_the_close_deadline(modes: Modes) -> None:
    modes.set("hang-close")
    runner = modes.runner(close_timeout=1.0)
    assert runner.alive and runner.info["op"] == "ready"
    start = time.monotonic()
    runner.close()
    assert time.monotonic() - start < 5
    assert not runner.alive and not _alive(runner.pid)


def test_transitions_are_checked_and_waits_have_deadlines() -> None:
    life = Lifecycle("m")
    with pytest.raises(RuntimeError, match="loading → closed is not a valid transition"):
        life.move(LoadState.CLOSED)
    with pytest.raises(RunnerTimeoutError, match="still loading after 0.05 s"):
        life.wait_ready(0.05)
    life.move(LoadState.READY)
    assert life.wait_ready(0.0) is LoadState.READY
    with pytest.raises(RuntimeError):
        life.move(LoadState.LOADING)
    failed = Lifecycle("n")
    failed.move(LoadState.FAILED, EngineError("no"))
    with pytest.raises(EngineError, match="no"):
        failed.wait_ready(1)


@pytest.fixture
def manager(modes: Modes, cli: Any, tmp_path: Path, home: Path) -> ModelManager:
    for i, name in enumerate(("a", "b")):
        assert cli("import", str(write_runnable_model(tmp_path / f"{name}.gguf", seed=i)), "--name", name).code == 0
    factory = functools.partial(Runner, worker=(sys.executable, FAKE_WORKER, str(modes.path)), close_timeout=3.0)
    params = ManagerParams(max_loaded=2, slots=1, ctx_per_slot=64, load_timeout=1.0)
    m = ModelManager(resolve_settings(home=home), params, factory)
    yield m
    m.close()


def test_a_hanging_load_fails_every_waiter_and_the_next_request_loads_again(
    manager: ModelManager, modes: Modes
) -> None:
    modes.set("hang-load")
    errors: list[BaseException] = []

    def acquire() -> None:
        try:
            manager.acquire("a")
        except RunnerTimeoutError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=acquire) for _ in range(3)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(errors) == 3 and time.monotonic() - start < 10
    assert len(modes.pids()) == 1 and not _alive(modes.pids()[0])  # one load, shared by all three
    assert manager.ps() == []
    modes.set("ready")
    lease = manager.acquire("a")
    assert lease.runner.alive and [m.name for m in manager.ps()] == ["a:latest"]
    manager.release(lease)


def test_closing_a_hanging_runner_blocks_neither_requests_nor_ps(manager: ModelManager, modes: Modes) -> None:
    """Asserted by order, not by the clock: a's close waits out a long deadline, and meanwhile ps
    answers and b loads and serves; then a's worker is killed and the close returns."""
    manager.factory = functools.partial(Runner, worker=(sys.executable, FAKE_WORKER, str(modes.path)),
                                        close_timeout=120.0)
    modes.set("hang-close")
    lease = manager.acquire("a", keep_alive=0)  # unloaded when released
    modes.set("ready")
    releasing = threading.Thread(target=manager.release, args=(lease,))
    releasing.start()
    deadline = time.monotonic() + 30
    while manager.ps() and time.monotonic() < deadline:  # retired at once; ps is never blocked by the close
        time.sleep(0.01)
    assert manager.ps() == [] and releasing.is_alive() and lease.runner.alive
    with manager.lease("b") as runner:
        assert runner.alive
    assert releasing.is_alive() and lease.runner.alive  # b loaded and served while a was still being closed
    os.kill(lease.runner.pid, signal.SIGKILL)
    releasing.join(30)
    assert not releasing.is_alive() and not lease.runner.alive and not _alive(lease.runner.pid)


def test_a_worker_that_goes_mute_but_lives_on_is_killed_not_waited_for(modes: Modes) -> None:
    modes.set("hang-mute")
    runner = modes.runner(close_timeout=1.0)
    deadline = time.monotonic() + 30
    while _alive(runner.pid) and time.monotonic() < deadline:  # the reader saw its stdout close
        time.sleep(0.05)
    assert not _alive(runner.pid) and not runner.alive  # killed at its close deadline, not waited on forever
    runner.close()  # nothing left to close
    assert not runner.alive


def _run_in_thread(main: Any, limit: float = 60.0) -> Any:
    """Run the coroutine function ``main`` on an event loop of its own thread; a loop that blocks
    fails the test at ``limit`` instead of hanging the suite."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["result"] = asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), f"the event loop was still blocked after {limit:g} s"
    if "error" in out:
        raise out["error"]
    return out["result"]


def test_a_worker_that_stops_reading_blocks_neither_the_loop_nor_other_requests(modes: Modes) -> None:
    """Requests larger than the pipe's buffer to a worker that never reads: each fails at the write
    deadline, the worker is killed, and meanwhile the event loop keeps running (before: the runner's
    lock was held across the blocking write, and the next request froze the loop for good)."""
    modes.set("deaf")
    runner = modes.runner(write_timeout=2.0, close_timeout=1.0)
    big = ["x" * 300_000]  # several times a pipe's 64 KiB

    async def main() -> tuple[list[BaseException | Embeddings], int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        tick = asyncio.create_task(ticker())
        results = await asyncio.gather(*(runner.aembed(big) for _ in range(4)), return_exceptions=True)
        tick.cancel()
        return results, ticks

    results, ticks = _run_in_thread(main)
    assert ticks > 0
    assert all(isinstance(r, EngineError) for r in results), results
    assert any("stopped reading its requests for 2 s" in str(r) for r in results), results
    deadline = time.monotonic() + 30
    while _alive(runner.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not runner.alive and not _alive(runner.pid)
    with pytest.raises(EngineError, match="has stopped; the next request restarts it"):
        _run_in_thread(lambda: runner.aembed(["again"]))
    runner.close()


def test_an_embedding_waits_for_its_answer_only_until_its_deadline(modes: Modes) -> None:
    modes.set("silent")
    runner = modes.runner(embed_timeout=1.0, close_timeout=1.0)
    try:
        with pytest.raises(RunnerTimeoutError, match=r"did not embed 2 text\(s\) within 1 s; send fewer"):
            _run_in_thread(lambda: runner.aembed(["a", "b"]))
        assert runner.alive  # a slow embedding is not a dead runner
    finally:
        runner.close()

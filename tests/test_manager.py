"""The model manager: load on demand, keep_alive, LRU eviction, refusal before loading."""

from __future__ import annotations

import itertools
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from edgeslm.config import resolve_settings
from edgeslm.engines.base import Tuning
from edgeslm.errors import CapacityError, EngineError, ModelNotFoundError, OverBudgetError, http_status_for
from edgeslm.runner import LOAD_TIMEOUT
from edgeslm.runner import manager as manager_module
from edgeslm.runner.manager import ManagerParams, ModelManager
from edgeslm.store.resolve import ResolvedModel

from .ggufbuild import write_runnable_model
from .servekit import generate

PIDS = itertools.count(1000)


class FakeRunner:
    started: list[str] = []

    def __init__(self, model: ResolvedModel, **kwargs: Any) -> None:
        self.name, self.kwargs, self.alive, self.pid = model.name, kwargs, True, next(PIDS)
        self.model = model
        FakeRunner.started.append(model.name)

    def close(self) -> None:
        self.alive = False


@pytest.fixture
def models(cli: Any, tmp_path: Path, home: Path) -> ModelManager:
    for i, name in enumerate(("a", "b", "c")):
        assert cli("import", str(write_runnable_model(tmp_path / f"{name}.gguf", seed=i)), "--name", name).code == 0
    FakeRunner.started = []
    return ModelManager(resolve_settings(home=home), ManagerParams(max_loaded=2, slots=2, ctx_per_slot=256), FakeRunner)


def test_loads_on_demand_and_evicts_the_least_recently_used(models: ModelManager) -> None:
    with models.lease("a") as ra, models.lease("a") as ra2:
        assert ra is ra2 and ra.kwargs == {
            "slots": 2,
            "ctx_per_slot": 256,
            "threads": None,
            "home": str(models.settings.home),
            "prompt_cache": True,
            "load_timeout": LOAD_TIMEOUT,
            "kv": "f16",
            "tuning": Tuning(),
        }
    with models.lease("b"):
        pass
    with models.lease("a"):  # a is now more recent than b
        pass
    with models.lease("c"):
        pass
    assert FakeRunner.started == ["a:latest", "b:latest", "c:latest"]
    assert [m.name for m in models.ps()] == ["c:latest", "a:latest"]  # b went first


def test_busy_models_are_not_evicted(models: ModelManager) -> None:
    with models.lease("a"), models.lease("b"):
        with pytest.raises(CapacityError, match=r"cannot make room \(a:latest, b:latest serving requests\); retry"):
            with models.lease("c"):
                pass
    assert {m.name for m in models.ps()} == {"a:latest", "b:latest"} and all(m.in_flight == 0 for m in models.ps())


def test_keep_alive(models: ModelManager, monkeypatch: pytest.MonkeyPatch) -> None:
    with models.lease("a", keep_alive=0):
        assert [m.name for m in models.ps()] == ["a:latest"]
    assert models.ps() == []  # 0: unloaded after the request
    with models.lease("b", keep_alive=-1):
        pass
    with models.lease("c", keep_alive=60):
        pass
    infos = {m.name: m for m in models.ps()}
    assert infos["b:latest"].expires_in is None and 59 < (infos["c:latest"].expires_in or 0) <= 60
    now = time.monotonic()
    monkeypatch.setattr(manager_module.time, "monotonic", lambda: now + 61)
    assert models.expire() == ["c:latest"] and [m.name for m in models.ps()] == ["b:latest"]


def test_a_pinned_model_outlives_keep_alive_and_eviction(
    models: ModelManager, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = ManagerParams(max_loaded=2, slots=2, ctx_per_slot=256, pinned=("a",))
    pinned = ModelManager(resolve_settings(home=home), params, FakeRunner)
    assert pinned.pinned == {"a:latest"}
    with pinned.lease("a", keep_alive=0):  # keep_alive 0 would unload it after the request
        pass
    for name in ("b", "c", "b"):  # each load needs room: never a's
        with pinned.lease(name, keep_alive=1):
            pass
    infos = {m.name: m for m in pinned.ps()}
    assert infos["a:latest"].pinned and infos["a:latest"].expires_in is None and not infos["b:latest"].pinned
    assert not pinned.unload("a") and pinned.unload("b")
    now = time.monotonic()
    monkeypatch.setattr(manager_module.time, "monotonic", lambda: now + 3600)
    assert pinned.expire() == [] and [m.name for m in pinned.ps()] == ["a:latest"]
    with pinned.lease("b"), pytest.raises(CapacityError, match=r"\(b:latest serving requests and a:latest pinned\)"):
        with pinned.lease("c"):
            pass
    with pytest.raises(ModelNotFoundError):  # an unknown pin is refused when the server starts
        ModelManager(resolve_settings(home=home), ManagerParams(pinned=("nope",)), FakeRunner)


def test_refused_before_loading_when_it_cannot_fit(models: ModelManager, home: Path) -> None:
    need = models.needs(models.resolve("a"))
    small = ModelManager(resolve_settings(home=home), ManagerParams(memory_budget=need - 1), FakeRunner)
    with pytest.raises(OverBudgetError, match=r"a:latest needs [\d,]+ MiB, more than the server's memory for models "
                       r"\(--max-memory\) [\d,]+ MiB: weights [\d,]+ .*KV cache [\d,]+ .* = [\d,]+ MiB \(\d+ slot\(s\) "
                       r"× [\d,]+ tokens, KV cache f16\); use fewer slots") as refused:
        with small.lease("a"):
            pass
    assert http_status_for(refused.value) == 507  # waiting will not help: not 503
    assert FakeRunner.started == []
    room_for_one = ModelManager(resolve_settings(home=home), ManagerParams(memory_budget=need + need // 2), FakeRunner)
    with room_for_one.lease("a"):
        pass
    with room_for_one.lease("b"):  # the budget, not max_loaded, evicts a
        pass
    assert [m.name for m in room_for_one.ps()] == ["b:latest"]
    with pytest.raises(ModelNotFoundError):
        with models.lease("nope"):
            pass


def test_the_runner_gets_the_batch_settings_and_the_plan_counts_them(home: Path, models: ModelManager) -> None:
    default = models.needs(models.resolve("a"))
    with models.lease("a") as held:
        assert held.kwargs["tuning"] == Tuning() and held.kwargs["kv"] == "f16"
    given = Tuning(64, True, False)
    small = ModelManager(resolve_settings(home=home), ManagerParams(slots=2, ctx_per_slot=256, tuning=given),
                         FakeRunner)
    assert small.needs(small.resolve("a")) < default  # a smaller micro-batch: smaller compute buffers
    with small.lease("a") as held:
        assert held.kwargs["tuning"] == given


def test_a_dead_runner_is_loaded_again(models: ModelManager) -> None:
    with models.lease("a") as first:
        pass
    first.alive = False  # killed
    with models.lease("a") as second:
        assert second is not first and second.alive
    assert FakeRunner.started == ["a:latest", "a:latest"]


@pytest.mark.real_model
def test_real_runners_load_and_unload(builtin_home: Path, home: Path) -> None:
    from edgeslm.engines.base import SamplingParams
    from edgeslm.runner import Chunk

    shutil.copytree(builtin_home, home, dirs_exist_ok=True)
    m = ModelManager(resolve_settings(home=home), ManagerParams(max_loaded=1, slots=1, ctx_per_slot=128))
    try:
        with m.lease("smollm2-135m-instruct") as runner:
            text = "".join(e.text for e in generate(runner, "Hi", SamplingParams(temperature=0), max_tokens=4)
                           if isinstance(e, Chunk))
            assert text and runner.alive
        first = runner
        with m.lease("gemma3-270m") as runner:
            assert runner.alive
        assert not first.alive and [x.name for x in m.ps()] == ["gemma3-270m:latest"]
    finally:
        m.close()
    assert not runner.alive


def test_a_slow_load_blocks_neither_other_models_nor_ps(models: ModelManager) -> None:
    import threading

    gate, loading = threading.Event(), threading.Event()
    fast = models.factory

    def slow_for_c(model: ResolvedModel, **kwargs: Any) -> Any:
        if model.name == "c:latest":
            loading.set()
            assert gate.wait(10)
        return fast(model, **kwargs)

    models.factory = slow_for_c
    held: list[Any] = []
    first = threading.Thread(target=lambda: held.append(models.acquire("c")))
    second = threading.Thread(target=lambda: held.append(models.acquire("c")))  # waits for the same load
    first.start()
    assert loading.wait(10)
    second.start()
    start = time.monotonic()
    with models.lease("a"):
        assert [m.name for m in models.ps()] == ["a:latest"]  # c is still loading: not listed
    assert time.monotonic() - start < 1.0
    gate.set()
    first.join(10)
    second.join(10)
    assert len(held) == 2 and held[0].runner is held[1].runner
    assert FakeRunner.started.count("c:latest") == 1
    assert {m.name: m.in_flight for m in models.ps()}["c:latest"] == 2
    for lease in held:
        models.release(lease)


def test_a_failed_load_fails_its_waiters_and_the_next_request_tries_again(models: ModelManager) -> None:
    fast, calls = models.factory, []

    def failing_once(model: ResolvedModel, **kwargs: Any) -> Any:
        calls.append(model.name)
        if len(calls) == 1:
            raise EngineError("the runner exited while loading")
        return fast(model, **kwargs)

    models.factory = failing_once
    with pytest.raises(EngineError, match="exited while loading"):
        models.acquire("a")
    assert models.ps() == []
    with models.lease("a") as runner:
        assert runner.name == "a:latest" and calls == ["a:latest", "a:latest"]


def test_kv_cache_type_per_model_reaches_the_runner_and_the_memory_estimate(
    models: ModelManager, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """serve --kv-type a=q8_0 / "*": the runner gets the type and the budget counts its smaller
    cache; EDGESLM_KV_CACHE_TYPE is the default for the rest."""
    from edgeslm.formats.kv_cache import KVCache

    q8 = KVCache.parse("q8_0")
    params = ManagerParams(slots=2, ctx_per_slot=4096, kv=(("a", q8), ("*", KVCache.parse("k=q4_0"))))
    m = ModelManager(resolve_settings(home=home), params, FakeRunner)
    plain = ModelManager(resolve_settings(home=home), ManagerParams(slots=2, ctx_per_slot=4096), FakeRunner)
    a = m.resolve("a")
    assert m.kv_cache(a) == q8 and str(m.kv_cache(m.resolve("b"))) == "k=q4_0,v=f16"
    assert m.needs(a) < plain.needs(a)
    with m.lease("a") as runner:
        assert runner.kwargs["kv"] == "q8_0"
    monkeypatch.setenv("EDGESLM_KV_CACHE_TYPE", "q4_0")
    from_env = ModelManager(resolve_settings(home=home), ManagerParams(), FakeRunner)
    with from_env.lease("b") as runner:
        assert runner.kwargs["kv"] == "q4_0"

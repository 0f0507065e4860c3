"""Which models are loaded: on demand, kept for ``keep_alive``, evicted least-recently-used.

A model is loaded (a ``Runner`` started) when a request names it; it stays until its
``keep_alive`` passes with no request (Ollama's default: 5 minutes; 0 unloads it after the
request, a negative value keeps it), and is evicted earlier, least recently used first, when
``max_loaded`` or the memory budget would otherwise be exceeded. A model that would not fit
even alone is refused **before** loading, with what it needs and what is available. A model
serving requests is never evicted; when everything loaded is busy the request is refused
with a capacity error (HTTP 503), never queued without bound.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..config import DEFAULT_ENGINE, DEFAULT_KEEP_ALIVE, Settings
from ..engines.base import Tuning
from ..errors import CapacityError, EdgeslmError, EngineError, InvalidNameError, InvalidParameterError, OverBudgetError
from ..formats.kv_cache import KVCache, kv_cache_for
from ..formats.model_info import estimate_memory
from ..plan.memory import FOLDER_PLANS, MemoryPlan, over_budget, plan_memory
from ..plan.profile import memory_constants
from ..pull import ensure_pulled
from ..speculation.config import LookupConfig
from ..store import Store
from ..store.resolve import ResolvedModel
from ..units import format_bytes
from .process import CLOSE_TIMEOUT, LOAD_TIMEOUT, Runner, RunnerLike
from .state import Lifecycle, LoadState

log = logging.getLogger(__name__)

RUNNER_OVERHEAD = 64 * 2**20  # the worker process itself: Python, numpy, llama.cpp's buffers

# (model: ResolvedModel, *, slots, ctx_per_slot, threads, home, prompt_cache, load_timeout) -> a started runner
RunnerFactory = Callable[..., RunnerLike]


@dataclass(frozen=True)
class ManagerParams:
    max_loaded: int = 3
    memory_budget: int | None = None  # bytes; None: no limit
    slots: int = 4
    ctx_per_slot: int = 2048
    threads: int | None = None
    queue: int = 32  # requests per model that may wait for a slot; more are refused (503)
    keep_alive: float = DEFAULT_KEEP_ALIVE  # for requests that do not say
    prompt_cache: bool = True
    load_timeout: float = LOAD_TIMEOUT  # seconds a runner may take to load before it is killed
    pinned: tuple[str, ...] = ()  # models kept loaded through keep_alive and eviction (serve --pin)
    draft: tuple[tuple[str, LookupConfig], ...] = ()  # prompt lookup per model ("*": every one; serve --draft)
    kv: tuple[tuple[str, KVCache], ...] = ()  # KV cache type per model ("*": every llama.cpp one; serve --kv-type)
    tuning: Tuning = Tuning()  # llama.cpp's micro-batch, flash attention, mmap (tune's, or -ub, -fa, --mmap)


@dataclass
class Lease:
    """One request's hold on a loaded model (``ModelManager.acquire`` / ``release``)."""

    name: str
    runner: RunnerLike
    load_seconds: float  # 0 when it was already loaded


@dataclass
class _Loaded:
    name: str
    model: ResolvedModel
    memory: int
    keep_alive: float
    last_used: float
    in_flight: int = 0
    pinned: bool = False  # never expires, never evicted: unloaded when the server stops
    life: Lifecycle = field(init=False)
    runner: RunnerLike | None = None  # set when READY

    def __post_init__(self) -> None:
        self.life = Lifecycle(self.name)

    @property
    def expires(self) -> float:
        return float("inf") if self.keep_alive < 0 or self.pinned else self.last_used + self.keep_alive


@dataclass(frozen=True)
class LoadedInfo:
    name: str
    memory: int
    expires_in: float | None  # seconds; None: never
    in_flight: int
    slots: int
    pid: int
    keep_alive: float
    pinned: bool = False


class ModelManager:
    def __init__(self, settings: Settings, params: ManagerParams, factory: RunnerFactory | None = None) -> None:
        self.settings, self.params = settings, params
        self.factory = factory or Runner
        self._lock = threading.Lock()
        self._loaded: dict[str, _Loaded] = {}
        self.store = Store.open(settings.models_dir)  # opened (and swept) once; the server's state shares it
        self._memory: dict[str, int] = {}  # blob digest -> the memory its runner takes
        self._plans: dict[str, MemoryPlan] = {}  # blob digest -> its parts, where modelled (llama.cpp)
        self.pinned = frozenset(self.resolve(name).name for name in params.pinned)  # full names; unknown: refused
        self.drafts = {name if name == "*" else self.resolve(name).name: config for name, config in params.draft}
        self.kv = {name if name == "*" else self.resolve(name).name: kv for name, kv in params.kv}
        self.constants = memory_constants(settings.home)  # the device profile's (edgeslm tune), else the defaults
        for name in self.kv:
            if name != "*" and (runtime := self.resolve(name).engine(settings.engine)) != DEFAULT_ENGINE:
                raise InvalidParameterError(f"--kv-type {name}=…: {name} runs on {runtime}, which keeps its KV cache "
                                            "in the type its model declares; name a GGUF model", params="kv_type")

    def resolve(self, name: str | ResolvedModel) -> ResolvedModel:
        """A request's model, looked up once (the HTTP layer does it and passes the result on): a
        stored model, or a builtin pulled from its package (offline) on first use. Never a path."""
        if isinstance(name, ResolvedModel):
            return name
        if name.endswith(".gguf"):
            raise InvalidNameError(
                f"model '{name[:100]}' looks like a path to a file; the server serves stored models only "
                "('edgeslm import FILE --name NAME' stores one)"
            )
        # a request never waits on a download: only builtins (offline) are pulled here
        return ensure_pulled(name, self.settings, fetch=False, store=self.store, paths=False)

    def needs(self, model: ResolvedModel) -> int:
        """The memory the runner of ``model`` takes, from what the store recorded (no file is read)."""
        memory = self._memory.get(model.key)
        if memory is None:
            p = self.params
            plan = self._plan(model)
            if plan is not None:
                memory = plan.total + model.adapter_bytes
                self._plans[model.key] = plan
            else:
                memory = estimate_memory(model.info, p.slots * p.ctx_per_slot).total_bytes + RUNNER_OVERHEAD
            self._memory[model.key] = memory
        return memory

    def kv_cache(self, model: ResolvedModel) -> KVCache:
        """The KV cache ``model``'s runner gets: serve --kv-type for it (or for all), else its own
        PARAMETER kv_type, else EDGESLM_KV_CACHE_TYPE, else F16."""
        given = self.kv.get(model.name, self.kv.get("*"))
        stored = (model.defaults.get("parameters") or {}).get("kv_type")
        return given or kv_cache_for(model.engine(self.settings.engine), stored, self.settings.kv_type)

    @contextmanager
    def lease(self, name: str | ResolvedModel, keep_alive: float | None = None) -> Iterator[RunnerLike]:
        """The runner of ``name`` (loaded if needed) for the length of one request."""
        held = self.acquire(name, keep_alive)
        try:
            yield held.runner
        finally:
            self.release(held)

    def acquire(self, name: str | ResolvedModel, keep_alive: float | None = None) -> Lease:
        """Hold the model's runner (loading it if needed; blocking) until ``release``. A load runs
        outside the manager's lock: other models keep serving, and requests for the model being
        loaded wait for that one load, at most its deadline. Runners are closed outside the lock."""
        keep = self.params.keep_alive if keep_alive is None else keep_alive
        model = self.resolve(name)
        full, need = model.name, self.needs(model)
        while True:
            retired: list[_Loaded] = []
            try:
                with self._lock:
                    entry = self._loaded.get(full)
                    if entry is not None and entry.runner is not None and not entry.runner.alive:  # crashed
                        retired.append(self._retire(entry))
                        entry = None
                    if entry is None:
                        self._make_room(full, need, retired, self._plans.get(model.key))
                        entry = _Loaded(full, model, need, keep, time.monotonic(), in_flight=1,
                                        pinned=full in self.pinned)
                        self._loaded[full] = entry
                        loading = True
                    elif entry.life.state is LoadState.READY:
                        return self._hold(entry, keep)
                    else:
                        loading = False
            finally:
                self._close(retired)
            if loading:
                return self._load(entry, keep)
            # Another request is loading it; the loader's runner enforces the load deadline.
            entry.life.wait_ready(self.params.load_timeout + CLOSE_TIMEOUT + 5)

    def _hold(self, entry: _Loaded, keep: float) -> Lease:
        if entry.in_flight >= self.params.slots + self.params.queue:
            raise CapacityError(
                f"{entry.name} is busy: all {self.params.slots} slots are generating and {self.params.queue} "
                "requests are waiting; retry shortly"
            )
        assert entry.runner is not None
        entry.keep_alive, entry.last_used = keep, time.monotonic()
        entry.in_flight += 1
        return Lease(entry.name, entry.runner, 0.0)

    def _load(self, entry: _Loaded, keep: float) -> Lease:
        start = time.perf_counter()
        p = self.params
        try:
            runner = self.factory(
                entry.model, slots=p.slots, ctx_per_slot=p.ctx_per_slot, threads=p.threads,
                home=str(self.settings.home), prompt_cache=p.prompt_cache, load_timeout=p.load_timeout,
                **self._draft_args(entry.name), **self._llama_args(entry.model),
            )
        except BaseException as exc:
            with self._lock:
                if self._loaded.get(entry.name) is entry:
                    del self._loaded[entry.name]
            why = exc if isinstance(exc, EdgeslmError) else EngineError(f"loading {entry.name} failed: {exc!r}")
            entry.life.move(LoadState.FAILED, why)
            raise
        with self._lock:
            entry.runner, entry.keep_alive, entry.last_used = runner, keep, time.monotonic()
            entry.life.move(LoadState.READY)
        return Lease(entry.name, runner, time.perf_counter() - start)

    def _plan(self, model: ResolvedModel) -> MemoryPlan | None:
        """The measured plan of ``model``'s runner from its file header or config (None: an engine
        with no model of its memory)."""
        p, runtime = self.params, model.engine(self.settings.engine)
        if runtime in FOLDER_PLANS:
            return FOLDER_PLANS[runtime](model.name, model.info, ctx_per_slot=p.ctx_per_slot, slots=p.slots,
                                         constants=self.constants)
        if runtime != DEFAULT_ENGINE:
            return None
        return plan_memory(model.path, model.name, ctx_per_slot=p.ctx_per_slot, slots=p.slots, kv=self.kv_cache(model),
                           constants=self.constants, tuning=p.tuning)

    def _draft_args(self, name: str) -> dict[str, Any]:
        config = self.drafts.get(name, self.drafts.get("*"))
        return {"draft": config.as_args()} if config is not None else {}

    def _llama_args(self, model: ResolvedModel) -> dict[str, Any]:
        """The runner's KV cache and tuning, decided here once (llama.cpp only: other runtimes keep
        their own)."""
        if model.engine(self.settings.engine) != DEFAULT_ENGINE:
            return {}
        return {"kv": str(self.kv_cache(model)), "tuning": self.params.tuning}

    def release(self, held: Lease) -> None:
        retired: list[_Loaded] = []
        with self._lock:
            entry = self._loaded.get(held.name)
            if entry is None or entry.runner is not held.runner:
                return  # unloaded meanwhile (its runner died and was replaced)
            entry.in_flight -= 1
            entry.last_used = time.monotonic()
            if entry.keep_alive == 0 and entry.in_flight == 0 and not entry.pinned:
                retired.append(self._retire(entry))
        self._close(retired)

    def unload(self, name: str | ResolvedModel) -> bool:
        """Unload the model now if it is loaded and idle (Ollama's keep_alive 0 with no prompt)."""
        full = self.resolve(name).name
        with self._lock:
            entry = self._loaded.get(full)
            if entry is None or entry.in_flight or entry.pinned or entry.life.state is not LoadState.READY:
                return False
            retired = self._retire(entry)
        self._close([retired])
        return True

    def _make_room(self, name: str, need: int, retired: list[_Loaded], plan: MemoryPlan | None = None) -> None:
        """Retire idle models into ``retired``, least recently used first, until ``need`` fits;
        the caller closes them (also when this raises). A model larger than the whole budget is
        refused with its plan (HTTP 507): no eviction would make it fit."""
        budget = self.params.memory_budget
        if budget is not None and need > budget:
            advice = ("use fewer slots (--parallel), a smaller context (--ctx), a quantized KV cache (--kv-type q8_0), "
                      "a smaller variant, or a larger --max-memory")
            if plan is not None:
                raise over_budget(plan, budget, "the server's memory for models (--max-memory)", advice)
            raise OverBudgetError(
                f"{name} needs {format_bytes(need)} with {self.params.slots} slots of {self.params.ctx_per_slot:,} "
                f"tokens, more than the server's memory for models (--max-memory) {format_bytes(budget)}; {advice}"
            )
        while self._over(need):
            idle = [e for e in self._loaded.values()
                    if e.in_flight == 0 and not e.pinned and e.life.state is LoadState.READY]
            if not idle:
                used = sum(e.memory for e in self._loaded.values())
                busy = [e.name for e in self._loaded.values() if not e.pinned]
                pinned = [e.name for e in self._loaded.values() if e.pinned]
                why = f"{', '.join(busy)} serving requests" if busy else ""
                why += (" and " if busy and pinned else "") + (f"{', '.join(pinned)} pinned" if pinned else "")
                raise CapacityError(
                    f"{name} needs {format_bytes(need)}, available {format_bytes((budget or 0) - used)}, and the "
                    f"loaded models cannot make room ({why}); retry shortly, or pin fewer models"
                )
            retired.append(self._retire(min(idle, key=lambda e: e.last_used)))

    def _over(self, need: int) -> bool:
        if len(self._loaded) >= self.params.max_loaded:
            return True
        budget = self.params.memory_budget
        return budget is not None and sum(e.memory for e in self._loaded.values()) + need > budget

    def _retire(self, entry: _Loaded) -> _Loaded:
        """Under the lock: no new requests for ``entry``; its runner is closed later, outside the lock."""
        self._loaded.pop(entry.name, None)
        entry.life.move(LoadState.DRAINING)
        return entry

    def _close(self, entries: list[_Loaded]) -> None:
        """Outside the lock: close retired runners (each returns within its close deadline)."""
        for e in entries:
            assert e.runner is not None
            try:
                e.runner.close()
            except Exception:  # a runner that fails to close must not fail the request that retired it
                log.exception("closing the runner for %s failed", e.name)
            e.life.move(LoadState.CLOSED)

    def expire(self) -> list[str]:
        """Unload the idle models whose keep_alive has passed; return their names."""
        now = time.monotonic()
        with self._lock:
            done = [
                self._retire(e)
                for e in list(self._loaded.values())
                if e.in_flight == 0 and e.life.state is LoadState.READY and e.expires <= now
            ]
        self._close(done)
        return [e.name for e in done]

    def ps(self) -> list[LoadedInfo]:
        now = time.monotonic()
        with self._lock:
            return [
                LoadedInfo(
                    e.name,
                    e.memory,
                    None if e.expires == float("inf") else max(0.0, e.expires - now),
                    e.in_flight,
                    self.params.slots,
                    e.runner.pid,
                    e.keep_alive,
                    e.pinned,
                )
                for e in sorted(self._loaded.values(), key=lambda e: -e.last_used)
                if e.runner is not None  # still loading: not listed
            ]

    def close(self) -> None:
        with self._lock:
            done = [self._retire(e) for e in list(self._loaded.values()) if e.life.state is LoadState.READY]
        self._close(done)

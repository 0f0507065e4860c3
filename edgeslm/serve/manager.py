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

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..config import Settings
from ..errors import CapacityError, InvalidNameError
from ..formats.gguf_header import read_gguf_header
from ..formats.model_info import estimate_memory, model_info
from ..generation import resolve_model_path
from ..store import Store, parse_name
from ..units import format_bytes

DEFAULT_KEEP_ALIVE = 300.0
RUNNER_OVERHEAD = 64 * 2**20  # the worker process itself: Python, numpy, llama.cpp's buffers


RunnerFactory = Callable[..., Any]  # (name, *, slots, ctx_per_slot, threads, home, prompt_cache) -> a Runner


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


@dataclass
class Lease:
    """One request's hold on a loaded model (``ModelManager.acquire`` / ``release``)."""

    name: str
    runner: Any
    load_seconds: float  # 0 when it was already loaded


@dataclass
class _Loaded:
    name: str
    runner: Any
    memory: int
    keep_alive: float
    last_used: float
    in_flight: int = 0
    ready: threading.Event = field(default_factory=threading.Event)  # set once loaded (or failed)
    failure: BaseException | None = None

    @property
    def expires(self) -> float:
        return float("inf") if self.keep_alive < 0 else self.last_used + self.keep_alive


@dataclass(frozen=True)
class LoadedInfo:
    name: str
    memory: int
    expires_in: float | None  # seconds; None: never
    in_flight: int
    slots: int
    pid: int
    keep_alive: float


class ModelManager:
    def __init__(self, settings: Settings, params: ManagerParams, factory: RunnerFactory | None = None) -> None:
        from .runner import Runner

        self.settings, self.params = settings, params
        self.factory = factory or Runner
        self._lock = threading.Lock()
        self._loaded: dict[str, _Loaded] = {}
        self._store = Store.open(settings.models_dir)
        self._memory: dict[str, int] = {}  # blob digest -> the memory its runner takes

    def needs(self, name: str) -> tuple[str, int]:
        """(the model's full name, the memory its runner takes) without loading it."""
        if name.endswith(".gguf"):  # a file path: the server serves stored models only
            raise InvalidNameError(
                f"model '{name[:100]}' looks like a file; the server serves stored models only "
                "('edgeslm import FILE --name NAME' stores one)"
            )
        manifest = self._store.find(parse_name(name))
        if manifest is None:  # a builtin not pulled yet is pulled (offline); anything else is not found
            full, _ = resolve_model_path(name, self.settings)
            manifest = self._store.get(parse_name(full))
        memory = self._memory.get(manifest.digest)
        if memory is None:  # the header walk is cheap, but not per request (a 262k vocabulary)
            context = self.params.slots * self.params.ctx_per_slot
            info = model_info(read_gguf_header(self._store.blob_path(manifest.digest), label=str(manifest.name)))
            memory = self._memory[manifest.digest] = estimate_memory(info, context).total_bytes + RUNNER_OVERHEAD
        return str(manifest.name), memory

    @contextmanager
    def lease(self, name: str, keep_alive: float | None = None) -> Iterator[Any]:
        """The runner of ``name`` (loaded if needed) for the length of one request."""
        held = self.acquire(name, keep_alive)
        try:
            yield held.runner
        finally:
            self.release(held)

    def acquire(self, name: str, keep_alive: float | None = None) -> Lease:
        """Hold ``name``'s runner (loading it if needed; blocking) until ``release``. A load runs
        outside the manager's lock: other models keep serving, and requests for the model being
        loaded wait for that one load."""
        keep = self.params.keep_alive if keep_alive is None else keep_alive
        full, need = self.needs(name)
        while True:
            with self._lock:
                entry = self._loaded.get(full)
                if entry is not None and entry.ready.is_set() and not entry.runner.alive:  # crashed or killed
                    self._unload(entry)
                    entry = None
                if entry is None:
                    self._make_room(full, need)
                    entry = self._loaded[full] = _Loaded(full, None, need, keep, time.monotonic(), in_flight=1)
                    break  # this thread loads it
                if entry.ready.is_set():
                    return self._hold(entry, keep)
            entry.ready.wait()  # another request is loading it
            if entry.failure is not None:
                raise entry.failure
        return self._load(entry, keep)

    def _hold(self, entry: _Loaded, keep: float) -> Lease:
        if entry.in_flight >= self.params.slots + self.params.queue:
            raise CapacityError(
                f"{entry.name} is busy: all {self.params.slots} slots are generating and {self.params.queue} "
                "requests are waiting; retry shortly"
            )
        entry.keep_alive, entry.last_used = keep, time.monotonic()
        entry.in_flight += 1
        return Lease(entry.name, entry.runner, 0.0)

    def _load(self, entry: _Loaded, keep: float) -> Lease:
        start = time.perf_counter()
        p = self.params
        try:
            runner = self.factory(
                entry.name, slots=p.slots, ctx_per_slot=p.ctx_per_slot, threads=p.threads,
                home=str(self.settings.home), prompt_cache=p.prompt_cache,
            )  # fmt: skip
        except BaseException as exc:
            with self._lock:
                if self._loaded.get(entry.name) is entry:
                    del self._loaded[entry.name]
                entry.failure = exc
                entry.ready.set()
            raise
        with self._lock:
            entry.runner, entry.keep_alive, entry.last_used = runner, keep, time.monotonic()
            entry.ready.set()
        return Lease(entry.name, runner, time.perf_counter() - start)

    def release(self, held: Lease) -> None:
        with self._lock:
            entry = self._loaded.get(held.name)
            if entry is None or entry.runner is not held.runner:
                return  # unloaded meanwhile (its runner died and was replaced)
            entry.in_flight -= 1
            entry.last_used = time.monotonic()
            if entry.keep_alive == 0 and entry.in_flight == 0:
                self._unload(entry)

    def unload(self, name: str) -> bool:
        """Unload ``name`` now if it is loaded and idle (Ollama's keep_alive 0 with no prompt)."""
        full = self.needs(name)[0]
        with self._lock:
            entry = self._loaded.get(full)
            if entry is None or entry.in_flight:
                return False
            self._unload(entry)
            return True

    def _make_room(self, name: str, need: int) -> None:
        budget = self.params.memory_budget
        if budget is not None and need > budget:
            raise CapacityError(
                f"{name} needs {format_bytes(need)} with {self.params.slots} slots of {self.params.ctx_per_slot:,} "
                f"tokens, available {format_bytes(budget)}; use fewer slots or a smaller context, or a smaller variant"
            )
        while self._over(need):
            idle = [e for e in self._loaded.values() if e.in_flight == 0]
            if not idle:
                used = sum(e.memory for e in self._loaded.values())
                raise CapacityError(
                    f"{name} needs {format_bytes(need)}, available {format_bytes((budget or 0) - used)}, and every "
                    f"loaded model ({', '.join(self._loaded)}) is serving requests; retry shortly"
                )
            self._unload(min(idle, key=lambda e: e.last_used))

    def _over(self, need: int) -> bool:
        if len(self._loaded) >= self.params.max_loaded:
            return True
        budget = self.params.memory_budget
        return budget is not None and sum(e.memory for e in self._loaded.values()) + need > budget

    def _unload(self, entry: _Loaded) -> None:
        self._loaded.pop(entry.name, None)
        if entry.runner is not None:
            entry.runner.close()

    def expire(self) -> list[str]:
        """Unload the idle models whose keep_alive has passed; return their names."""
        now = time.monotonic()
        with self._lock:
            done = [e for e in self._loaded.values() if e.in_flight == 0 and e.expires <= now]
            for e in done:
                self._unload(e)
        return [e.name for e in done]

    def ps(self) -> list[LoadedInfo]:
        now = time.monotonic()
        with self._lock:
            return [
                LoadedInfo(
                    e.name,
                    e.memory,
                    None if e.keep_alive < 0 else max(0.0, e.expires - now),
                    e.in_flight,
                    self.params.slots,
                    e.runner.pid,
                    e.keep_alive,
                )  # fmt: skip
                for e in sorted(self._loaded.values(), key=lambda e: -e.last_used)
                if e.ready.is_set()
            ]

    def close(self) -> None:
        with self._lock:
            for e in list(self._loaded.values()):
                if e.ready.is_set():
                    self._unload(e)

"""A loaded model's life cycle: an enum with checked transitions and deadline-bound waits.

``LOADING → READY → DRAINING → CLOSED``, or ``LOADING → FAILED``; a READY runner that died
goes to DRAINING like one being unloaded. Any other move is a bug and raises at once, as
gguf-py's ``WriterState`` does. Waiters block on ``wait_ready`` with a deadline, never forever.
"""

from __future__ import annotations

import enum
import threading
import time

from ..errors import EdgeslmError, EngineError, RunnerTimeoutError


class LoadState(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"  # no new requests; its runner is being closed
    CLOSED = "closed"
    FAILED = "failed"


_ALLOWED: dict[LoadState, frozenset[LoadState]] = {
    LoadState.LOADING: frozenset({LoadState.READY, LoadState.FAILED}),
    LoadState.READY: frozenset({LoadState.DRAINING}),
    LoadState.DRAINING: frozenset({LoadState.CLOSED}),
    LoadState.CLOSED: frozenset(),
    LoadState.FAILED: frozenset(),
}


class Lifecycle:
    """One model's state, shared by the thread that loads it and the requests that wait for it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._state = LoadState.LOADING
        self._failure: EdgeslmError | None = None
        self._changed = threading.Condition()

    @property
    def state(self) -> LoadState:
        return self._state

    @property
    def failure(self) -> EdgeslmError | None:
        return self._failure

    def move(self, to: LoadState, failure: EdgeslmError | None = None) -> None:
        with self._changed:
            if to not in _ALLOWED[self._state]:
                raise RuntimeError(f"{self.name}: {self._state.value} → {to.value} is not a valid transition")
            self._state = to
            if to is LoadState.FAILED:
                self._failure = failure or EngineError(f"loading {self.name} failed")
            self._changed.notify_all()

    def wait_ready(self, timeout: float) -> LoadState:
        """Block while LOADING, at most ``timeout`` seconds; return the state it left LOADING for.
        A load that fails raises its error here too; one still loading at the deadline raises
        ``RunnerTimeoutError`` (the loader itself enforces the load deadline; this is the waiter's)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._state is LoadState.LOADING:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RunnerTimeoutError(
                        f"{self.name} is still loading after {timeout:g} s; retry shortly, or raise the load "
                        "timeout (--load-timeout) for a slow disk"
                    )
                self._changed.wait(left)
            if self._state is LoadState.FAILED:
                assert self._failure is not None
                raise self._failure
            return self._state

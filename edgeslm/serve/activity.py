"""The last minutes of generation, for the web page's Server view: one event per finished reply
(when, which model, time to first token, tokens generated and how long they took), bucketed on
request. Prometheus counters answer "how many since start"; this answers "what just happened"
without a Prometheus server to keep the history.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

WINDOW = 900.0  # seconds of history kept
BUCKET = 15.0  # seconds per point of the series
MAX_EVENTS = 100_000  # a bound on memory whatever the request rate


@dataclass(frozen=True)
class Finished:
    at: float  # time.time() when the reply ended
    model: str
    ttft: float | None  # seconds from request to first token; None: no token
    tokens: int  # generated
    seconds: float  # from the first token to the last


class Activity:
    """Finished replies of the last ``WINDOW`` seconds, safe to add to from any thread."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._events: deque[Finished] = deque(maxlen=MAX_EVENTS)
        self._lock = threading.Lock()

    def add(self, model: str, ttft: float | None, tokens: int, seconds: float) -> None:
        with self._lock:
            self._events.append(Finished(self.clock(), model, ttft, tokens, seconds))
            self._trim()

    def _trim(self) -> None:
        horizon = self.clock() - WINDOW
        while self._events and self._events[0].at < horizon:
            self._events.popleft()

    def series(self, minutes: float = WINDOW / 60, bucket: float = BUCKET) -> dict[str, Any]:
        """Per bucket, oldest first: replies, tokens/s generated (all replies together), the mean
        decode speed of one reply, and the mean and worst time to first token."""
        span = min(max(minutes * 60, bucket), WINDOW)
        now = self.clock()
        count = int(span // bucket)
        start = now - count * bucket
        with self._lock:
            self._trim()
            events = [e for e in self._events if e.at >= start]
        buckets: list[list[Finished]] = [[] for _ in range(count)]
        for e in events:
            buckets[min(int((e.at - start) // bucket), count - 1)].append(e)
        return {
            "bucket_seconds": bucket,
            "end": now,
            "points": [_point(start + (i + 1) * bucket, b, bucket) for i, b in enumerate(buckets)],
            "totals": _point(now, events, count * bucket),
        }


def _point(end: float, events: list[Finished], seconds: float) -> dict[str, Any]:
    ttfts = [e.ttft for e in events if e.ttft is not None]
    speeds = [(e.tokens - 1) / e.seconds for e in events if e.seconds > 0 and e.tokens > 1]  # per interval
    return {
        "end": end,
        "replies": len(events),
        "tokens": sum(e.tokens for e in events),
        "throughput": sum(e.tokens for e in events) / seconds if seconds > 0 else 0.0,
        "decode_tps": sum(speeds) / len(speeds) if speeds else None,
        "ttft_mean": sum(ttfts) / len(ttfts) if ttfts else None,
        "ttft_max": max(ttfts) if ttfts else None,
    }

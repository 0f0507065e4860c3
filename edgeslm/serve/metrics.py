"""``/metrics``: Prometheus counters and histograms of requests and tokens, gauges of loaded models.

Each app has its own registry (several servers in one process, as the tests run them, do not
share counts). Slots busy and queue depth are read from the model manager at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..runner.manager import ModelManager
from .activity import Activity

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1)


class _Loaded(Collector):
    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager

    def collect(self) -> Iterator[Any]:
        loaded = self.manager.ps()
        count = GaugeMetricFamily("edgeslm_models_loaded", "Models loaded in a runner")
        count.add_metric([], len(loaded))
        memory = GaugeMetricFamily("edgeslm_model_memory_bytes", "Estimated memory per loaded model", labels=["model"])
        busy = GaugeMetricFamily("edgeslm_slots_busy", "Slots generating, per loaded model", labels=["model"])
        slots = GaugeMetricFamily("edgeslm_slots", "Parallel slots, per loaded model", labels=["model"])
        queue = GaugeMetricFamily("edgeslm_queue_depth", "Requests waiting for a slot, per model", labels=["model"])
        for m in loaded:
            memory.add_metric([m.name], m.memory)
            busy.add_metric([m.name], min(m.in_flight, m.slots))
            slots.add_metric([m.name], m.slots)
            queue.add_metric([m.name], max(0, m.in_flight - m.slots))
        yield from (count, memory, busy, slots, queue)


class Metrics:
    def __init__(self, manager: ModelManager) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("edgeslm_requests", "HTTP requests", ["route", "status"], registry=r)
        self.prompt_tokens = Counter("edgeslm_prompt_tokens", "Prompt tokens processed", ["model"], registry=r)
        self.generated_tokens = Counter("edgeslm_generated_tokens", "Tokens generated", ["model"], registry=r)
        self.draft_tokens = Counter("edgeslm_draft_tokens", "Speculative draft tokens verified", ["model"], registry=r)
        self.draft_accepted = Counter(
            "edgeslm_draft_accepted_tokens", "Speculative draft tokens accepted (rate: accepted / draft)", ["model"],
            registry=r,
        )
        self.ttft = Histogram(
            "edgeslm_time_to_first_token_seconds", "From request to first token", ["model"], buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "edgeslm_inter_token_latency_seconds", "Between consecutive tokens of a reply", ["model"],
            buckets=ITL_BUCKETS, registry=r,
        )
        r.register(_Loaded(manager))
        self.activity = Activity()  # the last minutes, for the web page

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

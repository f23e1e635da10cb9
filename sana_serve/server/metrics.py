"""Prometheus metrics of one server process (a private registry, served at GET /metrics).

Other parts import the objects they update, e.g. the streaming side does
`from server.metrics import ACTIVE_STREAMS; ACTIVE_STREAMS.labels("job").inc()`.
Gauges that mirror the job store (queue depth, jobs by status) are read at scrape time.
"""
from __future__ import annotations

import collections
import threading
import time
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

REGISTRY = CollectorRegistry(auto_describe=True)

BLOCK_SECONDS = Histogram(
    "sana_block_seconds", "Wall time from a block's first model call to its decoded frames",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64), registry=REGISTRY)
STEP_SECONDS = Histogram(
    "sana_engine_step_seconds", "Wall time of one batched engine step (one model call per rollout)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8), registry=REGISTRY)
BATCH_SIZE = Histogram("sana_engine_batch_size", "Rollouts advanced together in one engine step",
                       buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32), registry=REGISTRY)
FRAMES = Counter("sana_frames_generated", "Video frames generated", ["kind"], registry=REGISTRY)
BLOCKS = Counter("sana_blocks_generated", "Blocks generated", ["kind"], registry=REGISTRY)
JOBS_FINISHED = Counter("sana_jobs_finished", "Jobs that reached a final status", ["status"], registry=REGISTRY)
JOBS_REJECTED = Counter("sana_jobs_rejected", "Submissions refused because the queue was full", registry=REGISTRY)
FRAMES_PER_SECOND = Gauge("sana_frames_per_second", "Generated frames per second over the last 30 s",
                          registry=REGISTRY)
ACTIVE_ROLLOUTS = Gauge("sana_active_rollouts", "Rollouts the worker is advancing", ["kind"], registry=REGISTRY)
ACTIVE_STREAMS = Gauge("sana_active_streams", "Open streaming connections", ["kind"], registry=REGISTRY)
MODEL_LOADED = Gauge("sana_model_loaded", "1 once the model is loaded and the worker runs", registry=REGISTRY)


class FrameRate:
    """Frames per second over a sliding window, fed by the worker."""

    def __init__(self, window: float = 30.0):
        self.window = window
        self._events: collections.deque[tuple[float, int]] = collections.deque()
        self._lock = threading.Lock()

    def add(self, frames: int, now: float | None = None) -> None:
        with self._lock:
            self._events.append((time.monotonic() if now is None else now, frames))

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._events and self._events[0][0] < now - self.window:
                self._events.popleft()
            return sum(n for _, n in self._events) / self.window


FRAME_RATE = FrameRate()
FRAMES_PER_SECOND.set_function(FRAME_RATE.rate)


class _StoreCollector:
    """Queue depth and jobs by status, read from the job store when scraped."""

    def __init__(self):
        self.counts: Callable[[], dict[str, int]] | None = None

    def collect(self):
        if self.counts is None:
            return
        try:
            counts = self.counts()
        except Exception:  # a closed store during shutdown: no sample rather than a failed scrape
            return
        depth = GaugeMetricFamily("sana_queue_depth", "Jobs waiting to start")
        depth.add_metric([], counts.get("queued", 0))
        yield depth
        by_status = GaugeMetricFamily("sana_jobs", "Jobs in the store by status", labels=["status"])
        for status, n in sorted(counts.items()):
            by_status.add_metric([status], n)
        yield by_status


_STORE = _StoreCollector()
REGISTRY.register(_STORE)


def watch_store(counts: Callable[[], dict[str, int]] | None) -> None:
    _STORE.counts = counts


def render() -> bytes:
    return generate_latest(REGISTRY)

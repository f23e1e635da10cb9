"""/metrics of a cluster node: the cluster as Redis sees it (workers, heartbeats, leases, reclaims),
read at scrape time, beside the node's own metrics (server.metrics)."""
from __future__ import annotations

import json
import time
from typing import Optional

from sana_serve.server import metrics
from sana_serve.server.cluster.store import RedisJobStore


class _ClusterCollector:
    def __init__(self, store: RedisJobStore, lease_seconds: float):
        self.store, self.lease = store, lease_seconds

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        try:
            raw = self.store.redis.hgetall(self.store.key("workers"))
            beats = {k.decode(): json.loads(v) for k, v in raw.items()}
            leases, stats = self.store.leases(), self.store.stats()
        except Exception:  # noqa: BLE001 - Redis down: no cluster samples rather than a failed scrape
            return
        now = time.time()
        alive = GaugeMetricFamily("sana_cluster_workers", "Workers whose heartbeat is fresh (3 leases)")
        alive.add_metric([], sum(now - b["last_seen"] < 3 * self.lease for b in beats.values()))
        yield alive
        jobs = GaugeMetricFamily("sana_worker_jobs", "Jobs each worker runs", labels=["worker"])
        sessions = GaugeMetricFamily("sana_worker_sessions", "Realtime sessions each worker runs", labels=["worker"])
        seen = GaugeMetricFamily("sana_worker_heartbeat_age_seconds", "Seconds since each worker's heartbeat",
                                 labels=["worker"])
        for name, b in sorted(beats.items()):
            jobs.add_metric([name], b["jobs"])
            sessions.add_metric([name], b["sessions"])
            seen.add_metric([name], now - b["last_seen"])
        held = GaugeMetricFamily("sana_worker_leases", "Job leases (pending stream entries) per worker",
                                 labels=["worker"])
        for name, n in sorted(leases.items()):
            held.add_metric([name], n)
        yield jobs
        yield sessions
        yield seen
        yield held
        reclaims = CounterMetricFamily("sana_job_reclaims", "Jobs taken over from a worker whose lease expired")
        reclaims.add_metric([], stats.get("reclaims", 0))
        yield reclaims
        exceeded = CounterMetricFamily("sana_job_attempts_exceeded",
                                       "Jobs failed because they were running on too many workers that stopped")
        exceeded.add_metric([], stats.get("attempts_exceeded", 0))
        yield exceeded


_COLLECTOR: list = []


def watch_cluster(store: Optional[RedisJobStore], lease_seconds: float = 15.0) -> None:
    """Report the cluster in this process's /metrics (None: stop)."""
    while _COLLECTOR:
        metrics.REGISTRY.unregister(_COLLECTOR.pop())
    if store is not None:
        c = _ClusterCollector(store, lease_seconds)
        metrics.REGISTRY.register(c)
        _COLLECTOR.append(c)

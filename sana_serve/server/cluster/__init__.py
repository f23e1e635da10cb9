"""The cluster backend: many `sana-serve api` nodes and `sana-serve worker`s sharing one Redis.

    sana-serve api    --store redis://HOST:6379/0 --storage DIR|s3://bucket/prefix   (any number)
    sana-serve worker --store redis://HOST:6379/0 --storage DIR|s3://bucket/prefix   (one model, one device)

    store.py     RedisJobStore: JobRecords + WorkQueue on Redis Streams (leases, reclaim, attempts)
    storage.py   StorageFiles: JobFiles over a shared directory or S3 (a local scratch per job)
    hub.py       RedisBlockHub: live blocks across nodes, one Redis Stream per job
    worker.py    ClusterStrategy: what the one Worker loop needs on a shared queue
    runner.py    ApiRunner: an API node's Runner (the workers behind Redis)
    metrics.py   the cluster in /metrics (workers, heartbeats, leases, reclaims)

`build(settings, cluster, role)` wires them into the Parts that server.app serves. An API
node is the embedded server's HTTP/websocket front without a model; a worker runs the
embedded server's Worker loop with a ClusterStrategy, and its HTTP side is health and metrics.
"""
from __future__ import annotations

import os
import socket
import time

from sana_serve.server import metrics
from sana_serve.server.cluster.hub import RedisBlockHub
from sana_serve.server.cluster.metrics import watch_cluster
from sana_serve.server.cluster.runner import ApiRunner
from sana_serve.server.cluster.storage import StorageFiles, check_storage_spec, open_storage
from sana_serve.server.cluster.store import RedisJobStore
from sana_serve.server.cluster.worker import ClusterStrategy
from sana_serve.server.config import ClusterSettings, ServerSettings, load_model_config
from sana_serve.server.interfaces import Parts
from sana_serve.server.worker import Worker, WorkerRunner, engine_loader

__all__ = ["build", "wait_for_redis", "check_storage_spec"]


def build(settings: ServerSettings, cluster: ClusterSettings, role: str) -> Parts:
    """The parts of an API node (role "api") or a worker (role "worker")."""
    if role not in ("api", "worker"):
        raise ValueError(f"unknown cluster role {role!r}")
    model_config = load_model_config(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    storage = open_storage(cluster.storage, cluster.s3_endpoint_url)
    files = StorageFiles(storage, settings.data_dir, keep_frames=settings.keep_frames)
    hub = RedisBlockHub(cluster.store_url, files, cluster.prefix)
    worker_name = None
    if role == "worker":
        worker_name = cluster.worker_name or f"{socket.gethostname()}-{os.getpid()}"
    store = RedisJobStore(cluster.store_url, worker=worker_name, lease_seconds=cluster.lease_seconds,
                          max_attempts=cluster.max_attempts, job_ttl_seconds=settings.job_ttl_seconds,
                          prefix=cluster.prefix)
    wait_for_redis(store.redis, cluster.store_url)
    if role == "worker":
        def attempts_exceeded(job_id: str, error: dict) -> None:  # a claim failed a job that killed its workers
            hub.finish(job_id, {"type": "video.failed", "id": job_id, "error": error})
            metrics.JOBS_FINISHED.labels("failed").inc()

        store.on_attempts_exceeded = attempts_exceeded
        worker = Worker(settings, store, files, engine_loader(settings, model_config), hub=hub,
                        strategy=ClusterStrategy(cluster, store, worker_name))
        runner, queue = WorkerRunner(worker, files, hub), store
    else:
        runner, queue = ApiRunner(settings, cluster, model_config, files, hub), None
    return Parts(model_config=model_config, records=store, files=files, hub=hub, runner=runner, queue=queue,
                 serves_api=role == "api", expires_jobs=role == "api",
                 description=f"{cluster.store_url} + {cluster.storage}",
                 on_start=[lambda: watch_cluster(store, cluster.lease_seconds)],
                 on_stop=[lambda: watch_cluster(None)])


def wait_for_redis(client, url: str, timeout: float = 60.0) -> None:
    from redis.exceptions import RedisError

    deadline = time.monotonic() + timeout
    while True:
        try:
            client.ping()
            return
        except RedisError as e:
            if time.monotonic() > deadline:
                raise RuntimeError(f"cannot reach Redis at {url}: {e}") from None
            time.sleep(0.5)

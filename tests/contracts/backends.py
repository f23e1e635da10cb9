"""The one place the contract tests name a backend's concrete classes.

Every contract test (tests/contracts/test_*.py) asks this module for "the embedded X" or "the
cluster X" and then talks only to the interface: the job records and work queue, the block hub,
the job files (`sana_serve/server/interfaces.py`: JobRecords, WorkQueue, BlockHub, JobFiles).

The backends are the packages `server.embedded` and `server.cluster`.

Shapes handed to the tests:
- `QueueSide`: `records` (what an API node reads and writes), `worker(name)` (a worker's queue:
  claim_next, in_progress, set_progress, renew, finish, statuses), `restart()` (the same data
  seen by fresh objects, as after a process restart: a reopened SQLite file, new Redis clients).
- `HubSide`: `publisher` (the worker's hub), `viewer` (an API node's hub; the same object in the
  embedded server), `output(job_id)` (the worker's block writer for a job).
- `FilesSide`: `writer` (the worker's files), `reader` (an API node's), `fresh()` (another
  worker's, with an empty scratch directory), `output(files, job_id)` (a block writer),
  `stored(job_id)` (names of what the backend keeps of a job: [] once removed).
- `replay_reader(files, job_id)`: the reader a websocket replay uses, None until a block is stored.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from sana_serve.server.hub import CLOSE_TOO_SLOW, StreamClosed  # noqa: F401 (re-exported)

from sana_serve.server.cluster.hub import RedisBlockHub
from sana_serve.server.cluster.storage import DirStorage, StorageFiles, open_storage  # noqa: F401
from sana_serve.server.cluster.store import RedisJobStore
from sana_serve.server.embedded.files import LocalJobFiles
from sana_serve.server.embedded.hub import InProcessBlockHub
from sana_serve.server.embedded.store import SqliteJobStore
from sana_serve.server.jobs import Job, QueueFull, new_job_id  # noqa: F401 (re-exported)

# Geometry of the blocks the hub and files tests write (small: 64x64, 16 fps, 8-frame blocks).
WIDTH, HEIGHT, FPS, FRAMES_PER_BLOCK = 64, 64, 16, 8
_prefixes = itertools.count()


def open_output(files, job_id: str):
    """The writer of a job's blocks (resuming after those already stored)."""
    return files.open_output(job_id, WIDTH, HEIGHT, FPS, FRAMES_PER_BLOCK)


def replay_reader(files, job_id: str):
    """The reader a websocket replay uses (refresh / event / init_segment / segment), or None while
    no block of the job is stored."""
    return files.replay_reader(job_id)


def _in_process_hub(files, **kw):
    return InProcessBlockHub(files.replay_reader, **kw)


# -- job records and work queue ---------------------------------------------------------------------
@dataclass
class QueueSide:
    name: str
    records: object
    worker: Callable[..., object]  # worker(name="worker-a", lease_seconds=..., max_attempts=...) -> queue
    restart: Callable[[], "QueueSide"]


def embedded_queue(tmp: Path) -> QueueSide:
    path = tmp / "jobs.sqlite3"
    store = SqliteJobStore(path)

    def restart() -> QueueSide:
        store.close()
        return embedded_queue(tmp)

    # one process: the API and the worker thread share the store
    return QueueSide("embedded", store, lambda name="worker-a", **kw: store, restart)


def cluster_queue(redis_url: str, prefix: Optional[str] = None) -> QueueSide:
    prefix = prefix or f"t{next(_prefixes)}"
    records = RedisJobStore(redis_url, prefix=prefix)

    def worker(name="worker-a", lease_seconds=15.0, max_attempts=3):
        return RedisJobStore(redis_url, worker=name, lease_seconds=lease_seconds, max_attempts=max_attempts,
                             prefix=prefix)

    return QueueSide("cluster", records, worker, lambda: cluster_queue(redis_url, prefix))


# -- block hub ---------------------------------------------------------------------------------------
@dataclass
class HubSide:
    name: str
    publisher: object
    viewer: object
    writer_files: object
    output: Callable[[str], object]


def embedded_hub(tmp: Path, max_buffered_blocks: int = 8) -> HubSide:
    files = LocalJobFiles(tmp / "data")
    hub = _in_process_hub(files, max_buffered_blocks=max_buffered_blocks)
    return HubSide("embedded", hub, hub, files, lambda job_id: open_output(files, job_id))


def cluster_hub(tmp: Path, redis_url: str, storage, max_buffered_blocks: int = 8) -> HubSide:
    prefix = f"t{next(_prefixes)}"
    worker_files = StorageFiles(storage, tmp / "worker-scratch")
    api_files = StorageFiles(storage, tmp / "api-scratch")
    publisher = RedisBlockHub(redis_url, worker_files, prefix, max_buffered_blocks=max_buffered_blocks)
    viewer = RedisBlockHub(redis_url, api_files, prefix, max_buffered_blocks=max_buffered_blocks)
    return HubSide(f"cluster-{storage_kind(storage)}", publisher, viewer, worker_files,
                   lambda job_id: open_output(worker_files, job_id))


# -- job files ---------------------------------------------------------------------------------------
@dataclass
class FilesSide:
    name: str
    writer: object
    reader: object
    fresh: Callable[[], object]
    output: Callable[[object, str], object]
    stored: Callable[[str], list]


def embedded_files(tmp: Path) -> FilesSide:
    data = tmp / "data"
    files = LocalJobFiles(data)

    def stored(job_id):
        d = files.dir(job_id)
        return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()) if d.exists() else []

    # One data directory: the API and the worker share it; a restarted worker opens it again.
    return FilesSide("embedded", files, files, lambda: LocalJobFiles(data), open_output, stored)


def cluster_files(tmp: Path, storage) -> FilesSide:
    scratch = itertools.count()

    def fresh():
        return StorageFiles(storage, tmp / f"scratch-{next(scratch)}")

    def stored(job_id):
        return sorted(storage.list(f"{job_id}/"))

    return FilesSide(f"cluster-{storage_kind(storage)}", fresh(), fresh(), fresh, open_output, stored)


# -- shared storage (the cluster's files live in it) -------------------------------------------------
def dir_storage(root: Path):
    return open_storage(str(root))


def s3_storage(endpoint: str, bucket: str, prefix: str = "cluster"):
    return open_storage(f"s3://{bucket}/{prefix}", endpoint_url=endpoint)


def storage_kind(storage) -> str:
    return "dir" if isinstance(storage, DirStorage) else "s3"


__all__ = ["CLOSE_TOO_SLOW", "StreamClosed", "Job", "QueueFull", "new_job_id", "QueueSide", "HubSide", "FilesSide", "embedded_queue", "cluster_queue",
           "embedded_hub", "cluster_hub", "embedded_files", "cluster_files", "dir_storage", "s3_storage",
           "replay_reader", "open_output", "WIDTH", "HEIGHT", "FPS", "FRAMES_PER_BLOCK"]

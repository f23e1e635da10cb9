"""The narrow doors between the HTTP layer, the worker loop and a deployment's backend.

The HTTP layer (server.app, server.routes) and the one worker loop (server.worker) talk only
to these interfaces. Two backends implement them, one package each:

    server.embedded   `sana-serve serve`: SQLite, an in-process hub, a local directory, the
                      worker thread in the same process
    server.cluster    `sana-serve api` / `worker`: Redis Streams (leases, reclaim), a shared
                      directory or S3, a Redis-Stream hub, workers in other processes

Each backend's `build(...)` returns a `Parts`, and `server.app.create_app(parts, settings)`
serves it. Nothing outside a backend imports a backend's other modules.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator, Callable, Optional, Protocol, runtime_checkable

if TYPE_CHECKING:  # type names only: this module imports nothing heavy
    from sana_serve.engine.config import ModelConfig
    from sana_serve.engine.rollout import Block, GenerationRequest, RequestRules
    from sana_serve.server.jobs import Job
    from sana_serve.server.outputs import JobOutput


@runtime_checkable
class JobRecords(Protocol):
    """The job records the API reads and writes. Thread-safe; each call is short."""

    def create(self, job: "Job", max_queued: int) -> "Job":
        """Insert a queued job; raises jobs.QueueFull if `max_queued` jobs are already waiting."""

    def get(self, job_id: str) -> Optional["Job"]: ...

    def list(self, after: Optional[str], limit: int, order: str) -> tuple[list["Job"], bool]:
        """A page of jobs in creation order (asc|desc) after the job `after`; and has_more."""

    def finish(self, job_id: str, status: str, ttl_seconds: float, error_code: Optional[str] = None,
               error_message: Optional[str] = None) -> bool:
        """Queued or running -> a final status; False if it was not (any more) queued or running."""

    def delete(self, job_id: str) -> Optional["Job"]:
        """Remove the record; the job as it was, or None if there was none."""

    def expired(self, now: float) -> list[str]: ...

    def counts(self) -> dict[str, int]:
        """Jobs by status (for /metrics)."""

    def close(self) -> None: ...


@runtime_checkable
class WorkQueue(Protocol):
    """What a worker takes jobs from and reports to."""

    def claim_next(self) -> Optional["Job"]:
        """The job to run next (priority, then FIFO), now in_progress and held by this worker."""

    def in_progress(self) -> list["Job"]:
        """Jobs this worker held when it stopped (to resume at once), oldest first."""

    def set_progress(self, job_id: str, blocks_completed: int) -> bool:
        """False if the job is gone, no longer running, or no longer this worker's."""

    def finish(self, job_id: str, status: str, ttl_seconds: float, error_code: Optional[str] = None,
               error_message: Optional[str] = None) -> bool: ...

    def renew(self, job_ids: list[str]) -> list[str]:
        """Keep holding these jobs; the ids this worker lost (the embedded queue: none)."""

    def statuses(self, job_ids: list[str]) -> list[Optional[str]]:
        """Each job's status (None: deleted), in one look: how cancel and delete reach a worker."""


@runtime_checkable
class OutputReader(Protocol):
    """The read side of a job's stored blocks (JobOutput's, or the cluster's storage twin)."""

    def refresh(self) -> int:
        """Blocks stored now (re-reads the listing)."""

    def event(self, index: int) -> dict: ...

    def init_segment(self) -> bytes: ...

    def segment(self, index: int) -> bytes: ...


@runtime_checkable
class JobFiles(Protocol):
    """A job's files: its fMP4 segments, rollout checkpoint, final MP4 and thumbnail."""

    def dir(self, job_id: str) -> Path:
        """The job's local directory (the embedded store) or scratch directory (the cluster's).
        Raises ValueError for anything but a video id."""

    def open_output(self, job_id: str, width: int, height: int, fps: float, frames_per_block: int) -> "JobOutput":
        """The writer of a job's blocks, resuming after the blocks already stored."""

    def fetch(self, job_id: str) -> None:
        """Make the stored blocks of a job local before resuming it (another worker may have begun it)."""

    def save_checkpoint(self, job_id: str, snapshot: dict) -> None: ...

    def load_checkpoint(self, job_id: str) -> Optional[dict]: ...

    def drop_checkpoint(self, job_id: str) -> None: ...

    def remove(self, job_id: str) -> None:
        """Everything of a job (no error if there is nothing)."""

    def replay_reader(self, job_id: str) -> Optional[OutputReader]:
        """A reader of the job's stored blocks, None while none is stored (or it was deleted)."""

    def local_file(self, job_id: str, name: str) -> Optional[Path]:
        """A local path of a finished file (video.mp4, thumbnail.png), None if it is not stored."""


@runtime_checkable
class Subscription(Protocol):
    """One viewer's blocks: an async iterator of (event, payload); see server.hub.Subscription."""

    resume_index: int

    def __aiter__(self) -> AsyncIterator[tuple[dict, Optional[bytes]]]: ...

    async def overflowed(self): ...

    async def aclose(self) -> None: ...


@runtime_checkable
class BlockHub(Protocol):
    """Fan-out of finished blocks to live viewers."""

    def publish(self, job_id: str, event: dict, segment: bytes) -> None:
        """A block of `job_id` is stored: hand it to live viewers. Any thread; never blocks."""

    def finish(self, job_id: str, event: dict) -> None:
        """The job ended (`video.completed` / `video.failed`): viewers get `event`, then the end."""

    def subscribe(self, job_id: str, from_block: int = 0) -> Subscription:
        """On the viewer's event loop: blocks from `from_block` on (replayed, then live), then the
        end event (payload None). Raises ValueError for a negative from_block."""

    def viewers(self, job_id: Optional[str] = None) -> int: ...


@runtime_checkable
class Session(Protocol):
    """A realtime session: blocks go to its on_block, then on_end(error or None) once."""

    id: str
    ended: threading.Event

    def update_prompt(self, prompt: str, negative_prompt: str = "") -> None: ...

    def stop(self) -> None: ...


@runtime_checkable
class Runner(Protocol):
    """What the HTTP layer asks of whatever runs the model: the embedded worker thread, or (on a
    cluster's API node) the workers behind Redis."""

    ready: threading.Event
    load_error: Optional[str]

    @property
    def rules(self) -> Optional["RequestRules"]:
        """What a request may ask of the served model; None until it is known (model loading)."""

    def validate(self, request: "GenerationRequest") -> None:
        """The engine's own checks of a request; raises ValueError."""

    def notify(self) -> None:
        """A job was queued: look at the queue now."""

    def cancel(self, job: "Job", delete: bool) -> Optional[threading.Event]:
        """The API just cancelled (delete=False) or deleted (delete=True) `job`, whose record is
        already `cancelled` or gone; `job` is the record as it was before. Whoever holds
        the job's rollout stops it within one step, and its end (the metric, the viewers' end
        event, on delete its files) is reported exactly once. An Event the API may wait on
        until a rollout running in this process is freed, else None."""

    def live_progress(self, job_id: str) -> Optional[int]:
        """Percent done of a running job, finer than its committed blocks; None if not known."""

    def retry_after(self) -> int:
        """Seconds a client refused with 429 should wait."""

    def start_session(self, request: "GenerationRequest", on_block: Callable[["Block"], None],
                      on_end: Callable[[Optional[str]], None]) -> Session:
        """An endless realtime rollout. Raises ValueError (bad input), worker.Busy (no capacity),
        RuntimeError (no model yet)."""

    def start(self) -> None: ...

    def stop(self, timeout: float = 30.0) -> None: ...


@dataclass
class Parts:
    """What a backend's `build(...)` returns and `create_app` serves."""

    model_config: "ModelConfig"
    records: JobRecords
    files: JobFiles
    hub: BlockHub
    runner: Runner
    queue: Optional[WorkQueue] = None  # None on a node that runs no worker (a cluster's API node)
    serves_api: bool = True  # False: a cluster worker's HTTP side is health and metrics only
    expires_jobs: bool = True  # this node removes expired jobs (a cluster's workers leave it to API nodes)
    description: str = ""  # where the data lives, for the start-up log line
    on_start: list[Callable[[], None]] = field(default_factory=list)  # before the runner starts
    on_stop: list[Callable[[], None]] = field(default_factory=list)  # after the runner stopped

    def close(self) -> None:
        self.records.close()

"""Durable job records behind a small interface; the embedded default is SQLite (WAL).

`JobStore` is what the API and the worker need from a queue: create a job unless the queue
is full (atomically, so concurrent submissions cannot overshoot the bound), claim the next
one (priority first, then FIFO), record progress, finish, cancel, delete, list with a cursor,
and find expired jobs. A Redis implementation can later share one queue between many API
nodes and GPU workers; nothing outside this file knows it is SQL.

Files (the encoded video, raw frames, the rollout checkpoint) live on disk under
`data_dir/videos/<id>/`; `JobFiles` is the only place that turns an id into a path, and it
accepts only ids of the form `video_<32 hex>`.
"""
from __future__ import annotations

import abc
import io
import json
import os
import secrets
import shutil
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sana_serve.server.schemas import VIDEO_ID

ACTIVE = ("queued", "in_progress")
FINISHED = ("completed", "failed", "cancelled")


class QueueFull(Exception):
    def __init__(self, queued: int):
        super().__init__(f"{queued} jobs are already queued")
        self.queued = queued


def new_job_id() -> str:
    return "video_" + secrets.token_hex(16)


@dataclass
class Job:
    id: str
    model: str
    prompt: str
    seconds: float
    size: str
    seed: int
    num_blocks: int
    negative_prompt: str = ""
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    priority: int = 0
    status: str = "queued"
    blocks_completed: int = 0
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    completed_at: float | None = None
    expires_at: float | None = None
    error_code: str | None = None
    error_message: str | None = None
    seq: int = 0  # insertion order (FIFO tie-break), set by the store

    @property
    def progress(self) -> int:
        if self.status == "completed":
            return 100
        return int(100 * self.blocks_completed / self.num_blocks) if self.num_blocks else 0


class JobStore(abc.ABC):
    """The queue and the job records. Methods are thread-safe and short (no I/O beyond the store)."""

    @abc.abstractmethod
    def create(self, job: Job, max_queued: int) -> Job:
        """Insert a queued job; raises QueueFull if `max_queued` jobs are already waiting."""

    @abc.abstractmethod
    def get(self, job_id: str) -> Job | None: ...

    @abc.abstractmethod
    def list(self, after: str | None, limit: int, order: str) -> tuple[list[Job], bool]:
        """A page of jobs ordered by creation (asc|desc), starting after the job `after`; and has_more."""

    @abc.abstractmethod
    def claim_next(self) -> Job | None:
        """The queued job to run next (highest priority, then oldest), marked in_progress."""

    @abc.abstractmethod
    def in_progress(self) -> list[Job]:
        """Jobs that were running (e.g. when the process died), oldest first."""

    @abc.abstractmethod
    def set_progress(self, job_id: str, blocks_completed: int) -> bool:
        """False if the job no longer exists or is no longer running (deleted, cancelled)."""

    @abc.abstractmethod
    def finish(self, job_id: str, status: str, ttl_seconds: float, error_code: str | None = None,
               error_message: str | None = None) -> bool: ...

    @abc.abstractmethod
    def delete(self, job_id: str) -> Job | None:
        """Remove the record; the job as it was, or None if there was none."""

    @abc.abstractmethod
    def expired(self, now: float) -> list[str]: ...

    @abc.abstractmethod
    def counts(self) -> dict[str, int]:
        """Jobs by status."""

    def close(self) -> None:
        pass


_COLUMNS = [f for f in Job.__dataclass_fields__]


class SqliteJobStore(JobStore):
    """One connection guarded by a lock (SQLite serialises writers anyway); WAL for crash safety."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes (SIGKILL)
        self._db.executescript("""
            CREATE TABLE IF NOT EXISTS jobs (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                id TEXT UNIQUE NOT NULL,
                model TEXT NOT NULL, prompt TEXT NOT NULL, negative_prompt TEXT NOT NULL DEFAULT '',
                seconds REAL NOT NULL, size TEXT NOT NULL, seed INTEGER NOT NULL,
                num_inference_steps INTEGER, guidance_scale REAL,
                priority INTEGER NOT NULL DEFAULT 0, num_blocks INTEGER NOT NULL,
                status TEXT NOT NULL, blocks_completed INTEGER NOT NULL DEFAULT 0,
                created_at REAL NOT NULL, started_at REAL, completed_at REAL, expires_at REAL,
                error_code TEXT, error_message TEXT
            );
            CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (status, priority DESC, seq);
            CREATE INDEX IF NOT EXISTS jobs_expiry ON jobs (expires_at);
        """)

    def _job(self, row) -> Job | None:
        return None if row is None else Job(**{k: row[k] for k in _COLUMNS})

    def create(self, job: Job, max_queued: int) -> Job:
        values = {k: v for k, v in asdict(job).items() if k != "seq"}
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                queued = self._db.execute("SELECT COUNT(*) FROM jobs WHERE status='queued'").fetchone()[0]
                if queued >= max_queued:
                    raise QueueFull(queued)
                cur = self._db.execute(
                    f"INSERT INTO jobs ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                    list(values.values()))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        job.seq = cur.lastrowid
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._job(self._db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone())

    def list(self, after: str | None, limit: int, order: str) -> tuple[list[Job], bool]:
        desc = order == "desc"
        with self._lock:
            where, args = "", []
            if after is not None:
                row = self._db.execute("SELECT seq FROM jobs WHERE id=?", (after,)).fetchone()
                if row is None:
                    return [], False
                where, args = f"WHERE seq {'<' if desc else '>'} ?", [row[0]]
            rows = self._db.execute(f"SELECT * FROM jobs {where} ORDER BY seq {'DESC' if desc else 'ASC'} LIMIT ?",
                                    [*args, limit + 1]).fetchall()
        jobs = [self._job(r) for r in rows]
        return jobs[:limit], len(jobs) > limit

    def claim_next(self) -> Job | None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT * FROM jobs WHERE status='queued' ORDER BY priority DESC, seq LIMIT 1"
                                       ).fetchone()
                if row is not None:
                    self._db.execute("UPDATE jobs SET status='in_progress', started_at=? WHERE id=?",
                                     (time.time(), row["id"]))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        job = self._job(row)
        if job is not None:
            job.status = "in_progress"
        return job

    def in_progress(self) -> list[Job]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs WHERE status='in_progress' ORDER BY seq").fetchall()
        return [self._job(r) for r in rows]

    def set_progress(self, job_id: str, blocks_completed: int) -> bool:
        with self._lock:
            cur = self._db.execute("UPDATE jobs SET blocks_completed=? WHERE id=? AND status='in_progress'",
                                   (blocks_completed, job_id))
        return cur.rowcount == 1

    def finish(self, job_id, status, ttl_seconds, error_code=None, error_message=None) -> bool:
        if status not in FINISHED:
            raise ValueError(f"not a final status: {status}")
        now = time.time()
        with self._lock:
            cur = self._db.execute(
                "UPDATE jobs SET status=?, completed_at=?, expires_at=?, error_code=?, error_message=? "
                "WHERE id=? AND status IN ('queued', 'in_progress')",
                (status, now, now + ttl_seconds, error_code, error_message, job_id))
        return cur.rowcount == 1

    def delete(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute("DELETE FROM jobs WHERE id=? RETURNING *", (job_id,)).fetchone()
        return self._job(row)

    def expired(self, now: float) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT id FROM jobs WHERE expires_at IS NOT NULL AND expires_at <= ?",
                                    (now,)).fetchall()
        return [r[0] for r in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        out = {s: 0 for s in (*ACTIVE, *FINISHED)}
        out.update({r[0]: r[1] for r in rows})
        return out

    def close(self) -> None:
        with self._lock:
            self._db.close()


class JobFiles:
    """Paths under data_dir/videos/<id>/ and the rollout checkpoint. Ids are validated here."""

    CHECKPOINT = "rollout.ckpt"

    def __init__(self, data_dir: str | os.PathLike):
        self.root = Path(data_dir).resolve() / "videos"
        self.root.mkdir(parents=True, exist_ok=True)

    def dir(self, job_id: str) -> Path:
        if not isinstance(job_id, str) or not VIDEO_ID.fullmatch(job_id):
            raise ValueError(f"not a video id: {job_id!r}")
        return self.root / job_id

    def save_checkpoint(self, job_id: str, snapshot: dict) -> None:
        """Atomically replace the job's rollout checkpoint (tmp file + os.replace)."""
        import torch

        d = self.dir(job_id)
        d.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save(snapshot, buf)
        tmp = d / f".{self.CHECKPOINT}.tmp"
        with open(tmp, "wb") as f:
            f.write(buf.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, d / self.CHECKPOINT)

    def load_checkpoint(self, job_id: str) -> dict | None:
        import torch

        path = self.dir(job_id) / self.CHECKPOINT
        if not path.is_file():
            return None
        return torch.load(path, map_location="cpu", weights_only=True)

    def drop_checkpoint(self, job_id: str) -> None:
        (self.dir(job_id) / self.CHECKPOINT).unlink(missing_ok=True)

    def remove(self, job_id: str) -> None:
        shutil.rmtree(self.dir(job_id), ignore_errors=True)

    def replay_source(self, job_id: str) -> Path:
        """What a websocket replay reads a job's blocks from (hub._Replay): its directory."""
        return self.dir(job_id)

    def local_file(self, job_id: str, name: str) -> Path | None:
        """The path of a job's finished file (video.mp4, thumbnail.png), None if it is missing."""
        path = self.dir(job_id) / name
        return path if path.is_file() else None

    def write_json(self, job_id: str, name: str, data: dict) -> None:
        d = self.dir(job_id)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".{name}.tmp"
        tmp.write_text(json.dumps(data))
        os.replace(tmp, d / name)

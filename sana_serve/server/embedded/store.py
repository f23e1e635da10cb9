"""The embedded job store: the records and the queue in one SQLite database (WAL).

It is both the JobRecords the API reads and writes and the WorkQueue the worker thread takes
jobs from: create a job unless the queue is full (atomically, so concurrent submissions
cannot overshoot the bound), claim the next one (priority first, then FIFO), record
progress, finish, delete, list with a cursor, find expired jobs. One process holds it, so
there are no leases: `renew` loses nothing, and a job left in_progress by a crash is
resumed at the next start (`in_progress`).
"""
from __future__ import annotations

import os
import sqlite3
import threading
import time
from dataclasses import asdict
from pathlib import Path

from sana_serve.server.jobs import ACTIVE, FINISHED, Job, QueueFull

_COLUMNS = [f for f in Job.__dataclass_fields__]


class SqliteJobStore:
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
                priority INTEGER NOT NULL DEFAULT 0, num_blocks INTEGER NOT NULL, frames INTEGER,
                status TEXT NOT NULL, blocks_completed INTEGER NOT NULL DEFAULT 0,
                created_at REAL NOT NULL, started_at REAL, completed_at REAL, expires_at REAL,
                error_code TEXT, error_message TEXT
            );
            CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (status, priority DESC, seq);
            CREATE INDEX IF NOT EXISTS jobs_expiry ON jobs (expires_at);
        """)
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(jobs)")}
        if "frames" not in columns:  # a database from before jobs had their own frame count
            self._db.execute("ALTER TABLE jobs ADD COLUMN frames INTEGER")

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

    def renew(self, job_ids: list[str]) -> list[str]:
        return []  # one process: nobody else can take a job over

    def statuses(self, job_ids: list[str]) -> list[str | None]:
        with self._lock:
            found = dict(self._db.execute(f"SELECT id, status FROM jobs WHERE id IN ({', '.join('?' * len(job_ids))})",
                                          job_ids).fetchall()) if job_ids else {}
        return [found.get(i) for i in job_ids]

    def close(self) -> None:
        with self._lock:
            self._db.close()

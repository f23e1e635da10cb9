"""The one thread that owns the model: admits work, advances it in batches, hands blocks out.

Each loop iteration is one `engine.step(rollouts)`: one model call per active rollout, the
compatible ones batched into one forward. Between two steps the worker admits new work
(realtime sessions first, then jobs interrupted by a restart, then the job store's queue in
priority-then-FIFO order) up to `max_batch`, drops cancelled rollouts and applies prompt
updates: this is continuous batching at step granularity, and why a DELETE takes effect
within one denoising step.

For a job, every finished block is (1) written by `JobOutput` (its fMP4 segment, and the raw
frames with --keep-frames), (2) published to the `BlockHub` for live viewers, (3) followed by a checkpoint of
the rollout (tmp file + os.replace) and (4) the progress in the store. That output work runs on
a second thread, the writer: H.264 encoding in ffmpeg and the fsynced files take ~40 ms per
block, a third of a lone block's compute, and on the writer they overlap the next engine step
instead of adding to it. The worker snapshots the rollout before handing a block over; the
writer handles one job's blocks, then its release, strictly in order, so a checkpoint never
gets ahead of the segments on disk. After a crash the job
restarts from its last checkpoint; blocks already on disk are regenerated (deterministically,
identical) but not written twice. Realtime sessions are not persisted: `start_session`
returns a handle, and blocks go to the session's callbacks (called on this thread; they must
not block).

What differs between the embedded worker and a cluster's (how jobs and sessions are
admitted, leases, how a cancel or delete made elsewhere arrives) is a `WorkerStrategy` the
loop is given; its defaults are a worker alone in its process with its queue (the embedded
server), and server.cluster.worker.ClusterStrategy is the other one.
"""
from __future__ import annotations

import itertools
import logging
import math
from queue import Queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from sana_serve.engine.rollout import Block, GenerationRequest, Rollout
from sana_serve.server import metrics
from sana_serve.server.config import ServerSettings
from sana_serve.server.interfaces import BlockHub, JobFiles, WorkQueue
from sana_serve.server.jobs import Job
from sana_serve.server.outputs import block_event

log = logging.getLogger("sana_serve.worker")


class Busy(Exception):
    """No capacity for another realtime session right now."""


def report_end(hub: BlockHub | None, job_id: str, deleted: bool) -> None:
    """A job no worker was running was cancelled (counted) or deleted: tell its viewers."""
    if deleted:
        error = {"code": "deleted", "message": "the video was deleted"}
    else:
        metrics.JOBS_FINISHED.labels("cancelled").inc()
        error = {"code": "cancelled", "message": "the job was cancelled"}
    if hub is not None:
        try:
            hub.finish(job_id, {"type": "video.failed", "id": job_id, "error": error})
        except Exception:  # noqa: BLE001 - viewers also notice a deleted job by polling its record
            log.exception("hub.finish failed", extra={"job_id": job_id})


class SessionHandle:
    """A live endless rollout (WS /v1/realtime). Thread-safe; callbacks run on the worker thread.

    on_block(block: Block) for every finished block; on_end(error: str | None) exactly once when
    the session ends (None: stopped by `stop()` or server shutdown, else why it failed).
    """

    _ids = itertools.count(1)

    def __init__(self, worker: "Worker", request: GenerationRequest, on_block: Callable[[Block], None],
                 on_end: Callable[[str | None], None]):
        self.id = f"session_{next(self._ids)}"
        self.request = request
        self.on_block, self.on_end = on_block, on_end
        self._worker = worker
        self._lock = threading.Lock()
        self._pending_prompt: tuple[str, str] | None = None
        self._stop = threading.Event()
        self.ended = threading.Event()
        self.blocks = 0

    def update_prompt(self, prompt: str, negative_prompt: str = "") -> None:
        """Follow `prompt` from the next block on. Raises ValueError (clear message) if invalid."""
        self._worker.validate(GenerationRequest(prompt, seconds=None, seed=self.request.seed,
                                                negative_prompt=negative_prompt))
        with self._lock:
            self._pending_prompt = (prompt, negative_prompt)
        self._worker.notify()

    def stop(self) -> None:
        """End the session at the next step boundary (on_end(None) follows)."""
        self._stop.set()
        self._worker.notify()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _take_prompt(self) -> tuple[str, str] | None:
        with self._lock:
            p, self._pending_prompt = self._pending_prompt, None
        return p


@dataclass
class _Active:
    kind: str  # "job" | "session"
    id: str
    rollout: Rollout | None = None
    job: Job | None = None
    output: object | None = None  # server.outputs.JobOutput
    session: SessionHandle | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    delete_files: bool = False
    released: threading.Event = field(default_factory=threading.Event)  # set once dropped


class WorkerStrategy:
    """What the one Worker loop asks of its deployment between two engine steps. These
    defaults are a worker alone in its process (the embedded server): cancels and deletes
    arrive by direct calls to `Worker.cancel`, sessions by `Worker.start_session`, and no other
    worker can take a job over."""

    # Errors of a shared queue that pass (a Redis restart): the loop logs them and goes on.
    transient_errors: tuple[type[BaseException], ...] = ()

    def start(self, worker: "Worker") -> None:
        """The worker's threads run: start whatever the strategy runs beside them."""

    def stop(self) -> None:
        """The worker stopped."""

    def admit(self, worker: "Worker") -> None:
        """Before the loop fills its free slots from the queue: hand it work from elsewhere
        (a cluster's realtime sessions, through `worker.start_session`)."""

    def stops(self, worker: "Worker", job_ids: list[str]) -> dict[str, bool]:
        """Jobs running here to stop now, because of something done elsewhere: id -> delete its
        files. Also the place to apply controls of sessions hosted for others."""
        return {}

    def cancel_is_final(self, job_id: str) -> bool:
        """A job of ours stopped as cancelled: True if a client cancelled or deleted it (count it
        and tell its viewers), False if another worker took it over (drop it quietly)."""
        return True


class Worker:
    def __init__(self, settings: ServerSettings, queue: WorkQueue, files: JobFiles,
                 load_engine: Callable[[], object], hub: BlockHub | None = None,
                 strategy: WorkerStrategy | None = None):
        self.settings, self.queue, self.files = settings, queue, files
        self._load_engine = load_engine
        self.hub = hub
        self.strategy = strategy or WorkerStrategy()
        self.engine = None
        self.ready = threading.Event()
        self.load_error: str | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._active: list[_Active] = []
        self._by_id: dict[str, _Active] = {}
        self._new_sessions: list[SessionHandle] = []
        self._resume: list[Job] | None = None
        self._block_ema: float | None = None
        self._thread = threading.Thread(target=self._run, name="sana-worker", daemon=True)
        # (active, fn, args) run on the writer thread; bounded, so a slow disk slows the worker
        # down instead of piling up blocks in memory. None stops the writer.
        self._writes: Queue = Queue(maxsize=2 * settings.max_batch + 2)
        self._writer = threading.Thread(target=self._write_loop, name="sana-writer", daemon=True)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._writer.start()
        self._thread.start()
        self.strategy.start(self)

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout)
        self.strategy.stop()

    def notify(self) -> None:
        self._wake.set()

    # -- API-side calls (any thread) ---------------------------------------------------------
    def validate(self, request: GenerationRequest) -> None:
        if self.engine is None:
            raise RuntimeError("the model is not loaded yet")
        self.engine.validate(request)

    def live_progress(self, job_id: str) -> int | None:
        """Percent done of a job running here, finer than its finished blocks: a full-sequence job
        moves on every denoising step. None if it is not running here."""
        a = self._by_id.get(job_id)
        rollout = None if a is None else a.rollout
        progress = None if rollout is None else rollout.progress
        return None if progress is None else int(100 * progress)

    def cancel(self, job_id: str, delete_files: bool) -> threading.Event | None:
        """Stop a job at the next step boundary. An Event set once its rollout is freed, or None if
        the job is not running here (then nothing of it is in memory)."""
        with self._lock:
            a = self._by_id.get(job_id)
            if a is None:
                return None
            a.delete_files = a.delete_files or delete_files
            a.cancel.set()
        self._wake.set()
        return a.released

    def start_session(self, request: GenerationRequest, on_block: Callable[[Block], None],
                      on_end: Callable[[str | None], None]) -> SessionHandle:
        """Start an endless realtime rollout (request.seconds is ignored). Raises ValueError for
        bad input, Busy when `max_sessions` are running, RuntimeError before the model is loaded."""
        request = GenerationRequest(request.prompt, seconds=None, seed=request.seed,
                                    negative_prompt=request.negative_prompt,
                                    num_inference_steps=request.num_inference_steps,
                                    guidance_scale=request.guidance_scale)
        self.validate(request)
        handle = SessionHandle(self, request, on_block, on_end)
        with self._lock:
            running = sum(1 for a in self._active if a.kind == "session") + len(self._new_sessions)
            if running >= self.settings.max_sessions:
                raise Busy(f"{running} realtime sessions are running; the limit is {self.settings.max_sessions}")
            self._new_sessions.append(handle)
        self._wake.set()
        return handle

    def retry_after(self) -> int:
        """Seconds a client refused with 429 should wait: about one block of the running batch."""
        block = self._block_ema or 2.0
        return max(1, min(120, math.ceil(block)))

    def active_count(self) -> dict[str, int]:
        with self._lock:
            return {"job": sum(a.kind == "job" for a in self._active),
                    "session": sum(a.kind == "session" for a in self._active)}

    def job_ids(self) -> list[str]:
        """Every job held here, from claim to release (including ones the writer is finishing)."""
        with self._lock:  # a claimed job waiting for memory (self._resume) is held too: its lease is renewed
            waiting = [j.id for j in self._resume or [] if j.id not in self._by_id]
            return [i for i, a in self._by_id.items() if a.kind == "job"] + waiting

    def free_slots(self) -> int:
        """Rollouts that could join the batch now, and realtime sessions that could start."""
        with self._lock:
            sessions = sum(a.kind == "session" for a in self._active) + len(self._new_sessions)
            return min(self._slots() - len(self._new_sessions), self.settings.max_sessions - sessions)

    @property
    def block_seconds(self) -> float | None:
        """A moving average of a block's wall time (None before the first block)."""
        return self._block_ema

    # -- the loop ------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            if self.settings.torch_threads:
                torch.set_num_threads(self.settings.torch_threads)
            self.engine = self._load_engine()
        except Exception as e:  # noqa: BLE001 - reported by /readyz and the log
            self.load_error = f"{type(e).__name__}: {e}"
            log.exception("model failed to load")
            self._writes.put(None)
            return
        self._resume = self.queue.in_progress()
        if self._resume:
            log.info("resuming %d interrupted job(s)", len(self._resume))
        self.ready.set()
        metrics.MODEL_LOADED.set(1)
        log.info("model loaded: ready")  # the moment /readyz turns 200 (container healthchecks follow it)
        try:
            self._loop()
        finally:
            for a in list(self._active):
                if a.kind == "job":
                    self._retire_job(a, reason=None)
                else:
                    self._release(a, reason=None)
            self._writes.put(None)  # after every pending write: they all land before we return
            self._writer.join()
            metrics.MODEL_LOADED.set(0)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._admit()
            self._apply_controls()
            if not self._active:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            batch = list(self._active)
            start = time.perf_counter()
            try:
                blocks = self.engine.step([a.rollout for a in batch])
            except Exception as e:  # noqa: BLE001 - a failing request must not take the worker down
                log.exception("engine step failed for %s", [a.id for a in batch])
                for a in batch:
                    self._fail(a, "generation_failed", f"the engine failed: {type(e).__name__}: {e}")
                continue
            metrics.STEP_SECONDS.observe(time.perf_counter() - start)
            metrics.BATCH_SIZE.observe(len(batch))
            for a in (a for a in batch if a.rollout.failed is not None):  # out of memory even alone: only it fails
                self._fail(a, "out_of_memory", f"the request does not fit in the device's memory: {a.rollout.failed}")
            for a, block in zip(batch, blocks):
                if block is None:
                    continue
                try:
                    if a.kind == "job":
                        self._job_block(a, block)
                    else:
                        self._session_block(a, block)
                except Exception as e:  # noqa: BLE001
                    log.exception("handling block %d of %s failed", block.index, a.id, extra={"job_id": a.id})
                    self._fail(a, "output_failed", f"could not write block {block.index}: {type(e).__name__}: {e}")

    def _slots(self) -> int:
        return self.settings.max_batch - len(self._active)

    def _admit(self) -> None:
        try:
            self.strategy.admit(self)
            self._fill_slots()
        except self.strategy.transient_errors as e:  # e.g. Redis restarting: admit at the next step
            log.warning("could not read the queue: %s", e)
            self._wake.wait(0.5)

    def _fill_slots(self) -> None:
        while self._slots() > 0:
            with self._lock:
                if self._new_sessions:
                    handle = self._new_sessions.pop(0)
                    a = _Active("session", handle.id, session=handle)
                    self._register(a)
                    job = None
                elif self._resume:
                    # Memory admission (Engine.fits): the next job starts once it fits beside the running ones;
                    # alone it always does (Engine.validate refused what never would).
                    running = [x.rollout.request for x in self._active if x.rollout is not None]
                    if running and not self.engine.fits(running + [self._resume[0].request()]):
                        return
                    job = self._resume.pop(0)
                    if self.queue.statuses([job.id])[0] is None:  # deleted meanwhile
                        continue
                    a = _Active("job", job.id, job=job)
                    self._register(a)
                else:
                    job = self.queue.claim_next()
                    if job is None:
                        return
                    self._resume.append(job)  # started through the memory admission above
                    continue
            try:
                if a.kind == "session":
                    a.rollout = Rollout(self.engine, a.session.request)
                    log.info("session started", extra={"job_id": a.id})
                else:
                    self._open_job(a)
            except Exception as e:  # noqa: BLE001
                log.exception("could not start %s", a.id, extra={"job_id": a.id})
                self._fail(a, "start_failed", f"could not start: {type(e).__name__}: {e}")

    def _register(self, a: _Active) -> None:
        self._active.append(a)
        self._by_id[a.id] = a
        metrics.ACTIVE_ROLLOUTS.labels(a.kind).inc()

    def _open_job(self, a: _Active) -> None:
        job, e = a.job, self.engine
        request = job.request()
        frames_per_block = e.config.sampling.chunk_frames * e.temporal_compression
        self.files.fetch(job.id)  # another worker may have begun it: continue after its stored blocks
        a.output = self.files.open_output(job.id, request.width, request.height, e.config.video.fps,
                                          frames_per_block)
        snapshot = None
        try:
            snapshot = self.files.load_checkpoint(job.id)
        except Exception as err:  # noqa: BLE001 - a torn or foreign file: regenerate from block 0
            log.warning("unreadable checkpoint (%s); restarting from block 0", err, extra={"job_id": job.id})
        if snapshot is not None:
            a.rollout = Rollout.restore(e, request, snapshot)
            log.info("job resumed at block %d", a.rollout.next_index, extra={"job_id": job.id})
        else:
            a.rollout = Rollout(e, request)
            log.info("job started", extra={"job_id": job.id})

    def _apply_controls(self) -> None:
        """Cancellations and prompt updates, applied between two steps."""
        with self._lock:
            running = [a.id for a in self._active if a.kind == "job"]
        try:
            stops = self.strategy.stops(self, running)
        except self.strategy.transient_errors as e:
            log.warning("could not read job states: %s", e)
            stops = {}
        for job_id, delete_files in stops.items():
            self.cancel(job_id, delete_files)
        for a in list(self._active):
            if a.kind == "job" and a.cancel.is_set():
                log.info("job cancelled", extra={"job_id": a.id})
                self._retire_job(a, reason="cancelled")
            elif a.kind == "session":
                if a.session.stopping:
                    self._release(a, reason=None)
                    continue
                prompt = a.session._take_prompt()
                if prompt is not None:
                    try:
                        a.rollout.set_prompt(*prompt)
                    except ValueError as err:  # validated on submit; a config change could still refuse it
                        log.warning("prompt update refused: %s", err, extra={"job_id": a.id})

    def _job_block(self, a: _Active, block: Block) -> None:
        """Worker thread: account for the block, snapshot the rollout, hand both to the writer."""
        rollout = a.rollout
        if rollout is None:  # released by the writer (an output failure) during this step
            return
        metrics.BLOCK_SECONDS.observe(block.seconds)
        metrics.BLOCKS.labels("job").inc()
        metrics.FRAMES.labels("job").inc(block.frame_count)
        metrics.FRAME_RATE.add(block.frame_count)
        self._block_ema = block.seconds if self._block_ema is None else 0.8 * self._block_ema + 0.2 * block.seconds
        snapshot = None if rollout.done else rollout.snapshot()  # before the next step moves it on
        if rollout.done:
            self._stop_stepping(a)
        self._writes.put((a, self._write_block, (block, snapshot)))

    def _write_block(self, a: _Active, block: Block, snapshot: dict | None) -> None:
        """Writer thread: segment, live viewers, then the checkpoint (or the job's completion)."""
        job, out = a.job, a.output
        done = block.index + 1
        if block.index >= out.blocks_written:  # else: on disk from before a restart (identical)
            segment = out.add_block(block)
            if self.hub is not None:
                event = dict(block_event(block.index, block.frame_start, block.frame_count, job.num_blocks), id=job.id)
                self.hub.publish(job.id, event, segment)
        log.info("block %d/%d done in %.3fs", done, job.num_blocks, block.seconds, extra={"job_id": job.id})
        if snapshot is None:  # the last block
            out.finalize()
            if not self.queue.set_progress(job.id, done) or not self.queue.finish(
                    job.id, "completed", self.settings.job_ttl_seconds):
                self._release(a, reason="cancelled")  # deleted or cancelled while finishing
                return
            self.files.drop_checkpoint(job.id)
            metrics.JOBS_FINISHED.labels("completed").inc()
            log.info("job completed", extra={"job_id": job.id})
            self._release(a, reason="completed")
            return
        self.files.save_checkpoint(job.id, snapshot)
        if not self.queue.set_progress(job.id, done):  # deleted or cancelled meanwhile
            a.cancel.set()

    def _write_loop(self) -> None:
        while (item := self._writes.get()) is not None:
            a, fn, args = item
            if a.released.is_set():  # failed or cancelled before this write came up
                continue
            try:
                fn(a, *args)
            except Exception as e:  # noqa: BLE001 - one job's disk trouble must not stop the others
                self._stop_stepping(a)
                ended = self._ended_elsewhere(a)
                if ended is not None:  # deleted meanwhile (its files went first): not a disk fault
                    self._release(a, reason="cancelled", error=ended)
                    continue
                log.exception("writing output of %s failed", a.id, extra={"job_id": a.id})
                self._fail_now(a, "output_failed", f"could not write its output: {type(e).__name__}: {e}")

    def _ended_elsewhere(self, a: _Active) -> dict | None:
        """The end event of a job cancelled or deleted through the API while its output was being
        written (on the cluster an API node removes the files while the worker still writes), else None."""
        try:
            status = self.queue.statuses([a.id])[0]
        except self.strategy.transient_errors:
            return None
        if status is None:
            return {"code": "deleted", "message": "the video was deleted"}
        if status == "cancelled":
            return {"code": "cancelled", "message": "the job was cancelled"}
        return None

    def _session_block(self, a: _Active, block: Block) -> None:
        metrics.BLOCK_SECONDS.observe(block.seconds)
        metrics.BLOCKS.labels("session").inc()
        metrics.FRAMES.labels("session").inc(block.frame_count)
        metrics.FRAME_RATE.add(block.frame_count)
        a.session.blocks += 1
        a.session.on_block(block)

    def _fail(self, a: _Active, code: str, message: str) -> None:
        """Worker thread. A job fails on the writer, after the blocks it already made."""
        if a.kind == "job":
            self._stop_stepping(a)
            self._writes.put((a, self._fail_now, (code, message)))
        else:
            self._release(a, reason=message)

    def _fail_now(self, a: _Active, code: str, message: str) -> None:
        if self.queue.finish(a.id, "failed", self.settings.job_ttl_seconds, code, message):
            metrics.JOBS_FINISHED.labels("failed").inc()
        self._release(a, reason="failed", error={"code": code, "message": message})

    def _retire_job(self, a: _Active, reason: str | None) -> None:
        """Worker thread: no more steps for this job; the writer releases it after its pending blocks."""
        self._stop_stepping(a)
        self._writes.put((a, self._release, (reason,)))

    def _stop_stepping(self, a: _Active) -> None:
        with self._lock:
            if a in self._active:
                self._active.remove(a)
                metrics.ACTIVE_ROLLOUTS.labels(a.kind).dec()

    def _release(self, a: _Active, reason: str | None, error: dict | None = None) -> None:
        """Drop a rollout from the batch, free its memory and tell whoever waits. Jobs are
        released on the writer thread, sessions on the worker thread."""
        if a.released.is_set():
            return
        if a.kind == "job" and reason == "cancelled" and not self.strategy.cancel_is_final(a.id):
            log.info("job handed over to another worker", extra={"job_id": a.id})
            reason = None  # its viewers are served by the new owner
        self._stop_stepping(a)
        with self._lock:
            self._by_id.pop(a.id, None)
        a.rollout = None
        if a.kind == "session":
            try:
                a.session.on_end(None if reason in (None, "stopped") else reason)
            except Exception:  # noqa: BLE001
                log.exception("session on_end failed", extra={"job_id": a.id})
            a.session.ended.set()
            log.info("session ended%s", f": {reason}" if reason else "", extra={"job_id": a.id})
        else:
            closer = getattr(a.output, "close", None)
            if closer is not None:
                try:
                    closer()
                except Exception:  # noqa: BLE001
                    log.exception("closing the output failed", extra={"job_id": a.id})
            if reason == "cancelled":
                metrics.JOBS_FINISHED.labels("cancelled").inc()
            if self.hub is not None and reason is not None:
                if reason == "completed":
                    event = {"type": "video.completed", "id": a.id}
                else:
                    err = error or {"code": "cancelled", "message": "the job was cancelled"}
                    event = {"type": "video.failed", "id": a.id, "error": err}
                try:
                    self.hub.finish(a.id, event)
                except Exception:  # noqa: BLE001
                    log.exception("hub.finish failed", extra={"job_id": a.id})
            if a.delete_files:
                self.files.remove(a.id)
        a.released.set()


class WorkerRunner:
    """The Runner of a process that runs the Worker loop itself (the embedded server; a cluster
    worker's health and metrics side): the HTTP layer's questions answered by the worker."""

    def __init__(self, worker: Worker, files: JobFiles, hub: BlockHub | None):
        self.worker, self.files, self.hub = worker, files, hub

    @property
    def ready(self) -> threading.Event:
        return self.worker.ready

    @property
    def load_error(self) -> str | None:
        return self.worker.load_error

    @property
    def rules(self):
        return self.worker.engine  # the engine is the RequestRules of its model

    def validate(self, request: GenerationRequest) -> None:
        self.worker.validate(request)

    def notify(self) -> None:
        self.worker.notify()

    def cancel(self, job: Job, delete: bool) -> threading.Event | None:
        released = self.worker.cancel(job.id, delete_files=delete)
        if released is not None:  # running here: the worker reports its end when it lets go
            return released
        if delete:  # not running: nothing in memory, remove what is stored
            self.files.remove(job.id)
        if job.status in ("queued", "in_progress"):
            report_end(self.hub, job.id, delete)
        return None

    def live_progress(self, job_id: str) -> int | None:
        return self.worker.live_progress(job_id)

    def retry_after(self) -> int:
        return self.worker.retry_after()

    def start_session(self, request: GenerationRequest, on_block: Callable[[Block], None],
                      on_end: Callable[[str | None], None]) -> SessionHandle:
        return self.worker.start_session(request, on_block, on_end)

    def start(self) -> None:
        self.worker.start()

    def stop(self, timeout: float = 30.0) -> None:
        self.worker.stop(timeout)


def engine_loader(settings: ServerSettings, model_config) -> Callable[[], object]:
    """Loads the served model (on the worker thread, after start-up: /readyz says 503 until then)."""
    def load():
        from sana_serve.engine.load import load_engine

        return load_engine(model_config, checkpoint=settings.checkpoint, device=settings.device,
                           precision=settings.precision, kernels=settings.kernels, compile=settings.compile,
                           batch_invariant=settings.batch_invariant)

    return load

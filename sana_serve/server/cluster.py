"""The cluster roles: many `sana-serve api` nodes and `sana-serve worker`s sharing one Redis.

    sana-serve api    --store redis://HOST:6379/0 --storage DIR|s3://bucket/prefix   (any number)
    sana-serve worker --store redis://HOST:6379/0 --storage DIR|s3://bucket/prefix   (one model, one device)

An API node is the embedded server's HTTP/websocket front without a model: the same routes
and contract (server.app), with the job store in Redis (server.redis_store), the files in the
shared storage (server.storage) and, where the embedded server has its worker thread, a
`ClusterFrontend` that speaks to the workers through Redis. A worker runs the embedded
server's `Worker` loop unchanged (continuous batching, the writer thread, checkpoints) as a
`ClusterWorker`, which adds what a shared queue needs: leases it renews, a per-step look at
its jobs' records (cancel and delete reach it within one denoising step, from any API node),
hand-over when it lost a lease, realtime sessions started from any API node, and a
heartbeat that /metrics reports.

Live blocks cross nodes through `RedisBlockHub`: the worker appends each block (after its
segment is in the storage) to a per-job Redis Stream, and every API node's viewers read that
stream from the entry that was last when they subscribed, after replaying the stored
segments; blocks that arrive both ways are deduplicated by index, as in the in-process hub.

Keys (prefix `sana`, beside those of redis_store): `blocks:<id>` (a job's live blocks),
`wake` (pub/sub: a job was queued), `model` (what the workers serve), `workers` (heartbeats),
`sessions` (realtime session starts, a Stream with the `workers` group),
`session:<sid>:out` / `session:<sid>:ctl` (a session's blocks / its prompt updates and stop).
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import secrets
import socket
import threading
import time
from types import SimpleNamespace
from typing import Callable, Optional

import numpy as np

from sana_serve.engine.rollout import GenerationRequest, RequestRules
from sana_serve.server import metrics
from sana_serve.server.config import ClusterSettings
from sana_serve.server.hub import _END, BlockHub, Subscription, _Buffer, _Replay
from sana_serve.server.redis_store import GROUP, RedisJobStore, redis_client
from sana_serve.server.storage import StorageFiles, StoredJobOutput, open_storage
from sana_serve.server.worker import Busy, Worker

log = logging.getLogger("sana_serve.cluster")

SESSION_START_SECONDS = 30.0  # a realtime session no worker took within this long fails


def _key(prefix: str, *parts: str) -> str:
    return ":".join((prefix, *parts))


# -- live blocks across nodes ------------------------------------------------------------------
class RedisBlockHub(BlockHub):
    """BlockHub over one Redis Stream per job. publish/finish: any thread (sync client, one
    XADD); subscribe: on an API node's event loop (asyncio client, blocking XREAD)."""

    def __init__(self, url: str, files: StorageFiles, prefix: str = "sana", max_buffered_blocks: int = 8,
                 max_buffered_bytes: int = 32 << 20, keep_seconds: int = 3600, max_entries: int = 512):
        self.url, self.files, self.prefix = url, files, prefix
        self.max_buffered_blocks, self.max_buffered_bytes = max_buffered_blocks, max_buffered_bytes
        self.keep_seconds, self.max_entries = keep_seconds, max_entries
        self._redis = redis_client(url)
        self._async: dict[int, object] = {}  # one asyncio client per event loop
        self._open = 0
        self._lock = threading.Lock()

    def _stream(self, job_id: str) -> str:
        return _key(self.prefix, "blocks", job_id)

    def _append(self, job_id: str, fields: dict) -> None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.xadd(self._stream(job_id), fields, maxlen=self.max_entries, approximate=True)
        pipe.expire(self._stream(job_id), self.keep_seconds)
        pipe.execute()

    def publish(self, job_id: str, event: dict, segment: bytes) -> None:
        self._append(job_id, {"event": json.dumps(event), "segment": segment})

    def finish(self, job_id: str, event: dict) -> None:
        self._append(job_id, {"end": json.dumps(event)})

    def viewers(self, job_id: Optional[str] = None) -> int:
        return self._open

    def _async_client(self):
        loop = asyncio.get_running_loop()
        client = self._async.get(id(loop))
        if client is None:
            client = self._async[id(loop)] = redis_client(self.url, asyncio_client=True)
        return client

    def subscribe(self, job_id: str, from_block: int = 0) -> Subscription:
        if from_block < 0:
            raise ValueError(f"from_block must be >= 0, got {from_block}")
        loop = asyncio.get_running_loop()
        buf = _Buffer(loop, self.max_buffered_blocks, self.max_buffered_bytes)
        # The stream's last entry before looking at the storage: every block after it is
        # read live, every block up to it is stored already (stored, then published).
        last = self._redis.xrevrange(self._stream(job_id), "+", "-", count=1)
        last_id = last[0][0] if last else b"0-0"
        ended = json.loads(last[0][1][b"end"]) if last and b"end" in last[0][1] else None
        feed = None if ended is not None else loop.create_task(self._feed(job_id, last_id, buf))
        with self._lock:
            self._open += 1
        closed = []

        def unregister() -> None:
            if closed:
                return
            closed.append(True)
            if feed is not None:
                feed.cancel()
            with self._lock:
                self._open -= 1

        replay = _Replay(self.files.replay_source(job_id), job_id, from_block)
        return Subscription(buf, replay, ended, unregister, self.max_buffered_blocks)

    async def _feed(self, job_id: str, last_id, buf: _Buffer) -> None:
        """Move the job's stream entries after `last_id` into the viewer's bounded buffer."""
        from redis.exceptions import RedisError

        client, stream = self._async_client(), self._stream(job_id)
        while True:
            try:
                got = await client.xread({stream: last_id}, block=5000, count=16)
            except RedisError as e:
                log.warning("live stream read failed (%s); retrying", e, extra={"job_id": job_id})
                await asyncio.sleep(0.5)
                continue
            for _, entries in got or ():
                for entry_id, fields in entries:
                    last_id = entry_id
                    if b"end" in fields:
                        buf.offer((_END, json.loads(fields[b"end"])), always=True)
                        return
                    buf.offer((json.loads(fields[b"event"]), fields[b"segment"]), size=len(fields[b"segment"]))


# -- the worker role ---------------------------------------------------------------------------
class _SessionHost:
    """A realtime session started by an API node, running on this worker: blocks go to its
    out stream (raw frames; the API node encodes them for its socket), controls come from
    its ctl stream."""

    def __init__(self, worker: "ClusterWorker", sid: str):
        self.worker, self.sid = worker, sid
        self.out = _key(worker.prefix, "session", sid, "out")
        self.ctl = _key(worker.prefix, "session", sid, "ctl")
        self.ctl_last = b"0-0"
        self.handle = None

    def send(self, fields: dict) -> None:
        r = self.worker.redis
        pipe = r.pipeline(transaction=False)
        pipe.xadd(self.out, fields, maxlen=64, approximate=True)
        pipe.expire(self.out, 600)
        pipe.execute()

    def on_block(self, block) -> None:  # worker thread
        frames = np.ascontiguousarray(block.frames)
        self.send({"block": json.dumps({"index": block.index, "frame_start": block.frame_start,
                                        "shape": list(frames.shape)}), "frames": frames.tobytes()})

    def on_end(self, error: Optional[str]) -> None:
        self.send({"end": json.dumps({"error": error})})


class ClusterWorker(Worker):
    """The embedded Worker on a shared Redis queue (see the module docstring)."""

    def __init__(self, settings, cluster: ClusterSettings, store: RedisJobStore, files: StorageFiles,
                 load_engine, hub: RedisBlockHub, output_factory):
        super().__init__(settings, store, files, load_engine, hub=hub, output_factory=output_factory)
        self.cluster, self.prefix, self.name = cluster, cluster.prefix, store.worker
        self.redis = redis_client(cluster.store_url)
        self._lost: set[str] = set()
        self._hosts: dict[str, _SessionHost] = {}
        self._threads_stop = threading.Event()
        store.on_attempts_exceeded = self._attempts_exceeded
        self._side = [threading.Thread(target=self._lease_loop, name="sana-lease", daemon=True),
                      threading.Thread(target=self._wake_loop, name="sana-wake", daemon=True)]

    def start(self) -> None:
        from redis.exceptions import ResponseError

        try:
            self.redis.xgroup_create(_key(self.prefix, "sessions"), GROUP, id="0", mkstream=True)
        except ResponseError:  # BUSYGROUP: another worker made it
            pass
        super().start()
        for t in self._side:
            t.start()

    def stop(self, timeout: float = 30.0) -> None:
        super().stop(timeout)
        self._threads_stop.set()
        try:
            self.redis.hdel(_key(self.prefix, "workers"), self.name)
        except Exception:  # noqa: BLE001 - Redis gone: the heartbeat simply goes stale
            pass

    # -- leases and heartbeat (own thread) ------------------------------------------------------
    def _job_ids(self) -> list[str]:
        with self._lock:  # every job from claim to release, including ones the writer finishes
            return [i for i, a in self._by_id.items() if a.kind == "job"]

    def _lease_loop(self) -> None:
        period = self.cluster.lease_seconds / 3
        while not self._threads_stop.wait(period):
            try:
                lost = self.store.renew(self._job_ids())
                if lost:
                    log.warning("lost the lease of %s; another worker runs them now", lost)
                    self._lost.update(lost)
                    self.notify()
                self._heartbeat()
            except Exception as e:  # noqa: BLE001 - Redis restarting: the next tick tries again
                log.warning("lease renewal failed: %s", e)

    def _heartbeat(self) -> None:
        counts = self.active_count()
        beat = {"last_seen": time.time(), "jobs": len(self._job_ids()), "sessions": counts["session"],
                "max_batch": self.settings.max_batch, "max_sessions": self.settings.max_sessions,
                "block_seconds": self._block_ema, "pid": os.getpid(), "host": socket.gethostname(),
                "device": str(getattr(self.engine, "device", "")), "ready": self.ready.is_set()}
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(_key(self.prefix, "workers"), self.name, json.dumps(beat))
        # progress finer than committed blocks (a full-sequence job moves per denoising step), for
        # the API nodes' video objects; it lapses with the worker's lease
        for job_id in self._job_ids():
            live = self.live_progress(job_id)
            if live is not None:
                pipe.set(_key(self.prefix, "job", job_id, "live"), live, ex=max(1, round(3 * self.cluster.lease_seconds)))
        if self.ready.is_set():
            e = self.engine
            pipe.hset(_key(self.prefix, "model"), mapping={  # what API nodes validate requests with
                "name": e.config.name, "rules": json.dumps(e.to_dict())})
        pipe.execute()

    def _wake_loop(self) -> None:
        """A job was queued somewhere: look at the queue now rather than at the next idle tick."""
        while not self._threads_stop.is_set():
            try:
                pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(_key(self.prefix, "wake"))
                while not self._threads_stop.is_set():
                    if pubsub.get_message(timeout=1.0) is not None:
                        self.notify()
            except Exception:  # noqa: BLE001 - Redis restarting
                time.sleep(0.5)

    def _attempts_exceeded(self, job_id: str, error: dict) -> None:
        self.hub.finish(job_id, {"type": "video.failed", "id": job_id, "error": error})
        metrics.JOBS_FINISHED.labels("failed").inc()

    # -- the loop's hooks (worker thread) -------------------------------------------------------
    def _admit(self) -> None:
        from redis.exceptions import RedisError

        try:
            self._take_sessions()
            super()._admit()
        except RedisError as e:  # Redis restarting: admit at the next step
            log.warning("could not read the queue: %s", e)
            self._wake.wait(0.5)

    def _open_job(self, a) -> None:
        # Another worker may have started it: continue after the blocks in the storage.
        self.files.fetch(a.id)
        super()._open_job(a)

    def _apply_controls(self) -> None:
        from redis.exceptions import RedisError

        jobs = [a for a in self._active if a.kind == "job"]
        try:
            statuses = self.store.statuses([a.id for a in jobs]) if jobs else []
            self._session_controls()
        except RedisError as e:
            log.warning("could not read job states: %s", e)
            statuses = ["in_progress"] * len(jobs)
        for a, status in zip(jobs, statuses):
            if status is None:  # deleted from some API node
                self.cancel(a.id, delete_files=True)
            elif status != "in_progress" or a.id in self._lost:  # cancelled, or another worker's now
                self.cancel(a.id, delete_files=False)
            self._lost.discard(a.id)
        super()._apply_controls()

    def _release(self, a, reason, error=None) -> None:
        if a.kind == "job" and reason == "cancelled" and not a.released.is_set():
            try:
                status = self.store.statuses([a.id])[0]
            except Exception:  # noqa: BLE001
                status = "in_progress"
            if status not in (None, "cancelled"):
                # Not cancelled by anyone: the lease went to another worker (or it finished
                # there). Drop it quietly: its viewers are served by the new owner.
                log.info("job handed over to another worker", extra={"job_id": a.id})
                reason = None
        super()._release(a, reason, error)

    # -- realtime sessions from any API node -------------------------------------------------------
    def _take_sessions(self) -> None:
        with self._lock:
            running = sum(1 for a in self._active if a.kind == "session") + len(self._new_sessions)
        if running >= self.settings.max_sessions or self._slots() <= 0:
            return
        got = self.redis.xreadgroup(GROUP, self.name, {_key(self.prefix, "sessions"): ">"}, count=1)
        for _, entries in got or ():
            for entry_id, fields in entries:
                self.redis.xack(_key(self.prefix, "sessions"), GROUP, entry_id)
                start = json.loads(fields[b"start"])
                host = _SessionHost(self, start["sid"])
                if start["deadline"] < time.time():  # its client gave up waiting
                    host.on_end("no worker took the session in time")
                    continue
                request = GenerationRequest(**start["request"])
                try:
                    host.handle = self.start_session(request, host.on_block, host.on_end)
                except (Busy, ValueError, RuntimeError) as e:
                    host.on_end(str(e))
                    continue
                self._hosts[host.sid] = host
                host.send({"started": json.dumps({"worker": self.name})})
                log.info("realtime session %s taken", host.sid)

    def _session_controls(self) -> None:
        for sid in [s for s, h in self._hosts.items() if h.handle.ended.is_set()]:
            del self._hosts[sid]
        if not self._hosts:
            return
        got = self.redis.xread({h.ctl: h.ctl_last for h in self._hosts.values()}, count=16)
        by_stream = {h.ctl.encode(): h for h in self._hosts.values()}
        for stream, entries in got or ():
            host = by_stream[stream]
            for entry_id, fields in entries:
                host.ctl_last = entry_id
                msg = json.loads(fields[b"msg"])
                if msg["type"] == "stop":
                    host.handle.stop()
                elif msg["type"] == "prompt":
                    try:
                        host.handle.update_prompt(msg["prompt"], msg.get("negative_prompt") or "")
                    except ValueError as e:
                        log.warning("prompt update refused: %s", e)


# -- the API role --------------------------------------------------------------------------------
class RemoteSession:
    """An API node's handle on a realtime session a worker runs (the same surface as the
    worker's SessionHandle, so server.ws drives it unchanged)."""

    def __init__(self, frontend: "ClusterFrontend", request: GenerationRequest, on_block, on_end):
        self.id = "session_" + secrets.token_hex(8)
        self.request, self.on_block, self.on_end = request, on_block, on_end
        self._frontend = frontend
        p = frontend.prefix
        self.out, self.ctl = _key(p, "session", self.id, "out"), _key(p, "session", self.id, "ctl")
        self.ended = threading.Event()
        self.blocks = 0
        self._stop = threading.Event()

    def update_prompt(self, prompt: str, negative_prompt: str = "") -> None:
        self._frontend.validate(GenerationRequest(prompt, seconds=None, seed=self.request.seed,
                                                  negative_prompt=negative_prompt))
        self._control({"type": "prompt", "prompt": prompt, "negative_prompt": negative_prompt})

    def stop(self) -> None:
        self._stop.set()
        self._control({"type": "stop"})

    def _control(self, msg: dict) -> None:
        r = self._frontend.redis
        r.xadd(self.ctl, {"msg": json.dumps(msg)}, maxlen=64, approximate=True)
        r.expire(self.ctl, 600)

    def _follow(self) -> None:
        """Own thread: relay the worker's blocks to on_block until the end (or a dead worker)."""
        r, last, worker = self._frontend.redis, b"0-0", None
        deadline = time.monotonic() + SESSION_START_SECONDS
        error: Optional[str] = None
        try:
            while True:
                got = r.xread({self.out: last}, block=1000, count=8)
                if not got:
                    if worker is None and time.monotonic() > deadline:
                        error = f"no worker took the session within {SESSION_START_SECONDS:g} s"
                        break
                    if worker is not None and not self._frontend.worker_alive(worker):
                        error = f"the worker running the session ({worker}) stopped"
                        break
                    if self._stop.is_set() and worker is None:
                        break
                    continue
                for _, entries in got:
                    for entry_id, fields in entries:
                        last = entry_id
                        if b"started" in fields:
                            worker = json.loads(fields[b"started"])["worker"]
                        elif b"block" in fields:
                            meta = json.loads(fields[b"block"])
                            frames = np.frombuffer(fields[b"frames"], np.uint8).reshape(meta["shape"])
                            self.blocks += 1
                            self.on_block(SimpleNamespace(index=meta["index"], frame_start=meta["frame_start"],
                                                          frames=frames, frame_count=len(frames)))
                        elif b"end" in fields:
                            error = json.loads(fields[b"end"])["error"]
                            return
        except Exception as e:  # noqa: BLE001
            error = f"lost the session's stream: {type(e).__name__}: {e}"
        finally:
            try:
                self.on_end(error)
            finally:
                self.ended.set()


class ClusterFrontend:
    """Stands where the embedded server has its Worker: what server.app and server.ws ask of
    it (ready, validate, engine (its RequestRules), cancel, retry_after, start_session), answered through
    Redis. Ready once a worker has published the model it serves."""

    def __init__(self, settings, cluster: ClusterSettings, model_config):
        self.settings, self.cluster, self.prefix = settings, cluster, cluster.prefix
        self.model_config = model_config
        self.redis = redis_client(cluster.store_url)
        self.ready = threading.Event()
        self.load_error: Optional[str] = None
        self.engine: Optional[RequestRules] = None
        self._stop = threading.Event()
        self._sessions: set[RemoteSession] = set()
        self._thread = threading.Thread(target=self._watch_model, name="sana-frontend", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        for s in list(self._sessions):
            s.stop()

    def _watch_model(self) -> None:
        while not self._stop.is_set():
            try:
                model = {k.decode(): v.decode() for k, v in self.redis.hgetall(_key(self.prefix, "model")).items()}
                if model:
                    if model["name"] != self.model_config.name:
                        self.load_error = (f"the workers serve {model['name']!r} but this API node's --config is "
                                           f"{self.model_config.name!r}")
                    else:
                        self.engine = RequestRules.from_dict(self.model_config, json.loads(model["rules"]))
                        self.load_error = None
                        self.ready.set()
                        metrics.MODEL_LOADED.set(1)
                        return
            except Exception as e:  # noqa: BLE001 - Redis not up yet
                log.warning("waiting for Redis: %s", e)
            self._stop.wait(0.5)

    # what server.app asks --------------------------------------------------------------------
    def validate(self, request: GenerationRequest) -> None:
        if self.engine is None:
            raise RuntimeError("no worker has registered its model yet")
        self.engine.validate(request)

    def live_progress(self, job_id: str) -> int | None:
        """Percent done of a running job as its worker last published it (every heartbeat)."""
        value = self.redis.get(_key(self.prefix, "job", job_id, "live"))
        return None if value is None else int(value)

    def notify(self) -> None:
        self.redis.publish(_key(self.prefix, "wake"), "1")

    def cancel(self, job_id: str, delete_files: bool):
        """Nothing runs here: the worker that runs the job sees its record change at its next step."""
        return None

    def workers(self) -> dict[str, dict]:
        raw = self.redis.hgetall(_key(self.prefix, "workers"))
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    def worker_alive(self, name: str) -> bool:
        beat = self.workers().get(name)
        return beat is not None and time.time() - beat["last_seen"] < 3 * self.cluster.lease_seconds

    def retry_after(self) -> int:
        import math

        blocks = [w["block_seconds"] for w in self.workers().values() if w.get("block_seconds")]
        return max(1, min(120, math.ceil(min(blocks) if blocks else 2.0)))

    def active_count(self) -> dict[str, int]:
        return {"job": 0, "session": len(self._sessions)}

    def start_session(self, request: GenerationRequest, on_block, on_end) -> RemoteSession:
        request = GenerationRequest(request.prompt, seconds=None, seed=request.seed,
                                    negative_prompt=request.negative_prompt,
                                    num_inference_steps=request.num_inference_steps,
                                    guidance_scale=request.guidance_scale)
        self.validate(request)
        alive = [w for n, w in self.workers().items() if time.time() - w["last_seen"] < 3 * self.cluster.lease_seconds]
        if not any(w["sessions"] < w["max_sessions"] for w in alive):
            raise Busy("every worker runs its limit of realtime sessions")

        def ended(error):
            self._sessions.discard(session)
            on_end(error)

        session = RemoteSession(self, request, on_block, ended)
        self._sessions.add(session)
        start = {"sid": session.id, "deadline": time.time() + SESSION_START_SECONDS,
                 "request": {"prompt": request.prompt, "seconds": None, "seed": request.seed,
                             "negative_prompt": request.negative_prompt,
                             "num_inference_steps": request.num_inference_steps,
                             "guidance_scale": request.guidance_scale}}
        self.redis.xadd(_key(self.prefix, "sessions"), {"start": json.dumps(start)}, maxlen=1000, approximate=True)
        self.notify()
        threading.Thread(target=session._follow, name=f"sana-{session.id}", daemon=True).start()
        return session


# -- /metrics: the cluster as Redis sees it ---------------------------------------------------------
class _ClusterCollector:
    def __init__(self, store: RedisJobStore, frontend_or_worker, lease_seconds: float):
        self.store, self.node, self.lease = store, frontend_or_worker, lease_seconds

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


def watch_cluster(store: Optional[RedisJobStore], node=None, lease_seconds: float = 15.0) -> None:
    """Report the cluster in this process's /metrics (None: stop)."""
    while _COLLECTOR:
        metrics.REGISTRY.unregister(_COLLECTOR.pop())
    if store is not None:
        c = _ClusterCollector(store, node, lease_seconds)
        metrics.REGISTRY.register(c)
        _COLLECTOR.append(c)


# -- wiring -----------------------------------------------------------------------------------------
def build(role: str, settings, cluster: ClusterSettings, model_config, load_engine: Callable):
    """(store, files, hub, worker-or-frontend) for `role` ("api" | "worker")."""
    storage = open_storage(cluster.storage, cluster.s3_endpoint_url)
    files = StorageFiles(storage, settings.data_dir)
    hub = RedisBlockHub(cluster.store_url, files, cluster.prefix)
    if role == "worker":
        name = cluster.worker_name or f"{socket.gethostname()}-{os.getpid()}"
        store = RedisJobStore(cluster.store_url, worker=name, lease_seconds=cluster.lease_seconds,
                              max_attempts=cluster.max_attempts, job_ttl_seconds=settings.job_ttl_seconds,
                              prefix=cluster.prefix)
        output = functools.partial(StoredJobOutput, storage=storage, keep_frames=settings.keep_frames)
        node = ClusterWorker(settings, cluster, store, files, load_engine, hub, output)
    elif role == "api":
        store = RedisJobStore(cluster.store_url, lease_seconds=cluster.lease_seconds,
                              max_attempts=cluster.max_attempts, job_ttl_seconds=settings.job_ttl_seconds,
                              prefix=cluster.prefix)
        node = ClusterFrontend(settings, cluster, model_config)
    else:
        raise ValueError(f"unknown cluster role {role!r}")
    wait_for_redis(store.redis, cluster.store_url)
    return store, files, hub, node


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

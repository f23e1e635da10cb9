"""A cluster worker: the one Worker loop (server.worker) on the shared Redis queue.

`ClusterStrategy` is what a shared queue adds to the loop: leases it renews (and hand-over
when it lost one), a per-step look at its jobs' records (a cancel or delete made on any API
node reaches it within one denoising step), realtime sessions started from any API node,
and a heartbeat that API nodes and /metrics read.

Keys (prefix `sana`, beside those of cluster.store): `wake` (pub/sub: a job was queued),
`model` (what the workers serve), `workers` (heartbeats), `job:<id>:live` (a running job's
percent done, finer than its blocks), `sessions` (realtime session starts, a Stream with the
`workers` group), `session:<sid>:out` / `session:<sid>:ctl` (a session's blocks / its
prompt updates and stop).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from typing import Optional

import numpy as np

from sana_serve.engine.rollout import GenerationRequest
from sana_serve.server.cluster.store import GROUP, key, redis_client
from sana_serve.server.config import ClusterSettings
from sana_serve.server.worker import Busy, Worker, WorkerStrategy

log = logging.getLogger("sana_serve.cluster")


class _SessionHost:
    """A realtime session started by an API node, running on this worker: blocks go to its
    out stream (raw frames; the API node encodes them for its socket), controls come from
    its ctl stream."""

    def __init__(self, redis, prefix: str, sid: str):
        self.redis, self.sid = redis, sid
        self.out = key(prefix, "session", sid, "out")
        self.ctl = key(prefix, "session", sid, "ctl")
        self.ctl_last = b"0-0"
        self.handle = None

    def send(self, fields: dict) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.xadd(self.out, fields, maxlen=64, approximate=True)
        pipe.expire(self.out, 600)
        pipe.execute()

    def on_block(self, block) -> None:  # worker thread
        frames = np.ascontiguousarray(block.frames)
        self.send({"block": json.dumps({"index": block.index, "frame_start": block.frame_start,
                                        "shape": list(frames.shape)}), "frames": frames.tobytes()})

    def on_end(self, error: Optional[str]) -> None:
        self.send({"end": json.dumps({"error": error})})


class ClusterStrategy(WorkerStrategy):
    """See the module docstring. Its threads: leases + heartbeat, and the wake-up subscription."""

    def __init__(self, cluster: ClusterSettings, queue, name: str):
        from redis.exceptions import RedisError

        self.transient_errors = (RedisError,)
        self.cluster, self.prefix, self.name, self.queue = cluster, cluster.prefix, name, queue
        self.redis = redis_client(cluster.store_url)
        self.worker: Optional[Worker] = None
        self._lost: set[str] = set()
        self._hosts: dict[str, _SessionHost] = {}
        self._stop = threading.Event()

    def start(self, worker: Worker) -> None:
        from redis.exceptions import ResponseError

        self.worker = worker
        try:
            self.redis.xgroup_create(key(self.prefix, "sessions"), GROUP, id="0", mkstream=True)
        except ResponseError:  # BUSYGROUP: another worker made it
            pass
        for target, name in ((self._lease_loop, "sana-lease"), (self._wake_loop, "sana-wake")):
            threading.Thread(target=target, name=name, daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        try:
            self.redis.hdel(key(self.prefix, "workers"), self.name)
        except Exception:  # noqa: BLE001 - Redis gone: the heartbeat simply goes stale
            pass

    # -- leases and heartbeat (own thread) ------------------------------------------------------
    def _lease_loop(self) -> None:
        period = self.cluster.lease_seconds / 3
        while not self._stop.wait(period):
            try:
                lost = self.queue.renew(self.worker.job_ids())
                if lost:
                    log.warning("lost the lease of %s; another worker runs them now", lost)
                    self._lost.update(lost)
                    self.worker.notify()
                self._heartbeat()
            except Exception as e:  # noqa: BLE001 - Redis restarting: the next tick tries again
                log.warning("lease renewal failed: %s", e)

    def _heartbeat(self) -> None:
        w = self.worker
        counts, job_ids = w.active_count(), w.job_ids()
        beat = {"last_seen": time.time(), "jobs": len(job_ids), "sessions": counts["session"],
                "max_batch": w.settings.max_batch, "max_sessions": w.settings.max_sessions,
                "block_seconds": w.block_seconds, "pid": os.getpid(), "host": socket.gethostname(),
                "device": str(getattr(w.engine, "device", "")), "ready": w.ready.is_set()}
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(key(self.prefix, "workers"), self.name, json.dumps(beat))
        # progress finer than committed blocks (a full-sequence job moves per denoising step), for
        # the API nodes' video objects; it lapses with the worker's lease
        for job_id in job_ids:
            live = w.live_progress(job_id)
            if live is not None:
                pipe.set(key(self.prefix, "job", job_id, "live"), live, ex=max(1, round(3 * self.cluster.lease_seconds)))
        if w.ready.is_set():
            e = w.engine
            pipe.hset(key(self.prefix, "model"), mapping={  # what API nodes validate requests with
                "name": e.config.name, "rules": json.dumps(e.to_dict())})
        pipe.execute()

    def _wake_loop(self) -> None:
        """A job was queued somewhere: look at the queue now rather than at the next idle tick."""
        while not self._stop.is_set():
            try:
                pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(key(self.prefix, "wake"))
                while not self._stop.is_set():
                    if pubsub.get_message(timeout=1.0) is not None:
                        self.worker.notify()
            except Exception:  # noqa: BLE001 - Redis restarting
                time.sleep(0.5)

    # -- the loop's questions (worker thread) ------------------------------------------------------
    def admit(self, worker: Worker) -> None:
        self._take_sessions(worker)

    def stops(self, worker: Worker, job_ids: list[str]) -> dict[str, bool]:
        statuses = self.queue.statuses(job_ids) if job_ids else []
        self._session_controls()
        stops = {}
        for job_id, status in zip(job_ids, statuses):
            if status is None:  # deleted from some API node
                stops[job_id] = True
            elif status != "in_progress" or job_id in self._lost:  # cancelled, or another worker's now
                stops[job_id] = False
            self._lost.discard(job_id)
        return stops

    def cancel_is_final(self, job_id: str) -> bool:
        try:
            status = self.queue.statuses([job_id])[0]
        except Exception:  # noqa: BLE001
            status = "in_progress"
        # Anything but cancelled or deleted: the lease went to another worker (or it finished there).
        return status in (None, "cancelled")

    # -- realtime sessions from any API node -------------------------------------------------------
    def _take_sessions(self, worker: Worker) -> None:
        if worker.free_slots() <= 0:
            return
        stream = key(self.prefix, "sessions")
        got = self.redis.xreadgroup(GROUP, self.name, {stream: ">"}, count=1)
        for _, entries in got or ():
            for entry_id, fields in entries:
                self.redis.xack(stream, GROUP, entry_id)
                start = json.loads(fields[b"start"])
                host = _SessionHost(self.redis, self.prefix, start["sid"])
                if start["deadline"] < time.time():  # its client gave up waiting
                    host.on_end("no worker took the session in time")
                    continue
                request = GenerationRequest(**start["request"])
                try:
                    host.handle = worker.start_session(request, host.on_block, host.on_end)
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

"""An API node's Runner: what the HTTP layer asks of the model, answered by the workers through Redis.

Ready and the request rules come from the `model` hash a worker publishes, retry-after and
the live progress from the workers' heartbeats, a queued job wakes them through `wake`, and a
realtime session is a start entry in the `sessions` stream that one worker takes; its blocks
and controls travel on the session's own two streams (see cluster.worker).
"""
from __future__ import annotations

import json
import logging
import math
import secrets
import threading
import time
from types import SimpleNamespace
from typing import Optional

import numpy as np

from sana_serve.engine.rollout import GenerationRequest, RequestRules
from sana_serve.server import metrics
from sana_serve.server.cluster.store import key, redis_client
from sana_serve.server.config import ClusterSettings
from sana_serve.server.jobs import Job
from sana_serve.server.worker import Busy, report_end

log = logging.getLogger("sana_serve.cluster")

SESSION_START_SECONDS = 30.0  # a realtime session no worker took within this long fails


class RemoteSession:
    """An API node's handle on a realtime session a worker runs (an interfaces.Session)."""

    def __init__(self, runner: "ApiRunner", request: GenerationRequest, on_block, on_end):
        self.id = "session_" + secrets.token_hex(8)
        self.request, self.on_block, self.on_end = request, on_block, on_end
        self._runner = runner
        p = runner.prefix
        self.out, self.ctl = key(p, "session", self.id, "out"), key(p, "session", self.id, "ctl")
        self.ended = threading.Event()
        self.blocks = 0
        self._stop = threading.Event()

    def update_prompt(self, prompt: str, negative_prompt: str = "") -> None:
        self._runner.validate(GenerationRequest(prompt, seconds=None, seed=self.request.seed,
                                                  negative_prompt=negative_prompt))
        self._control({"type": "prompt", "prompt": prompt, "negative_prompt": negative_prompt})

    def stop(self) -> None:
        self._stop.set()
        self._control({"type": "stop"})

    def _control(self, msg: dict) -> None:
        r = self._runner.redis
        r.xadd(self.ctl, {"msg": json.dumps(msg)}, maxlen=64, approximate=True)
        r.expire(self.ctl, 600)

    def _follow(self) -> None:
        """Own thread: relay the worker's blocks to on_block until the end (or a dead worker)."""
        r, last, worker = self._runner.redis, b"0-0", None
        deadline = time.monotonic() + SESSION_START_SECONDS
        error: Optional[str] = None
        try:
            while True:
                got = r.xread({self.out: last}, block=1000, count=8)
                if not got:
                    if worker is None and time.monotonic() > deadline:
                        error = f"no worker took the session within {SESSION_START_SECONDS:g} s"
                        break
                    if worker is not None and not self._runner.worker_alive(worker):
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


class ApiRunner:
    """An API node's Runner: the workers behind Redis. Ready once a worker has published the
    model it serves (and its request rules)."""

    def __init__(self, settings, cluster: ClusterSettings, model_config, files, hub):
        self.settings, self.cluster, self.prefix = settings, cluster, cluster.prefix
        self.model_config, self.files, self.hub = model_config, files, hub
        self.redis = redis_client(cluster.store_url)
        self.ready = threading.Event()
        self.load_error: Optional[str] = None
        self.rules: Optional[RequestRules] = None
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
                model = {k.decode(): v.decode() for k, v in self.redis.hgetall(key(self.prefix, "model")).items()}
                if model:
                    if model["name"] != self.model_config.name:
                        self.load_error = (f"the workers serve {model['name']!r} but this API node's --config is "
                                           f"{self.model_config.name!r}")
                    else:
                        self.rules = RequestRules.from_dict(self.model_config, json.loads(model["rules"]))
                        self.load_error = None
                        self.ready.set()
                        metrics.MODEL_LOADED.set(1)
                        return
            except Exception as e:  # noqa: BLE001 - Redis not up yet
                log.warning("waiting for Redis: %s", e)
            self._stop.wait(0.5)

    def validate(self, request: GenerationRequest) -> None:
        if self.rules is None:
            raise RuntimeError("no worker has registered its model yet")
        self.rules.validate(request)

    def live_progress(self, job_id: str) -> int | None:
        """Percent done of a running job as its worker last published it (every heartbeat)."""
        value = self.redis.get(key(self.prefix, "job", job_id, "live"))
        return None if value is None else int(value)

    def notify(self) -> None:
        self.redis.publish(key(self.prefix, "wake"), "1")

    def cancel(self, job: Job, delete: bool) -> None:
        """Nothing runs here. A running job's worker sees its record change at its next step and
        reports its end; a queued one no worker holds (a claim refuses a job that is no longer
        queued), so its end is reported here."""
        if delete:
            self.files.remove(job.id)
        if job.status == "queued":
            report_end(self.hub, job.id, delete)

    def workers(self) -> dict[str, dict]:
        raw = self.redis.hgetall(key(self.prefix, "workers"))
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    def worker_alive(self, name: str) -> bool:
        beat = self.workers().get(name)
        return beat is not None and time.time() - beat["last_seen"] < 3 * self.cluster.lease_seconds

    def retry_after(self) -> int:
        blocks = [w["block_seconds"] for w in self.workers().values() if w.get("block_seconds")]
        return max(1, min(120, math.ceil(min(blocks) if blocks else 2.0)))

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
        self.redis.xadd(key(self.prefix, "sessions"), {"start": json.dumps(start)}, maxlen=1000, approximate=True)
        self.notify()
        threading.Thread(target=session._follow, name=f"sana-{session.id}", daemon=True).start()
        return session

"""The cluster's job store: the records (JobRecords) and the queue (WorkQueue) in Redis, shared by
every API node and worker.

Layout (every key under one prefix, default `sana`):
    {p}:job:<id>        hash: the Job's fields (absent = None) + attempts, worker, stream, entry
    {p}:jobs            zset id -> seq: every job, for listing in creation order
    {p}:queued          zset id -> seq: jobs waiting; its size is what the queue bound limits
    {p}:queue:<prio>    one Stream per priority, consumer group `workers`: the delivery of jobs
    {p}:priorities      zset of the priorities that have a stream (workers read highest first)
    {p}:expiry          zset id -> expires_at of finished jobs
    {p}:counts          hash status -> number of jobs (kept by the scripts, read by /metrics)
    {p}:stats           hash: reclaims, attempts_exceeded (cluster-wide counters for /metrics)
    {p}:workers         hash worker name -> JSON heartbeat (see cluster/worker.py)

Queue semantics. `create` is one Lua script: bound check, record, stream entry, all or nothing.
A worker calls `claim_next` only when it has a free batch slot, and it reads one entry
(`XREADGROUP ... COUNT 1`), highest priority stream first, so a busy worker never hoards
jobs it cannot run; inside a priority the stream is FIFO. The entry then sits in the
group's pending list under that worker's name: that is the job's lease. The worker renews it
(`renew`, an `XCLAIM ... JUSTID` that only its current owner may do, which resets the idle
time); a worker that dies stops renewing, and once the entry has been idle for
`lease_seconds` any other worker takes it over with `XAUTOCLAIM` and resumes the job from its
last checkpoint. Every claim counts an attempt; a job claimed more than `max_attempts` times
(it killed that many workers) fails with error code `worker_lost` instead of looping.
A worker's writes (`set_progress`, `finish`) are accepted only while it still owns the job,
so a worker that lost its lease (paused, partitioned) cannot complete a job twice.
"""
from __future__ import annotations

import time
from dataclasses import asdict

from sana_serve.server.jobs import ACTIVE, FINISHED, Job, QueueFull

GROUP = "workers"

_INTS = {"seed", "num_blocks", "frames", "num_inference_steps", "priority", "blocks_completed", "seq"}
_FLOATS = {"seconds", "guidance_scale", "created_at", "started_at", "completed_at", "expires_at"}
_FIELDS = list(Job.__dataclass_fields__)

# Lua helpers shared by the scripts. KEYS[1] is always the job hash; `P` (ARGV[1]) the prefix.
_PRELUDE = """
local P = ARGV[1]
local function move(from, to)
  if from then redis.call('HINCRBY', P .. ':counts', from, -1) end
  if to then redis.call('HINCRBY', P .. ':counts', to, 1) end
end
local function drop_entry(job)
  local stream = redis.call('HGET', job, 'stream')
  local entry = redis.call('HGET', job, 'entry')
  if stream and entry then
    redis.call('XACK', stream, 'workers', entry)
    redis.call('XDEL', stream, entry)
  end
end
"""

# ARGV: prefix, max_queued, id, priority, then field/value pairs. -> {seq, entry} or {-1, queued}
_CREATE = _PRELUDE + """
local queued = redis.call('ZCARD', P .. ':queued')
if queued >= tonumber(ARGV[2]) then return {-1, queued} end
local id, prio = ARGV[3], ARGV[4]
local seq = redis.call('INCR', P .. ':seq')
local stream = P .. ':queue:' .. prio
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('HSET', KEYS[1], 'seq', seq, 'attempts', 0, 'stream', stream)
redis.call('ZADD', P .. ':jobs', seq, id)
redis.call('ZADD', P .. ':queued', seq, id)
redis.pcall('XGROUP', 'CREATE', stream, 'workers', '0', 'MKSTREAM')
redis.call('ZADD', P .. ':priorities', prio, prio)
local entry = redis.call('XADD', stream, '*', 'id', id)
redis.call('HSET', KEYS[1], 'entry', entry)
move(nil, 'queued')
return {seq, entry}
"""

# A worker got the stream entry ARGV[3] of stream ARGV[4] for job KEYS[1].
# ARGV: prefix, worker, entry, stream, now, max_attempts, reclaimed(0|1)
# -> {'run', fields...} | {'failed'} | {'gone'}
_CLAIM = _PRELUDE + """
local status = redis.call('HGET', KEYS[1], 'status')
if (status ~= 'queued' and status ~= 'in_progress') or redis.call('HGET', KEYS[1], 'entry') ~= ARGV[3] then
  redis.call('XACK', ARGV[4], 'workers', ARGV[3])
  redis.call('XDEL', ARGV[4], ARGV[3])
  return {'gone'}
end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if ARGV[7] == '1' then redis.call('HINCRBY', P .. ':stats', 'reclaims', 1) end
local id = string.sub(KEYS[1], string.len(P) + 6)
redis.call('ZREM', P .. ':queued', id)
if attempts > tonumber(ARGV[6]) then
  local now = tonumber(ARGV[5])
  local ttl = tonumber(redis.call('HGET', KEYS[1], 'ttl') or '86400')
  redis.call('HSET', KEYS[1], 'status', 'failed', 'completed_at', ARGV[5], 'expires_at', tostring(now + ttl),
             'error_code', 'worker_lost', 'error_message', 'the job was running on a worker that stopped ' ..
             (attempts - 1) .. ' times (crashed, killed or lost); it is not retried again')
  redis.call('HDEL', KEYS[1], 'worker')
  redis.call('ZADD', P .. ':expiry', now + ttl, id)
  drop_entry(KEYS[1])
  redis.call('HINCRBY', P .. ':stats', 'attempts_exceeded', 1)
  move(status, 'failed')
  return {'failed'}
end
redis.call('HSET', KEYS[1], 'status', 'in_progress', 'worker', ARGV[2])
if not redis.call('HGET', KEYS[1], 'started_at') then redis.call('HSET', KEYS[1], 'started_at', ARGV[5]) end
move(status, 'in_progress')
return {'run', unpack(redis.call('HGETALL', KEYS[1]))}
"""

# ARGV: prefix, worker -> 1 if the lease was renewed (still ours), else 0
_RENEW = _PRELUDE + """
local stream = redis.call('HGET', KEYS[1], 'stream')
local entry = redis.call('HGET', KEYS[1], 'entry')
if not stream or redis.call('HGET', KEYS[1], 'status') ~= 'in_progress' then return 0 end
local p = redis.call('XPENDING', stream, 'workers', entry, entry, 1)
if #p == 0 or p[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', stream, 'workers', ARGV[2], 0, entry, 'JUSTID')
return 1
"""

# ARGV: prefix, worker ('' for an API node), blocks -> 1 | 0
_PROGRESS = _PRELUDE + """
if redis.call('HGET', KEYS[1], 'status') ~= 'in_progress' then return 0 end
if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'worker') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'blocks_completed', ARGV[3])
return 1
"""

# ARGV: prefix, worker ('' for an API node), status, now, ttl, error_code, error_message -> 1 | 0
_FINISH = _PRELUDE + """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'queued' and status ~= 'in_progress' then return 0 end
if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'worker') ~= ARGV[2] then return 0 end
local id = string.sub(KEYS[1], string.len(P) + 6)
local now, ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'completed_at', ARGV[4], 'expires_at', tostring(now + ttl))
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'error_code', ARGV[6], 'error_message', ARGV[7]) end
redis.call('ZREM', P .. ':queued', id)
redis.call('ZADD', P .. ':expiry', now + ttl, id)
drop_entry(KEYS[1])
move(status, ARGV[3])
return 1
"""

# ARGV: prefix -> the record's fields (empty if there was none)
_DELETE = _PRELUDE + """
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then return fields end
local id = string.sub(KEYS[1], string.len(P) + 6)
drop_entry(KEYS[1])
move(redis.call('HGET', KEYS[1], 'status'), nil)
redis.call('DEL', KEYS[1])
redis.call('ZREM', P .. ':jobs', id)
redis.call('ZREM', P .. ':queued', id)
redis.call('ZREM', P .. ':expiry', id)
return fields
"""


def key(prefix: str, *parts: str) -> str:
    """A Redis key under the cluster's prefix: key("sana", "job", id) -> "sana:job:<id>"."""
    return ":".join((prefix, *parts))


def redis_client(url: str, asyncio_client: bool = False):
    """A client that rides out a Redis restart: connection errors are retried for ~20 s."""
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError, TimeoutError

    if asyncio_client:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
    else:
        from redis import Redis
        from redis.retry import Retry
    return Redis.from_url(url, socket_connect_timeout=5, health_check_interval=10,
                          retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), 20),
                          retry_on_error=[ConnectionError, TimeoutError])


def _encode(job: Job) -> list[str]:
    out = []
    for k, v in asdict(job).items():
        if v is None or k == "seq":
            continue
        out += [k, repr(v) if isinstance(v, float) else str(v)]
    return out


def _decode(fields) -> Job | None:
    """A Job from HGETALL's answer: a dict (redis-py) or a flat list (from a script)."""
    if not fields:
        return None
    pairs = fields.items() if isinstance(fields, dict) else zip(fields[::2], fields[1::2])
    raw = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v) for k, v in pairs}
    values = {}
    for name in _FIELDS:
        if name not in raw:
            continue
        v = raw[name]
        values[name] = int(v) if name in _INTS else float(v) if name in _FLOATS else v
    return Job(**values)


class RedisJobStore:
    """See the module docstring. `worker` names this process in the consumer group (workers
    only; API nodes pass None and never claim)."""

    def __init__(self, url: str, worker: str | None = None, lease_seconds: float = 15.0, max_attempts: int = 3,
                 job_ttl_seconds: float = 24 * 3600, prefix: str = "sana"):
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self.url, self.worker, self.prefix = url, worker, prefix
        self.lease_seconds, self.max_attempts = float(lease_seconds), int(max_attempts)
        self.job_ttl_seconds = float(job_ttl_seconds)
        self.redis = redis_client(url)
        # Called (job_id, error) when a claim finds a job over its attempt limit and fails it:
        # the worker tells the job's live viewers.
        self.on_attempts_exceeded = None
        r = self.redis
        self._create, self._claim = r.register_script(_CREATE), r.register_script(_CLAIM)
        self._renew, self._progress = r.register_script(_RENEW), r.register_script(_PROGRESS)
        self._finish, self._delete = r.register_script(_FINISH), r.register_script(_DELETE)

    def key(self, *parts: str) -> str:
        return key(self.prefix, *parts)

    def _job_key(self, job_id: str) -> str:
        return self.key("job", job_id)

    # -- API side ----------------------------------------------------------------------------
    def create(self, job: Job, max_queued: int) -> Job:
        # `ttl`: how long the record is kept should a worker fail it (attempts) rather than an API node.
        seq, entry = self._create(keys=[self._job_key(job.id)], args=[
            self.prefix, max_queued, job.id, job.priority, *_encode(job), "ttl", repr(self.job_ttl_seconds)])
        if int(seq) < 0:
            raise QueueFull(int(entry))
        job.seq = int(seq)
        return job

    def get(self, job_id: str) -> Job | None:
        return _decode(self.redis.execute_command("HGETALL", self._job_key(job_id)))

    def list(self, after: str | None, limit: int, order: str) -> tuple[list[Job], bool]:
        desc = order == "desc"
        jobs_key = self.key("jobs")
        if after is not None:
            seq = self.redis.zscore(jobs_key, after)
            if seq is None:
                return [], False
            lo, hi = ("-inf", f"({int(seq)}") if desc else (f"({int(seq)}", "+inf")
        else:
            lo, hi = "-inf", "+inf"
        if desc:
            ids = self.redis.zrevrangebyscore(jobs_key, hi, lo, start=0, num=limit + 1)
        else:
            ids = self.redis.zrangebyscore(jobs_key, lo, hi, start=0, num=limit + 1)
        pipe = self.redis.pipeline(transaction=False)
        for i in ids:
            pipe.execute_command("HGETALL", self._job_key(i.decode()))
        jobs = [j for j in map(_decode, pipe.execute()) if j is not None]
        return jobs[:limit], len(ids) > limit

    def finish(self, job_id, status, ttl_seconds, error_code=None, error_message=None) -> bool:
        if status not in FINISHED:
            raise ValueError(f"not a final status: {status}")
        return bool(self._finish(keys=[self._job_key(job_id)], args=[
            self.prefix, self.worker or "", status, repr(time.time()), repr(float(ttl_seconds)), error_code or "",
            error_message or ""]))

    def delete(self, job_id: str) -> Job | None:
        return _decode(self._delete(keys=[self._job_key(job_id)], args=[self.prefix]))

    def expired(self, now: float) -> list[str]:
        return [i.decode() for i in self.redis.zrangebyscore(self.key("expiry"), "-inf", now)]

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in (*ACTIVE, *FINISHED)}
        out.update({k.decode(): int(v) for k, v in self.redis.hgetall(self.key("counts")).items()})
        return out

    def statuses(self, job_ids: list[str]) -> list[str | None]:
        """The status of each job (None: no record), in one round trip: the worker's per-step look."""
        pipe = self.redis.pipeline(transaction=False)
        for i in job_ids:
            pipe.hget(self._job_key(i), "status")
        return [None if s is None else s.decode() for s in pipe.execute()]

    # -- worker side ---------------------------------------------------------------------------
    def _streams(self) -> list[str]:
        prios = self.redis.zrevrange(self.key("priorities"), 0, -1)
        return [self.key("queue", p.decode()) for p in prios]

    def _take(self, stream: str, entry: str, job_id: str, reclaimed: bool) -> Job | None:
        out = self._claim(keys=[self._job_key(job_id)], args=[
            self.prefix, self.worker, entry, stream, repr(time.time()), self.max_attempts, int(reclaimed)])
        if out[0] == b"run":
            return _decode(out[1:])
        if out[0] == b"failed" and self.on_attempts_exceeded is not None:
            failed = self.get(job_id)
            self.on_attempts_exceeded(job_id, {"code": failed.error_code, "message": failed.error_message})
        return None

    def claim_next(self) -> Job | None:
        """A job whose lease expired (another worker died) first, then the next queued one."""
        if self.worker is None:
            raise RuntimeError("only a worker (RedisJobStore(worker=NAME)) claims jobs")
        streams = self._streams()
        idle_ms = int(self.lease_seconds * 1000)
        for stream in streams:
            while True:
                _, claimed, *_ = self.redis.xautoclaim(stream, GROUP, self.worker, idle_ms, "0-0", count=1)
                if not claimed:
                    break
                entry, fields = claimed[0]
                job = self._take(stream, entry.decode(), fields[b"id"].decode(), reclaimed=True)
                if job is not None:
                    return job
        for stream in streams:
            while True:
                got = self.redis.xreadgroup(GROUP, self.worker, {stream: ">"}, count=1)
                if not got or not got[0][1]:
                    break
                entry, fields = got[0][1][0]
                job = self._take(stream, entry.decode(), fields[b"id"].decode(), reclaimed=False)
                if job is not None:
                    return job
        return None

    def in_progress(self) -> list[Job]:
        """Jobs this worker name still holds (it restarted before its leases expired): taken
        back at once, each counting as an attempt."""
        if self.worker is None:
            return []
        jobs = []
        for stream in self._streams():
            for p in self.redis.xpending_range(stream, GROUP, "-", "+", 1000, consumername=self.worker):
                entry = p["message_id"].decode()
                msgs = self.redis.xrange(stream, entry, entry)
                if not msgs:
                    self.redis.xack(stream, GROUP, entry)
                    continue
                job = self._take(stream, entry, msgs[0][1][b"id"].decode(), reclaimed=False)
                if job is not None:
                    jobs.append(job)
        return jobs

    def renew(self, job_ids: list[str]) -> list[str]:
        """Renew this worker's leases; the ids whose lease is no longer ours (lost)."""
        lost = []
        for job_id in job_ids:
            if not self._renew(keys=[self._job_key(job_id)], args=[self.prefix, self.worker]):
                lost.append(job_id)
        return lost

    def set_progress(self, job_id: str, blocks_completed: int) -> bool:
        return bool(self._progress(keys=[self._job_key(job_id)],
                                   args=[self.prefix, self.worker or "", blocks_completed]))

    # -- cluster view (for /metrics) -----------------------------------------------------------
    def leases(self) -> dict[str, int]:
        """Running jobs per worker, as the consumer group's pending lists hold them."""
        out: dict[str, int] = {}
        for stream in self._streams():
            try:
                summary = self.redis.xpending(stream, GROUP)
            except Exception:  # noqa: BLE001 - a stream without its group yet
                continue
            for c in summary.get("consumers") or ():
                name = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
                out[name] = out.get(name, 0) + int(c["pending"])
        return out

    def stats(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in self.redis.hgetall(self.key("stats")).items()}

    def close(self) -> None:
        self.redis.close()

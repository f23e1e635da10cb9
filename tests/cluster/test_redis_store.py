"""RedisJobStore against a real redis-server, what only the cluster's queue has: leases, reclaim of a
dead worker's job, the attempt limit, ownership of a worker's writes, persistence across a Redis
restart. What both backends share (bound, priority then FIFO, paging, progress, cancel, delete,
expiry) is the records contract in tests/contracts/test_job_records.py."""
import time

from sana_serve.server.cluster.store import RedisJobStore
from sana_serve.server.jobs import Job, new_job_id


def job(priority=0, prompt="a red circle moving right on a black background") -> Job:
    return Job(id=new_job_id(), model="shapes-tiny", prompt=prompt, seconds=2.0, size="64x64", seed=1,
               num_blocks=1, priority=priority)


def stores(url, lease=0.3, attempts=3):
    api = RedisJobStore(url)
    a = RedisJobStore(url, worker="worker-a", lease_seconds=lease, max_attempts=attempts)
    b = RedisJobStore(url, worker="worker-b", lease_seconds=lease, max_attempts=attempts)
    return api, a, b


def test_lease_renewal_reclaim_and_ownership(redis_server):
    api, a, b = stores(redis_server.url, lease=0.5)
    j = api.create(job(), max_queued=8)
    assert a.claim_next().id == j.id
    assert a.set_progress(j.id, 1)
    # While a renews, b finds nothing to take.
    for _ in range(4):
        time.sleep(0.2)
        assert a.renew([j.id]) == []
        assert b.claim_next() is None
    time.sleep(0.7)  # a stops renewing (it died): the lease expires
    taken = b.claim_next()
    assert taken is not None and taken.id == j.id and taken.blocks_completed == 1
    assert api.stats()["reclaims"] == 1
    assert api.leases() == {"worker-a": 0, "worker-b": 1} or api.leases().get("worker-b") == 1
    # a comes back: its lease is gone, and its writes are refused.
    assert a.renew([j.id]) == [j.id]
    assert not a.set_progress(j.id, 2)
    assert not a.finish(j.id, "completed", 60)
    assert b.set_progress(j.id, 2) and b.finish(j.id, "completed", 60)
    done = api.get(j.id)
    assert done.status == "completed" and done.blocks_completed == 2 and done.expires_at > time.time()
    assert not b.finish(j.id, "completed", 60)  # exactly once
    assert b.claim_next() is None and a.claim_next() is None
    assert api.expired(time.time() + 61) == [j.id]


def test_attempt_limit_fails_the_job_clearly(redis_server):
    api, a, b = stores(redis_server.url, lease=0.2, attempts=2)
    j = api.create(job(), max_queued=8)
    assert a.claim_next().id == j.id  # attempt 1; a dies
    time.sleep(0.3)
    assert b.claim_next().id == j.id  # attempt 2; b dies too
    time.sleep(0.3)
    assert a.claim_next() is None  # a third claim exceeds the limit: failed, not run
    failed = api.get(j.id)
    assert failed.status == "failed" and failed.error_code == "worker_lost"
    assert "stopped 2 times" in failed.error_message
    assert api.stats()["attempts_exceeded"] == 1 and api.counts()["failed"] == 1
    assert api.counts()["in_progress"] == 0


def test_cancel_delete_and_restart_keep_accepted_jobs(redis_server):
    api, a, _ = stores(redis_server.url)
    keep, cancel, gone, running = (api.create(job(), max_queued=8) for _ in range(4))
    assert a.claim_next().id == keep.id
    assert api.finish(cancel.id, "cancelled", 60, "cancelled", "by the client")
    assert api.delete(gone.id).id == gone.id and api.get(gone.id) is None
    assert api.statuses([keep.id, cancel.id, gone.id]) == ["in_progress", "cancelled", None]
    redis_server.restart()  # SIGKILL; the append-only file brings everything back
    api2, a2, _ = stores(redis_server.url)
    assert api2.get(keep.id).status == "in_progress" and api2.get(running.id).status == "queued"
    assert a2.claim_next().id == running.id  # the cancelled and deleted ones are skipped
    assert a2.claim_next() is None
    # The same worker name, restarted, takes back what it holds (both count as a new attempt).
    back = a2.in_progress()
    assert sorted(j.id for j in back) == sorted([keep.id, running.id])
    assert api2.redis.hget(f"sana:job:{keep.id}", "attempts") == b"2"

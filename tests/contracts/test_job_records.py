"""The job records and the work queue, one contract for both backends (SQLite in one process; Redis
shared by API nodes and workers): create under a bound, get, list with after/limit/order, claim
(priority, then FIFO), progress, renew, finish, statuses, cancel, delete, expiry, restart.

`side.records` is what an API node holds; `side.worker(name)` what a worker holds (the same store
in the embedded server). What only the cluster has (leases lost and reclaimed, the attempt limit,
a Redis restart) is in tests/cluster/test_redis_store.py."""
import threading
import time

import pytest

from tests.contracts.backends import Job, QueueFull, new_job_id


def job(priority=0, **kw) -> Job:
    return Job(id=new_job_id(), model="shapes-tiny", prompt="a red circle moving right on a black background",
               seconds=2.0, size="64x64", seed=1, num_blocks=4, priority=priority, **kw)


def test_create_and_get_round_trip_every_field(queue_side):
    records = queue_side.records
    full = job(priority=3, negative_prompt="blurry", num_inference_steps=2, guidance_scale=4.5)
    plain = job()
    assert records.create(full, max_queued=8) is full and records.create(plain, max_queued=8) is plain
    for original in (full, plain):
        got = records.get(original.id)
        for name in ("id", "model", "prompt", "negative_prompt", "seconds", "size", "seed", "num_blocks",
                     "num_inference_steps", "guidance_scale", "priority", "created_at"):
            assert getattr(got, name) == getattr(original, name), name
        assert got.status == "queued" and got.blocks_completed == 0 and got.progress == 0
        assert got.started_at is None and got.completed_at is None and got.expires_at is None
        assert got.error_code is None and got.error_message is None
    assert records.get(new_job_id()) is None
    assert records.counts()["queued"] == 2


def test_queue_bound_is_atomic_under_concurrent_submits(queue_side):
    records = queue_side.records
    accepted, rejected = [], []

    def submit():
        try:
            accepted.append(records.create(job(), max_queued=5).id)
        except QueueFull as e:
            rejected.append(e.queued)

    threads = [threading.Thread(target=submit) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(accepted) == 5 and rejected == [5] * 35 and records.counts()["queued"] == 5
    # A running job no longer counts against the bound.
    assert queue_side.worker().claim_next() is not None
    records.create(job(), max_queued=5)
    with pytest.raises(QueueFull):
        records.create(job(), max_queued=5)


def test_claim_takes_priority_then_fifo_once_each(queue_side):
    records, worker = queue_side.records, queue_side.worker()
    low1, high1, low2, high2, mid = job(0), job(5), job(0), job(5), job(2)
    for j in (low1, high1, low2, high2, mid):
        records.create(j, max_queued=10)
    claimed = [worker.claim_next() for _ in range(5)]
    assert [j.id for j in claimed] == [high1.id, high2.id, mid.id, low1.id, low2.id]
    assert all(j.status == "in_progress" for j in claimed)
    assert worker.claim_next() is None
    assert records.get(low1.id).status == "in_progress" and records.get(low1.id).started_at is not None
    assert records.counts()["queued"] == 0 and records.counts()["in_progress"] == 5


def test_list_pages_with_after_limit_and_order(queue_side):
    records = queue_side.records
    ids = [records.create(job(), 100).id for _ in range(5)]
    page, more = records.list(None, 2, "asc")
    assert [j.id for j in page] == ids[:2] and more
    page, more = records.list(ids[1], 2, "asc")
    assert [j.id for j in page] == ids[2:4] and more
    page, more = records.list(ids[3], 10, "asc")
    assert [j.id for j in page] == ids[4:] and not more
    page, more = records.list(None, 3, "desc")
    assert [j.id for j in page] == ids[::-1][:3] and more
    page, more = records.list(ids[3], 10, "desc")
    assert [j.id for j in page] == ids[:3][::-1] and not more
    page, more = records.list(None, 5, "asc")
    assert [j.id for j in page] == ids and not more  # exactly `limit` left: no more
    assert records.list(ids[4], 10, "asc") == ([], False)
    assert records.list(new_job_id(), 10, "asc") == ([], False)  # an unknown cursor
    records.delete(ids[2])
    assert [j.id for j in records.list(ids[1], 10, "asc")[0]] == ids[3:]  # a deleted job leaves the list


def test_progress_renew_finish_and_statuses(queue_side):
    records, worker = queue_side.records, queue_side.worker()
    j = records.create(job(), 8)
    other = records.create(job(), 8)
    assert not worker.set_progress(j.id, 1)  # not running yet
    assert worker.claim_next().id == j.id
    assert worker.renew([j.id]) == []  # held: nothing lost
    assert worker.set_progress(j.id, 1) and worker.set_progress(j.id, 3)
    running = records.get(j.id)
    assert running.blocks_completed == 3 and running.progress == 75 and running.status == "in_progress"
    assert worker.statuses([j.id, other.id, new_job_id()]) == ["in_progress", "queued", None]

    with pytest.raises(ValueError):
        worker.finish(j.id, "in_progress", 60)  # not a final status
    before = time.time()
    assert worker.finish(j.id, "completed", 60)
    done = records.get(j.id)
    assert done.status == "completed" and done.progress == 100 and done.blocks_completed == 3
    assert before <= done.completed_at <= time.time() and done.expires_at == pytest.approx(done.completed_at + 60)
    assert not worker.finish(j.id, "completed", 60)  # exactly once
    assert not worker.finish(j.id, "failed", 60, "x", "y")
    assert not worker.set_progress(j.id, 4)  # a finished job takes no more progress
    assert worker.statuses([j.id]) == ["completed"]
    assert records.counts()["completed"] == 1 and records.counts()["in_progress"] == 0


def test_failed_jobs_keep_their_error(queue_side):
    records, worker = queue_side.records, queue_side.worker()
    j = records.create(job(), 8)
    worker.claim_next()
    assert worker.finish(j.id, "failed", 60, "engine_error", "the engine failed: boom")
    failed = records.get(j.id)
    assert (failed.status, failed.error_code, failed.error_message) == ("failed", "engine_error",
                                                                        "the engine failed: boom")
    assert records.counts()["failed"] == 1


def test_cancel_a_queued_and_a_running_job(queue_side):
    records, worker = queue_side.records, queue_side.worker()
    running, queued, after = (records.create(job(), 8) for _ in range(3))
    assert worker.claim_next().id == running.id
    assert records.finish(queued.id, "cancelled", 60, "cancelled", "cancelled by the client")
    assert records.finish(running.id, "cancelled", 60, "cancelled", "cancelled by the client")
    assert worker.statuses([running.id, queued.id]) == ["cancelled", "cancelled"]  # what the worker looks at
    # The worker's writes to the cancelled job are refused; the cancelled queued one is never run.
    assert not worker.set_progress(running.id, 1)
    assert not worker.finish(running.id, "completed", 60)
    assert worker.claim_next().id == after.id and worker.claim_next() is None
    assert not records.finish(queued.id, "cancelled", 60)  # already final
    c = records.get(queued.id)
    assert c.status == "cancelled" and c.error_code == "cancelled" and c.expires_at is not None
    assert records.counts()["cancelled"] == 2 and records.counts()["queued"] == 0


def test_delete_removes_the_record_everywhere(queue_side):
    records, worker = queue_side.records, queue_side.worker()
    running, queued, done = (records.create(job(), 8) for _ in range(3))
    assert worker.claim_next().id == running.id
    records.finish(done.id, "completed", 60)
    counts = records.counts()
    for j in (queued, running, done):
        gone = records.delete(j.id)
        assert gone is not None and gone.id == j.id and gone.prompt == j.prompt
        assert records.get(j.id) is None and records.delete(j.id) is None
    assert records.delete(new_job_id()) is None
    assert worker.claim_next() is None  # the deleted queued job is not run
    assert not worker.set_progress(running.id, 1) and not worker.finish(running.id, "completed", 60)
    assert worker.statuses([running.id, queued.id]) == [None, None]
    assert records.list(None, 10, "asc") == ([], False)
    assert records.expired(time.time() + 3600) == []
    after = records.counts()
    assert after["queued"] == counts["queued"] - 1 and after["in_progress"] == counts["in_progress"] - 1
    assert after["completed"] == counts["completed"] - 1


def test_expiry(queue_side):
    records = queue_side.records
    short, long, active = (records.create(job(), 8) for _ in range(3))
    assert records.finish(short.id, "completed", 0.05) and records.finish(long.id, "cancelled", 3600)
    assert records.expired(time.time()) == []
    time.sleep(0.1)
    assert records.expired(time.time()) == [short.id]
    assert sorted(records.expired(time.time() + 3601)) == sorted([short.id, long.id])  # never an active job
    records.delete(short.id)
    assert records.expired(time.time()) == []


def test_a_restart_keeps_records_and_gives_a_worker_back_its_jobs(queue_side):
    records, worker = queue_side.records, queue_side.worker("worker-a")
    held = [records.create(job(), 8) for _ in range(2)]
    waiting = records.create(job(), 8)
    finished = records.create(job(), 8)
    records.finish(finished.id, "completed", 60)
    assert [worker.claim_next().id for _ in range(2)] == [j.id for j in held]
    worker.set_progress(held[0].id, 2)

    restarted = queue_side.restart()  # fresh objects over the same data (a process restart)
    records2, worker2 = restarted.records, restarted.worker("worker-a")
    assert records2.get(held[0].id).blocks_completed == 2 and records2.get(finished.id).status == "completed"
    assert [j.id for j in records2.list(None, 10, "asc")[0]] == [held[0].id, held[1].id, waiting.id, finished.id]
    back = worker2.in_progress()  # what it was running when it stopped: to be resumed
    assert sorted(j.id for j in back) == sorted(j.id for j in held)
    assert {j.id: j.blocks_completed for j in back}[held[0].id] == 2
    assert worker2.claim_next().id == waiting.id and worker2.claim_next() is None
    assert worker2.set_progress(held[1].id, 1) and worker2.finish(held[1].id, "completed", 60)

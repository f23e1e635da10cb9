"""SqliteJobStore: bounded queue under concurrency, priority then FIFO, cursor paging, expiry."""
import threading
import time

import pytest

from sana_serve.server.embedded.files import LocalJobFiles as JobFiles
from sana_serve.server.embedded.store import SqliteJobStore
from sana_serve.server.jobs import Job, QueueFull, new_job_id


def job(priority=0, **kw):
    return Job(id=new_job_id(), model="m", prompt="p", seconds=1.0, size="64x64", seed=0, num_blocks=1,
               priority=priority, **kw)


def test_queue_bound_is_atomic_under_concurrent_submits(tmp_path):
    store = SqliteJobStore(tmp_path / "jobs.db")
    accepted, rejected = [], []

    def submit():
        try:
            accepted.append(store.create(job(), max_queued=5).id)
        except QueueFull:
            rejected.append(1)

    threads = [threading.Thread(target=submit) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(accepted) == 5 and len(rejected) == 35 and store.counts()["queued"] == 5


def test_priority_then_fifo_and_restart_view(tmp_path):
    store = SqliteJobStore(tmp_path / "jobs.db")
    a, b, c, d = job(), job(priority=5), job(), job(priority=5)
    for j in (a, b, c, d):
        store.create(j, 10)
    order = [store.claim_next().id for _ in range(4)]
    assert order == [b.id, d.id, a.id, c.id] and store.claim_next() is None
    store.close()
    reopened = SqliteJobStore(tmp_path / "jobs.db")  # what a restarted process sees
    assert [j.id for j in reopened.in_progress()] == [a.id, b.id, c.id, d.id]
    assert reopened.set_progress(a.id, 1) and reopened.get(a.id).blocks_completed == 1
    assert reopened.finish(a.id, "completed", ttl_seconds=0.01)
    assert not reopened.set_progress(a.id, 1)  # finished jobs take no more progress
    time.sleep(0.02)
    assert reopened.expired(time.time()) == [a.id]
    assert reopened.delete(a.id).id == a.id and reopened.get(a.id) is None and reopened.delete(a.id) is None


def test_list_cursor(tmp_path):
    store = SqliteJobStore(tmp_path / "jobs.db")
    ids = [store.create(job(), 100).id for _ in range(5)]
    page, more = store.list(None, 2, "asc")
    assert [j.id for j in page] == ids[:2] and more
    page, more = store.list(ids[1], 10, "asc")
    assert [j.id for j in page] == ids[2:] and not more
    page, more = store.list(ids[3], 10, "desc")
    assert [j.id for j in page] == ids[:3][::-1] and not more


def test_job_files_reject_unsafe_ids_and_checkpoint_atomically(tmp_path):
    files = JobFiles(tmp_path)
    for bad in ("../x", "video_../../etc", "video_" + "g" * 32, "video_" + "0" * 31, "", None):
        with pytest.raises(ValueError):
            files.dir(bad)
    vid = new_job_id()
    files.save_checkpoint(vid, {"next_index": 3})
    assert files.load_checkpoint(vid) == {"next_index": 3}
    assert [p.name for p in files.dir(vid).iterdir()] == ["rollout.ckpt"]  # no temporary file left behind
    files.remove(vid)
    assert files.load_checkpoint(vid) is None


def test_expired_and_orphaned_jobs_are_removed(tmp_path):
    from sana_serve.server.app import remove_expired
    from sana_serve.server.embedded.files import remove_orphans

    class Idle:  # a runner whose worker runs none of these jobs
        def cancel(self, job, delete):
            if delete:
                files.remove(job.id)
            return None

    store, files = SqliteJobStore(tmp_path / "jobs.db"), JobFiles(tmp_path)
    old, fresh, running = job(), job(), job()
    for j in (old, fresh, running):
        store.create(j, 10)
        files.save_checkpoint(j.id, {})
    store.finish(old.id, "completed", ttl_seconds=0)
    store.finish(fresh.id, "completed", ttl_seconds=3600)
    time.sleep(0.01)
    assert remove_expired(store, Idle()) == [old.id]
    assert store.get(old.id) is None and not files.dir(old.id).exists()
    assert files.dir(fresh.id).exists() and files.dir(running.id).exists()
    orphan = new_job_id()
    files.save_checkpoint(orphan, {})
    assert remove_orphans(store, files) == [orphan] and not files.dir(orphan).exists()

"""What only the embedded backend does with its data directory: checkpoints replaced atomically in
place, and the sweep of expired jobs and of directories no record owns. The job records and files
contracts both backends share are in tests/contracts/."""
import time

from sana_serve.server.embedded.files import LocalJobFiles as JobFiles
from sana_serve.server.embedded.store import SqliteJobStore
from sana_serve.server.jobs import Job, new_job_id


def job(priority=0, **kw):
    return Job(id=new_job_id(), model="m", prompt="p", seconds=1.0, size="64x64", seed=0, num_blocks=1,
               priority=priority, **kw)


def test_job_files_checkpoint_atomically(tmp_path):
    files = JobFiles(tmp_path)
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

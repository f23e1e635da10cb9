"""The worker in-process with the real engine: failures stay contained, priority order, sessions."""
import threading
import time

import pytest

from sana_serve.engine.rollout import GenerationRequest
from sana_serve.server.config import ServerSettings
from sana_serve.server.outputs import JobOutput
from sana_serve.server.embedded.files import LocalJobFiles
from sana_serve.server.embedded.store import SqliteJobStore
from sana_serve.server.jobs import Job, new_job_id
from sana_serve.server.worker import Busy, Worker

PROMPT = "a green square moving up on a white background"


@pytest.fixture
def make_worker(tmp_path, engine):
    workers = []

    def make(output_factory=None, **settings):
        settings = ServerSettings(data_dir=tmp_path, **settings)
        store, files = SqliteJobStore(tmp_path / "jobs.db"), LocalJobFiles(tmp_path)
        if output_factory is not None:  # the job files write through this JobOutput class
            files.open_output = lambda job_id, *geometry: output_factory(files.dir(job_id), *geometry)
        w = Worker(settings, store, files, lambda: engine)
        workers.append(w)
        return w

    yield make
    for w in workers:
        w.stop()


def submit(worker, prompt=PROMPT, seconds=1.0, priority=0):
    job = Job(id=new_job_id(), model="shapes-tiny", prompt=prompt, seconds=seconds, size="64x64", seed=1,
              num_blocks=1, num_inference_steps=1, priority=priority)
    worker.queue.create(job, 100)
    worker.notify()
    return job.id


def wait_finished(store, ids, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = [store.get(i) for i in ids]
        if all(j.status in ("completed", "failed", "cancelled") for j in jobs):
            return jobs
        time.sleep(0.05)
    raise AssertionError([store.get(i) for i in ids])


class FailingOutput(JobOutput):
    """A disk that refuses one job's blocks (the engine is real)."""

    def add_block(self, block):
        if "fail" in str(self.dir.name) or (self.dir / "FAIL").exists():
            raise OSError("No space left on device")
        return super().add_block(block)


def test_a_failing_job_is_marked_failed_and_others_complete(make_worker):
    w = make_worker(output_factory=FailingOutput, max_batch=2)
    bad = submit(w)
    w.files.dir(bad).mkdir(parents=True)
    (w.files.dir(bad) / "FAIL").touch()
    good = submit(w)
    w.start()
    bad_job, good_job = wait_finished(w.queue, [bad, good])
    assert bad_job.status == "failed" and bad_job.error_code == "output_failed"
    assert "No space left on device" in bad_job.error_message
    assert good_job.status == "completed" and (w.files.dir(good) / "video.mp4").is_file()
    assert w.active_count() == {"job": 0, "session": 0}


def test_priority_runs_first_then_fifo(make_worker):
    w = make_worker(max_batch=1)
    low1, low2 = submit(w), submit(w)
    high = submit(w, priority=5)
    w.start()
    jobs = wait_finished(w.queue, [low1, low2, high])
    started = sorted(jobs, key=lambda j: j.started_at)
    assert [j.id for j in started] == [high, low1, low2]


def test_realtime_session_follows_prompt_updates_and_stops(make_worker):
    w = make_worker(max_batch=2, max_sessions=1)
    w.start()
    assert w.ready.wait(60)
    blocks, ended = [], []
    got_two = threading.Event()

    def on_block(block):
        blocks.append(block)
        if len(blocks) >= 2:
            got_two.set()

    request = GenerationRequest(PROMPT, seconds=None, seed=3, num_inference_steps=1)
    handle = w.start_session(request, on_block, ended.append)
    with pytest.raises(Busy):
        w.start_session(request, on_block, ended.append)
    with pytest.raises(ValueError):
        handle.update_prompt("")
    handle.update_prompt("a red circle moving left on a black background")
    assert got_two.wait(120)
    handle.stop()
    assert handle.ended.wait(30) and ended == [None]
    assert [b.index for b in blocks] == list(range(len(blocks))) and len(blocks) >= 2
    assert blocks[1].frame_start == blocks[0].frame_count
    assert w.active_count()["session"] == 0
    # A job submitted meanwhile still runs.
    assert wait_finished(w.queue, [submit(w)])[0].status == "completed"

"""Same seed, same video through the server's worker: two jobs submitted together finish with
the MP4 that one of them gives alone (decoded frames equal), with the real engine in-process."""
import time

import numpy as np

from sana_serve.engine.video import decode_video
from sana_serve.server.config import ServerSettings
from sana_serve.server.embedded.files import LocalJobFiles as JobFiles
from sana_serve.server.embedded.store import SqliteJobStore
from sana_serve.server.jobs import Job, new_job_id
from sana_serve.server.worker import Worker

RED = "a red circle moving right on a black background"


def test_two_jobs_submitted_together_give_the_mp4_of_one_alone(tmp_path, engine):
    """Server level: the worker with the real engine; the finished MP4s decode to equal frames."""
    def run(directory, jobs):
        settings = ServerSettings(data_dir=directory, max_batch=4, keep_frames=True)
        store, files = SqliteJobStore(directory / "jobs.db"), JobFiles(directory)
        w = Worker(settings, store, files, lambda: engine)
        try:
            ids = []
            for prompt, seed, guidance in jobs:
                job = Job(id=new_job_id(), model="shapes-tiny", prompt=prompt, seconds=4.0, size="64x64", seed=seed,
                          num_blocks=2, num_inference_steps=2, guidance_scale=guidance)
                store.create(job, 100)
                ids.append(job.id)
            w.start()
            w.notify()
            deadline = time.monotonic() + 120
            while not all(store.get(i).status in ("completed", "failed", "cancelled") for i in ids):
                assert time.monotonic() < deadline, [store.get(i) for i in ids]
                time.sleep(0.05)
            assert all(store.get(i).status == "completed" for i in ids), [store.get(i) for i in ids]
            return [decode_video(files.dir(i) / "video.mp4") for i in ids]
        finally:
            w.stop()

    (alone,) = run(tmp_path / "alone", [(RED, 9, 1.0)])
    together = run(tmp_path / "together", [(RED, 9, 1.0), ("a purple square moving left on a white background", 2, 3.0)])
    assert alone.shape == (64, 64, 64, 3)
    np.testing.assert_array_equal(together[0], alone)


def test_one_switch_turns_batch_invariance_off():
    import argparse

    from sana_serve.server.config import add_serve_arguments, settings_from_args

    p = argparse.ArgumentParser()
    add_serve_arguments(p)
    assert settings_from_args(p.parse_args([]), environ={}).batch_invariant is True
    assert settings_from_args(p.parse_args(["--no-batch-invariance"]), environ={}).batch_invariant is False

"""Kill -9 in the middle of a job, restart on the same data dir: the job resumes from its last
checkpointed block and its video is identical to an uninterrupted run with the same seed."""
import numpy as np
import pytest

from sana_serve.engine.video import decode_video
from tests.server.conftest import PROMPT, ServerProcess, finished, wait_for


def raw_frames(data_dir, video_id):
    blocks = sorted((data_dir / "videos" / video_id / "frames").glob("*.npy"))
    return [np.load(p) for p in blocks]


@pytest.mark.processes
def test_kill9_mid_job_then_restart_resumes_identically(tmp_path, test_config):
    # One rollout at a time: the second job is still queued when the process dies.
    srv = ServerProcess(tmp_path / "data", test_config, extra=["--keep-frames", "--max-batch", "1"])
    body = {"prompt": PROMPT, "seconds": 6, "num_inference_steps": 2, "seed": 11}  # 3 blocks
    queued_body = {"prompt": "a blue square moving up on a white background", "seconds": 1,
                   "num_inference_steps": 1, "seed": 4}
    srv.start()
    try:
        with srv.client() as c:
            vid = c.post("/v1/videos", json=body).json()["id"]
            queued = c.post("/v1/videos", json=queued_body).json()["id"]
            v = wait_for(c, vid, lambda v: v["blocks_completed"] >= 1, interval=0.02)
            assert v["status"] == "in_progress" and v["blocks_completed"] < v["num_blocks"] == 3, v
            assert c.get(f"/v1/videos/{queued}").json()["status"] == "queued"
        srv.kill()
        job_dir = srv.data_dir / "videos" / vid
        assert (job_dir / "rollout.ckpt").is_file()  # the checkpoint of the last finished block
        blocks_before = len(raw_frames(srv.data_dir, vid))
        assert 1 <= blocks_before < 3

        srv.start()
        assert srv.saw_not_ready  # /readyz said 503 until the model was loaded
        with srv.client() as c:
            v = wait_for(c, vid, finished, timeout=180)
            assert v["status"] == "completed" and v["progress"] == 100 and v["blocks_completed"] == 3, v
            q = wait_for(c, queued, finished, timeout=180)
            assert q["status"] == "completed", q
            resumed_mp4 = c.get(f"/v1/videos/{vid}/content").content
            assert not (job_dir / "rollout.ckpt").exists()  # dropped once the job completed

            # The same request, uninterrupted, on the same server.
            ref = c.post("/v1/videos", json=body).json()["id"]
            assert wait_for(c, ref, finished, timeout=180)["status"] == "completed"
            ref_mp4 = c.get(f"/v1/videos/{ref}/content").content
            assert len(c.get("/v1/videos").json()["data"]) == 3

        resumed, reference = raw_frames(srv.data_dir, vid), raw_frames(srv.data_dir, ref)
        assert [len(b) for b in resumed] == [len(b) for b in reference] and sum(map(len, resumed)) == 6 * 16
        for k, (a, b) in enumerate(zip(resumed, reference)):
            assert np.array_equal(a, b), f"block {k} differs after the restart"
        decoded, ref_decoded = decode_video(resumed_mp4), decode_video(ref_mp4)
        assert decoded.shape == (96, 64, 64, 3) and np.array_equal(decoded, ref_decoded)
    finally:
        srv.stop()

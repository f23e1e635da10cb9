"""DELETE cancels a running job within one denoising step and frees it; the worker goes on (both deployments)."""
import time


from tests.server.conftest import PROMPT, finished, wait_for


def active_job_rollouts(deployment) -> float:
    for line in deployment.metrics().splitlines():
        if line.startswith('sana_active_rollouts{kind="job"}'):
            return float(line.split()[-1])
    return 0.0


def test_delete_running_job_is_fast_and_others_continue(client, deployment):
    long = client.post("/v1/videos", json={"prompt": PROMPT, "seconds": 6, "num_inference_steps": 2, "seed": 1}).json()
    short = client.post("/v1/videos", json={"prompt": PROMPT, "seconds": 1, "num_inference_steps": 1, "seed": 2}).json()
    wait_for(client, long["id"], lambda v: v["blocks_completed"] >= 1, interval=0.02)  # mid-generation
    start = time.perf_counter()
    r = client.delete(f"/v1/videos/{long['id']}")
    latency = time.perf_counter() - start
    assert r.status_code == 200 and r.json() == {"id": long["id"], "object": "video.deleted", "deleted": True}
    text = deployment.metrics()
    total = next(float(l.split()[-1]) for l in text.splitlines() if l.startswith("sana_engine_step_seconds_sum"))
    count = next(float(l.split()[-1]) for l in text.splitlines() if l.startswith("sana_engine_step_seconds_count"))
    print(f"DELETE of a running job returned after {latency * 1000:.0f} ms (mean engine step {1000 * total / max(count, 1):.0f} ms)")
    assert latency < 10, latency  # the rollout is dropped at the next step boundary (one model call)
    assert client.get(f"/v1/videos/{long['id']}").status_code == 404
    assert client.delete(f"/v1/videos/{long['id']}").status_code == 404
    assert not deployment.job_dir(long["id"]).exists()
    assert wait_for(client, short["id"], finished)["status"] == "completed"
    # The deleted job's slot is free: at once in `serve` (the DELETE cancels in-process), at the
    # worker's next step boundary in the cluster (it reads its jobs' records every step).
    deadline = time.monotonic() + 30
    while active_job_rollouts(deployment) != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert active_job_rollouts(deployment) == 0


def test_cancel_keeps_a_cancelled_record(client):
    v = client.post("/v1/videos", json={"prompt": PROMPT, "seconds": 6, "num_inference_steps": 2, "seed": 3}).json()
    wait_for(client, v["id"], lambda v: v["status"] == "in_progress", interval=0.02)
    r = client.post(f"/v1/videos/{v['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    got = client.get(f"/v1/videos/{v['id']}").json()
    assert got["status"] == "cancelled" and got["error"]["code"] == "cancelled" and got["progress"] < 100
    assert client.get(f"/v1/videos/{v['id']}/content").status_code == 404
    assert client.post(f"/v1/videos/{v['id']}/cancel").status_code == 409
    # A queued job can be cancelled too, and never runs.
    blockers = [client.post("/v1/videos", json={"prompt": PROMPT, "seconds": 2, "num_inference_steps": 2, "seed": i})
                .json()["id"] for i in range(4)]  # fill the batch (max_batch 4)
    queued = client.post("/v1/videos", json={"prompt": PROMPT, "seconds": 1, "num_inference_steps": 1}).json()
    assert client.post(f"/v1/videos/{queued['id']}/cancel").json()["status"] == "cancelled"
    for b in blockers:
        assert wait_for(client, b, finished)["status"] == "completed"
    assert client.get(f"/v1/videos/{queued['id']}").json()["blocks_completed"] == 0

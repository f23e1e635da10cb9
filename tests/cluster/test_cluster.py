"""Two API nodes and two workers (real `sana-serve api` / `sana-serve worker` subprocesses) on a
real redis-server and one shared storage directory.

The kill -9 test compares a reclaimed job's frames with an uninterrupted run of the same request
while the worker that takes it over batches it with other jobs: batch invariance (the default,
engine.rollout.Engine) makes the rows equal whatever they are batched with.
"""
from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest
import websockets

from sana_serve.engine.video import decode_video
from tests.cluster.conftest import Cluster
from tests.server.conftest import PROMPT

PROMPTS = [PROMPT, "a blue square moving up on a white background", "a green triangle moving left on a gray background",
           "a yellow circle moving down on a black background"]


def ws_url(node, video_id: str, from_block: int = 0) -> str:
    return node.url.replace("http", "ws") + f"/v1/videos/{video_id}/stream?from_block={from_block}"


async def read_stream(url: str, stop_after_blocks: int | None = None, timeout: float = 300):
    """(events, concatenated payload bytes, how it ended) of one websocket viewer."""
    events, payload, end = [], b"", None
    async with websockets.connect(url, max_size=None, open_timeout=30) as ws:
        async with asyncio.timeout(timeout):
            while True:
                msg = json.loads(await ws.recv())
                events.append(msg)
                if msg["type"] != "video.block":
                    end = msg
                    break
                payload += await ws.recv()
                if stop_after_blocks is not None and len(events) >= stop_after_blocks:
                    break
    return events, payload, end


def wait_job(node, video_id: str, predicate, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    with node.client() as c:
        while time.monotonic() < deadline:
            r = c.get(f"/v1/videos/{video_id}")
            assert r.status_code == 200, f"{r.status_code} {r.text}\n{node.log_tail()}"
            v = r.json()
            if predicate(v):
                return v
            time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {video_id}: {v}")


def done(v):
    return v["status"] in ("completed", "failed", "cancelled")


@pytest.fixture
def cluster(tmp_path, redis_server, cluster_config):
    c = Cluster(tmp_path, redis_server.url, cluster_config, lease_seconds=3.0)
    yield c
    c.stop()


def test_forty_jobs_and_eight_viewers_over_two_api_nodes(cluster):
    api = [cluster.add("api", "api-a"), cluster.add("api", "api-b", ["--max-queued", "64"])]
    api[0] = api[0]
    workers = [cluster.add("worker", f"worker-{i}", ["--max-batch", "4"]) for i in range(2)]
    for n in (*workers, *api):
        n.wait_ready()
    t0 = time.monotonic()
    ids, statuses = [], []
    with api[0].client() as ca, api[1].client() as cb:
        for i in range(40):
            c = (ca, cb)[i % 2]
            r = c.post("/v1/videos", json={"prompt": PROMPTS[i % 4], "seconds": 1, "num_inference_steps": 1,
                                           "seed": i, "priority": i % 3})
            statuses.append(r.status_code)
            if r.status_code == 200:
                ids.append(r.json()["id"])
    assert all(s in (200, 429) for s in statuses), statuses
    assert len(ids) >= 32, statuses  # api-a's queue bound is 64 by default; a few 429s at most

    async def viewers():
        # 8 viewers, 4 per API node, each on a job created through the other node.
        return await asyncio.gather(*(read_stream(ws_url(api[(k + 1) % 2], ids[k * 4])) for k in range(8)))

    results = asyncio.run(viewers())
    finals = [wait_job(api[k % 2], vid, done) for k, vid in enumerate(ids)]
    elapsed = time.monotonic() - t0
    assert all(v["status"] == "completed" and v["progress"] == 100 for v in finals), [v["status"] for v in finals]
    for events, payload, end in results:
        assert end["type"] == "video.completed"
        assert [e["index"] for e in events if e["type"] == "video.block"] == [0]
        assert decode_video(payload).shape == (16, 64, 64, 3)
    # Exactly once: every job was claimed once (no lease expired), each completion counted once.
    with api[1].client() as c:
        listing = c.get("/v1/videos", params={"limit": 100}).json()["data"]
        metrics_text = c.get("/metrics").text
        mp4 = c.get(f"/v1/videos/{ids[-1]}/content")
    assert len(listing) == len(ids) and {v["id"] for v in listing} == set(ids)
    assert mp4.status_code == 200 and decode_video(mp4.content).shape == (16, 64, 64, 3)
    assert "sana_cluster_workers 2.0" in metrics_text and 'sana_worker_jobs{worker="worker-0"}' in metrics_text
    assert "sana_job_reclaims_total 0.0" in metrics_text
    done_per_worker = [sum("job completed" in line for line in w.log_tail(10**7).splitlines()) for w in workers]
    assert sum(done_per_worker) == len(ids) and min(done_per_worker) > 0, done_per_worker
    for n in (*api, *workers):
        assert "Traceback" not in n.log_tail(10**7), n.log_tail()
    print(f"\n40 submissions ({len(ids)} accepted), 8 viewers: {elapsed:.1f}s; per worker {done_per_worker}")


def test_kill9_worker_mid_job_is_finished_by_the_other_identically(cluster):
    import redis

    api = cluster.add("api", "api-a")
    workers = {f"worker-{i}": cluster.add("worker", f"worker-{i}", ["--max-batch", "4", "--keep-frames"])
               for i in (1, 2)}
    for n in (api, *workers.values()):
        n.wait_ready()
    body = {"prompt": PROMPT, "seconds": 6, "num_inference_steps": 2, "seed": 11}  # 3 blocks
    with api.client() as c:
        r = c.post("/v1/videos", json=body)
        assert r.status_code == 200, r.text + api.log_tail()
        vid = r.json()["id"]
    v = wait_job(api, vid, lambda v: v["blocks_completed"] >= 1, timeout=120)
    assert v["status"] == "in_progress" and v["blocks_completed"] < 3
    owner = redis.Redis.from_url(cluster.redis_url).hget(f"sana:job:{vid}", "worker").decode()
    w1 = workers.pop(owner)
    (w2,) = workers.values()
    w1.kill()
    killed_at = time.monotonic()
    with api.client() as c:  # other work for the survivor: the reclaimed job resumes inside a batch
        others = [c.post("/v1/videos", json={**body, "prompt": p, "seed": s}).json()["id"]
                  for p, s in (("a blue square moving left on a black background", 3), (PROMPT, 12))]
    v = wait_job(api, vid, done)
    reclaim_s = time.monotonic() - killed_at
    assert v["status"] == "completed" and v["blocks_completed"] == 3, v
    assert "job resumed at block" in w2.log_tail(10**6)
    for other in others:
        assert wait_job(api, other, done)["status"] == "completed"
    with api.client() as c:
        resumed = decode_video(c.get(f"/v1/videos/{vid}/content").content)
        ref = c.post("/v1/videos", json=body).json()["id"]
        wait_job(api, ref, done)
        reference = decode_video(c.get(f"/v1/videos/{ref}/content").content)
        assert "sana_job_reclaims_total 1.0" in c.get("/metrics").text
    assert resumed.shape == (96, 64, 64, 3) and np.array_equal(resumed, reference)
    storage = cluster.tmp / "storage"
    for k in range(3):  # the raw frames of every block, whoever made it
        a, b = (np.load(next((storage / i / "frames").glob(f"{k:06d}.npy"))) for i in (vid, ref))
        assert np.array_equal(a, b), f"block {k} differs after the hand-over"
    print(f"\nkilled worker's job finished by the other {reclaim_s:.1f}s after the kill (lease 3 s)")


def test_viewer_moves_to_the_other_api_node_and_redis_restart_loses_nothing(cluster, redis_server):
    api = [cluster.add("api", "api-a"), cluster.add("api", "api-b")]
    w = cluster.add("worker", "worker-1", ["--max-batch", "2"])
    for n in (*api, w):
        n.wait_ready()
    body = {"prompt": PROMPT, "seconds": 6, "num_inference_steps": 2, "seed": 3}
    with api[0].client() as c:
        r = c.post("/v1/videos", json=body)
        assert r.status_code == 200, r.text + api.log_tail()
        vid = r.json()["id"]
    events, first, _ = asyncio.run(read_stream(ws_url(api[0], vid), stop_after_blocks=1))
    api[0].kill()  # the node the viewer was on dies
    rest, more, end = asyncio.run(read_stream(ws_url(api[1], vid, from_block=len(events))))
    assert end["type"] == "video.completed"
    assert [e["index"] for e in events + rest if e["type"] == "video.block"] == [0, 1, 2]
    # The resumed stream starts with the init segment: the two pieces play as one video each.
    whole = np.concatenate([decode_video(first), decode_video(more)])
    with api[1].client() as c:
        assert np.array_equal(whole, decode_video(c.get(f"/v1/videos/{vid}/content").content))

        # Queue jobs, restart Redis (SIGKILL; append-only file), and every accepted job completes.
        accepted = [c.post("/v1/videos", json={"prompt": PROMPTS[i % 4], "seconds": 2, "num_inference_steps": 1,
                                               "seed": 100 + i}).json()["id"] for i in range(6)]
        redis_server.restart()
        late = c.post("/v1/videos", json={"prompt": PROMPT, "seconds": 1, "num_inference_steps": 1, "seed": 7})
        assert late.status_code == 200, late.text
        accepted.append(late.json()["id"])
    for vid in accepted:
        assert wait_job(api[1], vid, done)["status"] == "completed"


def test_cancel_delete_and_realtime_reach_the_worker_from_any_api_node(cluster):
    api = [cluster.add("api", "api-a"), cluster.add("api", "api-b")]
    w = cluster.add("worker", "worker-1", ["--max-batch", "3"])
    for n in (*api, w):
        n.wait_ready()
    long = {"prompt": PROMPT, "seconds": 6, "num_inference_steps": 2}
    with api[0].client() as a, api[1].client() as b:
        keep, gone = (a.post("/v1/videos", json={**long, "seed": s}).json()["id"] for s in (1, 2))
        wait_job(api[0], keep, lambda v: v["status"] == "in_progress")
        wait_job(api[0], gone, lambda v: v["status"] == "in_progress")
        t0 = time.monotonic()
        r = b.post(f"/v1/videos/{keep}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        assert b.delete(f"/v1/videos/{gone}").status_code == 200
        assert a.get(f"/v1/videos/{gone}").status_code == 404
        deadline = time.monotonic() + 30
        while w.log_tail(10**6).count("job cancelled") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        stopped_s = time.monotonic() - t0
        assert w.log_tail(10**6).count("job cancelled") == 2, w.log_tail()
        time.sleep(1.0)
        assert not (cluster.tmp / "storage" / gone).exists()  # the worker removed what it wrote after the delete
        v = a.get(f"/v1/videos/{keep}").json()
        assert v["status"] == "cancelled" and v["blocks_completed"] < 3
    print(f"\ncancel + delete through the other API node: both rollouts dropped {stopped_s:.2f}s later")

    async def realtime():
        url = api[1].url.replace("http", "ws") + "/v1/realtime"
        async with websockets.connect(url, max_size=None) as ws:
            await ws.send(json.dumps({"type": "session.start", "prompt": PROMPT, "seed": 5, "num_inference_steps": 1}))
            started = json.loads(await ws.recv())
            assert started["type"] == "session.started" and started["frames_per_block"] == 32, started
            blocks, payload, updated = 0, b"", False
            while blocks < 3:
                msg = json.loads(await ws.recv())
                if msg["type"] == "prompt.updated":
                    updated = True
                    continue
                assert msg["type"] == "video.block", msg
                payload += await ws.recv()
                blocks += 1
                if blocks == 1:
                    await ws.send(json.dumps({"type": "prompt.update", "prompt": PROMPTS[1]}))
            await ws.send(json.dumps({"type": "session.stop"}))
            while True:
                msg = json.loads(await ws.recv())
                if msg["type"] == "session.stopped":
                    break
                if msg["type"] == "video.block":
                    payload += await ws.recv()
            return updated, payload

    updated, payload = asyncio.run(realtime())
    assert updated and decode_video(payload).shape[0] >= 96
    deadline = time.monotonic() + 20
    while "session ended" not in w.log_tail(10**6) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "session ended" in w.log_tail(10**6) and "realtime session session_" in w.log_tail(10**6)

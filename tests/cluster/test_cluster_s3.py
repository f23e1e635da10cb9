"""The cluster with S3 storage end to end: an API node and two workers whose only shared storage
is a real S3 API server on 127.0.0.1 (moto's server mode). A viewer streams a job from the API
node while the worker that runs it is killed with SIGKILL; the other worker, with an empty
scratch directory, resumes it from what S3 holds, and the video equals an uninterrupted run."""
from __future__ import annotations

import asyncio

import numpy as np
import redis

from sana_serve.engine.video import decode_video
from tests.cluster.conftest import Cluster, s3_bucket
from tests.cluster.test_cluster import done, read_stream, wait_job, ws_url
from tests.server.conftest import PROMPT


def test_job_on_s3_survives_a_killed_worker_and_streams_whole(tmp_path, redis_server, cluster_config, s3_server,
                                                               monkeypatch):
    import boto3

    bucket = s3_bucket(s3_server, monkeypatch)
    cluster = Cluster(tmp_path, redis_server.url, cluster_config, lease_seconds=3.0)
    cluster.storage = f"{bucket}/sana"
    endpoint = ["--s3-endpoint-url", s3_server]
    try:
        api = cluster.add("api", "api-a", endpoint)
        workers = {f"worker-{i}": cluster.add("worker", f"worker-{i}", [*endpoint, "--max-batch", "2"]) for i in (1, 2)}
        for n in (api, *workers.values()):
            n.wait_ready()
        body = {"prompt": PROMPT, "seconds": 6, "num_inference_steps": 2, "seed": 21}  # 3 blocks
        with api.client() as c:
            r = c.post("/v1/videos", json=body)
            assert r.status_code == 200, r.text
            vid = r.json()["id"]
        v = wait_job(api, vid, lambda v: v["blocks_completed"] >= 1, timeout=120)
        assert v["status"] == "in_progress" and v["blocks_completed"] < 3, v
        owner = redis.Redis.from_url(cluster.redis_url).hget(f"sana:job:{vid}", "worker").decode()
        workers.pop(owner).kill()
        (survivor,) = workers.values()

        events, payload, end = asyncio.run(read_stream(ws_url(api, vid)))  # replay from S3, then live
        assert end["type"] == "video.completed", end
        assert [e["index"] for e in events if e["type"] == "video.block"] == [0, 1, 2]
        v = wait_job(api, vid, done)
        assert v["status"] == "completed" and "job resumed at block" in survivor.log_tail(10**6)

        with api.client() as c:
            resumed = decode_video(c.get(f"/v1/videos/{vid}/content").content)
            ref = c.post("/v1/videos", json=body).json()["id"]
            wait_job(api, ref, done)
            reference = decode_video(c.get(f"/v1/videos/{ref}/content").content)
            thumbnail = c.get(f"/v1/videos/{vid}/content", params={"variant": "thumbnail"})
        assert resumed.shape == (96, 64, 64, 3) and np.array_equal(resumed, reference)
        assert np.array_equal(decode_video(payload), resumed)  # the streamed bytes are the same video
        assert thumbnail.status_code == 200 and thumbnail.content[:4] == b"\x89PNG"
        # Nothing but S3 was shared: the video, its segments and its thumbnail are objects there.
        name, prefix = bucket.removeprefix("s3://"), f"sana/{vid}/"
        keys = [o["Key"] for o in boto3.client("s3", endpoint_url=s3_server)
                .list_objects_v2(Bucket=name, Prefix=prefix).get("Contents", [])]
        assert any(k.endswith(".mp4") for k in keys) and any("segment" in k for k in keys), keys
    finally:
        cluster.stop()

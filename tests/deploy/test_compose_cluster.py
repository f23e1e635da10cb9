"""`docker compose up` of docker/compose.cluster.yaml (profile cpu) on the image built here: Redis
(Debian's redis-server on the local base image), two API nodes, two workers, one shared volume.
A job is submitted through one API node while a viewer streams it from the other; both
workers register in /metrics."""
from __future__ import annotations

import json
import time
import uuid

import httpx
import numpy as np
import pytest
from websockets.sync.client import connect

from sana_serve.engine.video import decode_video
from tests.deploy.conftest import ROOT, TIMINGS, WHEELS_DIR, run, tool
from tests.deploy.test_compose_stack import PROMPT, free_port

pytestmark = [pytest.mark.deploy]

COMPOSE_FILE = ROOT / "docker" / "compose.cluster.yaml"
# Its own tag: tests/deploy's `sana-serve:deploy-test` may be rebuilt from another checkout meanwhile.
IMAGE = "sana-serve:cluster-test"
REDIS_IMAGE = "sana-serve-redis:cluster-test"


def compose(*args, project, env, timeout=600, check=True):
    return run([tool("docker-compose"), "-p", project, "-f", str(COMPOSE_FILE), *args], env=env, timeout=timeout,
               check=check)


def wait_ready(url: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=3).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"{url} not ready within {timeout}s")


@pytest.fixture(scope="module")
def cluster_images(base_image, wheelhouse) -> str:
    """The sana-serve image (offline, from the wheelhouse, as tests/deploy builds it) and the Redis one."""
    import os
    import shutil

    linked = []
    for wheel in wheelhouse.glob("*.whl"):
        dest = WHEELS_DIR / wheel.name
        if not dest.exists():
            try:
                os.link(wheel, dest)
            except OSError:
                shutil.copy2(wheel, dest)
            linked.append(dest)
    env = {"SANA_SERVE_IMAGE": IMAGE, "SANA_SERVE_REDIS_IMAGE": REDIS_IMAGE, "SANA_SERVE_BASE_IMAGE": base_image,
           "SANA_SERVE_PIP_NO_INDEX": "1"}
    t0 = time.monotonic()
    try:  # api-1 and redis carry the build sections; redis installs Debian's redis-server with apt
        built = compose("build", "api-1", "redis", project=f"sana-build-{uuid.uuid4().hex[:8]}", env=env,
                        timeout=1500)
        for tag in (IMAGE, REDIS_IMAGE):  # the compose binary's exit status alone has not been reliable
            if run(["docker", "image", "inspect", tag], check=False).returncode != 0:
                raise AssertionError(f"{tag} was not built:\n{built.stdout[-3000:]}\n{built.stderr[-5000:]}")
    finally:
        for path in linked:
            path.unlink(missing_ok=True)
    TIMINGS["cluster images (compose build)"] = time.monotonic() - t0
    return IMAGE


@pytest.fixture
def cluster_stack(cluster_images, base_image):
    project = f"sana-cluster-{uuid.uuid4().hex[:10]}"
    ports = free_port(), free_port()
    env = {"SANA_SERVE_IMAGE": cluster_images, "SANA_SERVE_BASE_IMAGE": base_image, "SANA_SERVE_PORT": str(ports[0]),
           "SANA_SERVE_PORT_2": str(ports[1]), "SANA_SERVE_LEASE": "5", "OMP_NUM_THREADS": "1",
           "SANA_SERVE_REDIS_IMAGE": REDIS_IMAGE}
    try:
        t0 = time.monotonic()
        compose("up", "-d", "--no-build", project=project, env=env)
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        for url in urls:
            wait_ready(url)
        TIMINGS["cluster up (2 API nodes ready)"] = time.monotonic() - t0
        yield urls, project, env
    finally:
        logs = compose("logs", "--no-color", project=project, env=env, check=False).stdout
        compose("down", "-v", "--remove-orphans", project=project, env=env, check=False, timeout=300)
        print(logs[-6000:])


def test_cluster_serves_through_one_node_and_streams_from_the_other(cluster_stack):
    (api1, api2), project, env = cluster_stack
    body = {"prompt": PROMPT, "seconds": 4, "num_inference_steps": 1, "seed": 0}
    with httpx.Client(base_url=api1, timeout=60) as c:
        r = c.post("/v1/videos", json=body)
        assert r.status_code == 200, r.text
        vid = r.json()["id"]
    events, payload = [], b""
    with connect(api2.replace("http", "ws") + f"/v1/videos/{vid}/stream", max_size=None, open_timeout=30) as ws:
        while True:
            msg = json.loads(ws.recv(timeout=300))
            events.append(msg)
            if msg["type"] != "video.block":
                break
            payload += ws.recv(timeout=60)
    assert events[-1]["type"] == "video.completed", events[-1]
    assert [e["index"] for e in events[:-1]] == [0, 1]
    streamed = decode_video(payload)
    with httpx.Client(base_url=api2, timeout=60) as c:
        video = c.get(f"/v1/videos/{vid}").json()
        assert video["status"] == "completed" and video["progress"] == 100
        mp4 = c.get(f"/v1/videos/{vid}/content")
        assert mp4.status_code == 200 and np.array_equal(decode_video(mp4.content), streamed)
        assert streamed.shape == (64, 64, 64, 3)
        text = c.get("/metrics").text
    assert "sana_cluster_workers 2.0" in text
    assert 'sana_worker_jobs{worker="worker-1"}' in text and 'sana_worker_jobs{worker="worker-2"}' in text
    # Redis runs with its append-only file.
    aof = compose("exec", "-T", "redis", "redis-cli", "config", "get", "appendonly", project=project, env=env).stdout
    assert "yes" in aof

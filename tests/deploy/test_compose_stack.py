"""`docker compose up` of docker/compose.yaml on the image built here, used the way a user would:
through the published port with the official openai SDK and a websocket client, then killed
mid-job and brought up again on the same volume.

The tests of this module share one compose project (unique name, torn down with its volumes at
the end) and run in file order: the first watches the container start.
"""
from __future__ import annotations

import json
import socket
import subprocess
import time
import uuid
from datetime import datetime

import httpx
import openai
import pytest
from websockets.sync.client import connect

from sana_serve.engine.video import decode_video
from sana_serve.shapes.checker import check_video
from tests.deploy.conftest import TIMINGS, compose, run
from tests.server.conftest import finished, wait_for

# The SDK marks the Videos API deprecated (a warning per call).
pytestmark = [pytest.mark.deploy, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

API_KEY = "deploy-test-key-0123456789"
PROMPT = "a red circle moving right on a black background"
EXPECTED = ("red", "circle", "right", "black")
SERVICE = "sana-serve"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """One compose project of docker/compose.yaml (profile cpu) on a free host port."""

    def __init__(self, image: str):
        self.project = f"sana-deploy-{uuid.uuid4().hex[:10]}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.headers = {"Authorization": f"Bearer {API_KEY}"}
        # One torch thread: the test machine's 2 cores are shared with the rest of the suite, and
        # spinning OpenMP threads make a loaded CPU ~20x slower (compose passes OMP_NUM_THREADS on).
        self.env = {"SANA_SERVE_IMAGE": image, "SANA_SERVE_PORT": str(self.port), "SANA_SERVE_API_KEYS": API_KEY,
                    "OMP_NUM_THREADS": "1"}

    def compose(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return compose(*args, project=self.project, env=self.env, **kw)

    def up(self) -> None:
        self.compose("up", "-d", "--no-build")

    def container(self) -> str:
        ids = self.compose("ps", "-a", "-q", SERVICE).stdout.split()
        assert len(ids) == 1, ids
        return ids[0]

    def inspect(self) -> dict:
        return json.loads(run(["docker", "inspect", self.container()]).stdout)[0]

    def health(self) -> str:
        state = self.inspect()["State"]
        return state["Health"]["Status"] if state.get("Health") else state["Status"]

    def readyz(self) -> int | None:
        try:
            return httpx.get(self.url + "/readyz", timeout=2).status_code
        except httpx.HTTPError:
            return None  # not listening yet

    def wait_healthy(self, timeout: float = 240) -> list[tuple[str, int | None]]:
        """(health status, /readyz status) samples until the container is healthy."""
        samples, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.health()
            samples.append((status, self.readyz()))  # health first: a healthy one must already be ready
            if status == "healthy":
                return samples
            assert status in ("starting", "running", "created", "restarting"), (status, self.logs()[-3000:])
            time.sleep(0.25)
        raise AssertionError(f"not healthy after {timeout} s: {samples[-5:]}\n{self.logs()[-3000:]}")

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--no-log-prefix", SERVICE).stdout

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=60)

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", "--timeout", "5", check=False)


@pytest.fixture(scope="module")
def stack(image):
    s = Stack(image)
    s.up()
    TIMINGS["compose up started"] = time.monotonic()
    try:
        yield s
    finally:
        s.down()
        left = run(["docker", "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={s.project}"]).stdout
        assert not left.strip(), f"volumes left behind: {left}"


def started(rfc3339: str) -> float:
    """docker's nanosecond RFC 3339 time as a Unix timestamp."""
    return datetime.fromisoformat(rfc3339[:26].rstrip("Z") + "+00:00").timestamp()


def test_cpu_image_stays_under_1_5_gb(image):
    size = int(run(["docker", "image", "inspect", "-f", "{{.Size}}", image]).stdout.strip())
    assert size < 1.5e9, f"the CPU image is {size / 1e9:.2f} GB; it should stay under 1.5 GB (README: Deploy)"


def test_healthy_only_once_model_loaded_and_runs_as_non_root(stack):
    samples = stack.wait_healthy()
    TIMINGS["compose up -> healthy"] = time.monotonic() - TIMINGS.pop("compose up started")
    assert all(ready == 200 for status, ready in samples if status == "healthy"), samples
    # The container was up and not yet healthy while the model loaded (connection refused or 503).
    assert any(status == "starting" and ready != 200 for status, ready in samples), samples
    # The image's own check (python + urllib, no curl): every run before the model was loaded
    # failed, the first one after it passed. (docker keeps the last 5 runs: the start is among them.)
    loaded = [json.loads(line)["ts"] for line in stack.logs().splitlines()
              if line.startswith("{") and "model loaded: ready" in line]
    assert len(loaded) == 1, stack.logs()[-3000:]
    runs = [(started(entry["Start"]), entry["ExitCode"]) for entry in stack.inspect()["State"]["Health"]["Log"]]
    assert runs and runs[-1][1] == 0, runs
    for start, code in runs:  # a run takes ~0.1 s from its start to its request: 1 s of slack each way
        if code == 0:
            assert start > loaded[0] - 1, ("healthy before the model was loaded", runs, loaded)
        else:
            assert start < loaded[0] + 1, ("unhealthy after the model was loaded", runs, loaded)

    info = stack.inspect()
    assert info["Config"]["User"] == "10001:10001"
    uid = run(["docker", "exec", stack.container(), "id", "-u"]).stdout.strip()
    assert uid == "10001"
    status = run(["docker", "exec", stack.container(), "cat", "/proc/1/status"]).stdout  # the server itself
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert uids == ["10001"] * 4, status
    owner = run(["docker", "exec", stack.container(), "stat", "-c", "%u", "/data"]).stdout.strip()
    assert owner == "10001"  # the named volume took the image's ownership: the server can write it


def test_openai_sdk_video_passes_shapes_checker(stack):
    assert httpx.post(stack.url + "/v1/videos", json={"prompt": PROMPT}).status_code == 401  # keys from the env
    sdk = openai.OpenAI(base_url=stack.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)
    video = sdk.videos.create(prompt=PROMPT, seconds="4", model="shapes-tiny", extra_body={"seed": 0})
    assert video.status in ("queued", "in_progress") and video.seconds == "4"
    t0 = time.monotonic()
    done = sdk.videos.poll(video.id, poll_interval_ms=200)
    TIMINGS["4 s video in the container"] = time.monotonic() - t0
    assert done.status == "completed" and done.progress == 100, done
    frames = decode_video(sdk.videos.download_content(video.id).content)
    assert frames.shape == (4 * 16, 64, 64, 3)
    verdict = check_video(frames, EXPECTED)
    assert verdict.passed, verdict.reason


def test_websocket_stream_and_metrics_through_published_port(stack):
    with stack.client() as c:
        r = c.post("/v1/videos", json={"prompt": "a blue square moving up on a white background", "seconds": 2,
                                       "seed": 3, "num_inference_steps": 1})
        assert r.status_code == 200, r.text
        video = r.json()
        ws_url = stack.url.replace("http://", "ws://") + f"/v1/videos/{video['id']}/stream"
        events, payload = [], bytearray()
        with connect(ws_url, additional_headers=stack.headers, max_size=None, open_timeout=30) as ws:
            while True:
                event = json.loads(ws.recv(timeout=120))
                if event["type"] != "video.block":
                    break
                events.append(event)
                segment = ws.recv(timeout=120)
                assert isinstance(segment, bytes)
                payload += segment
        assert event["type"] == "video.completed", event
        assert [e["index"] for e in events] == list(range(video["num_blocks"]))
        assert sum(e["frame_count"] for e in events) == 2 * 16
        assert decode_video(bytes(payload)).shape == (2 * 16, 64, 64, 3)  # the fMP4 segments play as one video

        metrics = c.get("/metrics")
        assert metrics.status_code == 200
        for name in ("sana_model_loaded 1.0", "sana_jobs{", "sana_block_seconds_bucket"):
            assert name in metrics.text, name


def test_docker_kill_mid_job_then_up_resumes_and_keeps_videos(stack):
    with stack.client() as c:
        short = c.post("/v1/videos", json={"prompt": PROMPT, "seconds": 1, "seed": 5, "num_inference_steps": 1}).json()
        assert wait_for(c, short["id"], finished, timeout=300)["status"] == "completed"
        short_mp4 = c.get(f"/v1/videos/{short['id']}/content").content
        long = c.post("/v1/videos", json={"prompt": "a green triangle moving left on a gray background",
                                          "seconds": 40, "seed": 9, "num_inference_steps": 2}).json()
        assert long["num_blocks"] >= 10, long  # long enough that it is still running when the kill lands
        before = wait_for(c, long["id"], lambda v: v["blocks_completed"] >= 2 or finished(v), interval=0.02, timeout=300)
        run(["docker", "kill", stack.container()])  # SIGKILL: no shutdown code runs
    assert before["status"] == "in_progress" and before["blocks_completed"] < before["num_blocks"], before

    t0 = time.monotonic()
    stack.up()  # the same project and volume: the container comes back
    stack.wait_healthy()
    TIMINGS["docker kill -> compose up -> healthy"] = time.monotonic() - t0
    with stack.client() as c:
        done = wait_for(c, long["id"], finished, timeout=300)
        assert done["status"] == "completed" and done["blocks_completed"] == done["num_blocks"], done
        frames = decode_video(c.get(f"/v1/videos/{long['id']}/content").content)
        assert frames.shape == (40 * 16, 64, 64, 3)
        assert c.get(f"/v1/videos/{short['id']}/content").content == short_mp4  # the volume kept it
        listed = {v["id"] for v in c.get("/v1/videos", params={"limit": 100}).json()["data"]}
        assert {short["id"], long["id"]} <= listed

    # It went on from the last block it had finished, not from the start.
    resumed = [json.loads(line) for line in stack.logs().splitlines()
               if line.startswith("{") and "job resumed at block" in line]
    resumed = [r for r in resumed if r.get("job_id") == long["id"]]
    assert len(resumed) == 1, resumed
    block = int(resumed[0]["msg"].rsplit(" ", 1)[1])
    assert before["blocks_completed"] <= block < done["num_blocks"], (before, resumed)


def test_upgrade_recreates_the_container_and_keeps_running_jobs(stack):
    """What `up -d --build` does on an upgrade: a new container (SIGTERM to the old one) on the same volume."""
    with stack.client() as c:
        job = c.post("/v1/videos", json={"prompt": PROMPT, "seconds": 40, "seed": 2, "num_inference_steps": 2}).json()
        before = wait_for(c, job["id"], lambda v: v["blocks_completed"] >= 1 or finished(v), interval=0.02, timeout=300)
    old = stack.container()
    stack.compose("up", "-d", "--no-build", "--force-recreate")
    assert stack.container() != old  # a new container, not a restart
    stack.wait_healthy()
    with stack.client() as c:
        done = wait_for(c, job["id"], finished, timeout=300)
    assert before["status"] == "in_progress", before
    assert done["status"] == "completed" and done["blocks_completed"] == done["num_blocks"], done


def test_never_healthy_while_the_model_cannot_load(image):
    """The healthcheck follows /readyz, not mere liveness: a server whose model fails to load (the CPU
    image asked for CUDA) answers /healthz but never turns healthy."""
    name = f"sana-deploy-unready-{uuid.uuid4().hex[:8]}"
    port = free_port()
    run(["docker", "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8000", "--health-interval", "1s",
         "--health-retries", "2", "--health-start-period", "1s", image,
         "serve", "--host", "0.0.0.0", "--port", "8000", "--data-dir", "/data", "--device", "cuda"])
    try:
        url = f"http://127.0.0.1:{port}"
        deadline, ready = time.monotonic() + 120, None
        while time.monotonic() < deadline:  # until the server is up and has given up on the model
            try:
                ready = httpx.get(url + "/readyz", timeout=5)
                if ready.status_code == 503 and "model failed to load" in ready.text:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        assert ready is not None and "model failed to load" in ready.text, ready and ready.text
        failed_at = time.time()
        assert httpx.get(url + "/healthz", timeout=5).status_code == 200  # the process is alive
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # three health runs against the live, model-less server
            state = json.loads(run(["docker", "inspect", name]).stdout)[0]["State"]
            runs = [e for e in state["Health"]["Log"] if started(e["Start"]) > failed_at]
            assert state["Health"]["Status"] != "healthy", state["Health"]
            if len(runs) >= 3:
                break
            time.sleep(0.5)
        assert len(runs) >= 3 and all(e["ExitCode"] != 0 for e in runs), runs
        assert state["Health"]["Status"] == "unhealthy", state["Health"]
    finally:
        run(["docker", "rm", "-f", "-v", name], check=False)

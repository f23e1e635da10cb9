"""The two deployments the HTTP tests run against, as real subprocesses on 127.0.0.1.

`serve`: one `sana-serve serve` (SQLite, in-process hub, local files; free port, temporary data dir).
`cluster`: a `sana-serve api` node and a `sana-serve worker` on a real redis-server and one shared
storage directory. Both run a test copy of the default model config with tight limits (max 6 s
videos, at most 2 steps per block, 200-character prompts), so generated and fuzzed requests stay
cheap on a 2-core CPU, and both require an API key.

The `deployment` fixture (session-scoped, parametrised `serve` / `cluster`) gives either one with
the same surface: `url`, `port`, `api_key`, `headers`, `client()`, `job_dir(id)` (where the job's
stored files are), `metrics()` (the /metrics text of every node), `log_text()` (every node's log),
`rss_bytes()` (of every process), `deployment` ("serve" | "cluster"). Each deployment starts
once per session; pytest runs all tests of one deployment, then those of the other. The `client`
fixture is the deployment's client and deletes every job after the test. Tests that are about one
deployment use `server` (the embedded one; `server_client`) or start their own processes (kill -9).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "test-key-0123456789"
PROMPT = "a red circle moving right on a black background"
LIMITS = {"max_seconds": 6, "max_steps": 2, "min_guidance": 1.0, "max_guidance": 8.0, "max_prompt_chars": 200}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_test_config(directory: Path) -> Path:
    """configs/shapes-tiny.yaml with test limits; its checkpoint path made absolute."""
    src = ROOT / "configs" / "shapes-tiny.yaml"
    data = yaml.safe_load(src.read_text())
    if data.get("checkpoint"):
        data["checkpoint"] = str((src.parent / data["checkpoint"]).resolve())
    data["limits"] = LIMITS
    path = directory / "shapes-tiny-test.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class ServerProcess:
    """One `sana-serve serve` subprocess; `kill()` is SIGKILL, `start()` reuses the data dir."""

    def __init__(self, data_dir: Path, config: Path, api_key: str | None = None, extra: list[str] | None = None):
        self.data_dir, self.config, self.api_key = data_dir, config, api_key
        self.extra = extra or []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self._log = None
        self.saw_not_ready = False  # /readyz answered 503 while the model loaded

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=60, **kw)

    name = "server"
    deployment = "serve"

    def job_dir(self, video_id: str) -> Path:
        """Where the server keeps a job's files (raw frames under frames/ with --keep-frames)."""
        return self.data_dir / "videos" / video_id

    def metrics(self) -> str:
        return httpx.get(self.url + "/metrics", headers=self.headers, timeout=30).text

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def command(self) -> list[str]:
        args = [sys.executable, "-m", "sana_serve", "serve", "--config", str(self.config), "--host", "127.0.0.1",
                "--port", str(self.port), "--data-dir", str(self.data_dir), "--threads", "2", *self.extra]
        if self.api_key:
            args += ["--api-key", self.api_key]
        return args

    def environment(self) -> dict:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        env.pop(("SANA_SERVE_API_KEYS"), None)
        return env

    def start(self, timeout: float = 180) -> "ServerProcess":
        return self.launch().wait_ready(timeout)

    def launch(self) -> "ServerProcess":
        """Start the process without waiting for it (several can then load their models at once)."""
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), cwd=ROOT, env=self.environment(), stdout=self._log,
                                     stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, timeout: float = 180) -> "ServerProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                status = httpx.get(self.url + "/readyz", timeout=2).status_code
                if status == 200:
                    return self
                self.saw_not_ready |= status == 503
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"{self.name} not ready within {timeout}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except FileNotFoundError:
            return ""

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def kill(self) -> None:
        """SIGKILL: no shutdown handlers, nothing flushed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
        self._close_log()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def wait_for(client: httpx.Client, video_id: str, predicate, timeout: float = 120, interval: float = 0.1) -> dict:
    """Poll GET /v1/videos/{id} until predicate(video) holds; the video object."""
    deadline = time.monotonic() + timeout
    video = None
    while time.monotonic() < deadline:
        r = client.get(f"/v1/videos/{video_id}")
        assert r.status_code == 200, r.text
        video = r.json()
        if predicate(video):
            return video
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {video_id}; last state {video}")


def finished(video: dict) -> bool:
    return video["status"] in ("completed", "failed", "cancelled")


def delete_all(client: httpx.Client) -> None:
    """Remove every job (cancelling running ones), so the next test starts with an idle worker."""
    while True:
        page = client.get("/v1/videos", params={"limit": 100}).json()
        if not page["data"]:
            return
        for v in page["data"]:
            r = client.delete(f"/v1/videos/{v['id']}")
            assert r.status_code in (200, 404), r.text


@pytest.fixture(scope="session")
def test_config(tmp_path_factory) -> Path:
    return write_test_config(tmp_path_factory.mktemp("config"))


@pytest.fixture(scope="session")
def server(tmp_path_factory, test_config):
    """The shared server: API key required, small queue (8), batches of up to 4, raw frames kept."""
    s = ServerProcess(tmp_path_factory.mktemp("server") / "data", test_config, API_KEY, API_FLAGS + WORKER_FLAGS)
    s.start()
    yield s
    s.stop()


@pytest.fixture
def server_client(server):
    """A client of the embedded server (for tests about that deployment only); cleans up after."""
    with server.client() as c:
        yield c
        delete_all(c)


# The flags both deployments get: what the API side and the worker side of `serve` are given.
API_FLAGS = ["--max-queued", "8", "--log-format", "json"]
WORKER_FLAGS = ["--max-batch", "4", "--keep-frames", "--threads", "2", "--log-format", "json"]


class ClusterDeployment:
    """`sana-serve api` + `sana-serve worker` on a real redis-server and a shared storage directory:
    the same surface as ServerProcess for the HTTP tests."""

    deployment = "cluster"

    def __init__(self, tmp: Path, config: Path, api_key: str):
        self.tmp, self.config, self.api_key = tmp, config, api_key
        self.storage = tmp / "storage"
        self.redis = self.api = self.worker = None

    def start(self, timeout: float = 180) -> "ClusterDeployment":
        from tests.cluster.conftest import Node, RedisServer

        self.redis = RedisServer(self.tmp / "redis").start()
        key = ["--api-key", self.api_key]
        self.worker = Node("worker", self.redis.url, str(self.storage), self.config, self.tmp, "worker",
                           WORKER_FLAGS + key).launch()
        self.api = Node("api", self.redis.url, str(self.storage), self.config, self.tmp, "api",
                        API_FLAGS + key).launch()
        try:
            self.api.wait_ready(timeout)
            self.worker.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def url(self) -> str:
        return self.api.url

    @property
    def port(self) -> int:
        return self.api.port

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"}

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=60, **kw)

    def job_dir(self, video_id: str) -> Path:
        return self.storage / video_id

    def metrics(self) -> str:
        """The worker's /metrics (the engine's numbers), then the API node's."""
        return "\n".join(httpx.get(n.url + "/metrics", headers=self.headers, timeout=30).text
                         for n in (self.worker, self.api))

    def log_text(self) -> str:
        """Every node's log (JSON lines: --log-format json)."""
        return "\n".join(node.log_text() for node in (self.api, self.worker))

    def rss_bytes(self) -> int:
        return self.api.rss_bytes() + self.worker.rss_bytes()

    def log_tail(self, n: int = 4000) -> str:
        return "\n".join(f"--- {node.name}\n{node.log_tail(n)}" for node in (self.api, self.worker) if node)

    def stop(self) -> None:
        for node in (self.api, self.worker):
            if node is not None:
                node.stop()
        if self.redis is not None:
            self.redis.stop()


@pytest.fixture(scope="session")
def cluster_deployment(tmp_path_factory, test_config):
    c = ClusterDeployment(tmp_path_factory.mktemp("cluster-deployment"), test_config, API_KEY).start()
    yield c
    c.stop()


@pytest.fixture(scope="session", params=["serve", "cluster"])
def deployment(request):
    """The embedded server, then the cluster (api + worker + redis-server + shared directory)."""
    return request.getfixturevalue("server" if request.param == "serve" else "cluster_deployment")


@pytest.fixture
def client(deployment):
    """A client of the deployment under test (API key set); deletes every job afterwards."""
    with deployment.client() as c:
        yield c
        delete_all(c)

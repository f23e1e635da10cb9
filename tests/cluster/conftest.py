"""Real processes for the cluster tests: Debian's redis-server on a free 127.0.0.1 port (its own
temporary directory, append-only file on), and `sana-serve api` / `sana-serve worker`
subprocesses sharing it and one storage directory."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.server.conftest import ROOT, free_port, write_test_config

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    """One redis-server with appendonly on; `restart()` keeps its directory (and so its data)."""

    def __init__(self, directory: Path):
        if not os.path.exists(REDIS_SERVER):
            pytest.fail("redis-server is not installed (apt-get install redis-server); the cluster tests need it")
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "RedisServer":
        import redis

        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--protected-mode", "no"],
            stdout=open(self.dir / "redis.log", "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if redis.Redis.from_url(self.url).ping():
                    return self
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start: " + (self.dir / "redis.log").read_text()[-2000:])

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(20)

    def restart(self) -> None:
        self.stop(signal.SIGKILL)  # the append-only file (fsync always) is all that survives
        self.start()


@pytest.fixture
def redis_server(tmp_path):
    r = RedisServer(tmp_path / "redis").start()
    yield r
    r.stop()


class Node:
    """A `sana-serve api` or `sana-serve worker` subprocess."""

    def __init__(self, role: str, redis_url: str, storage: str, config: Path, log_dir: Path, name: str,
                 extra: list[str] | None = None):
        self.role, self.name = role, name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [sys.executable, "-m", "sana_serve", role, "--store", redis_url, "--storage", storage,
                     "--config", str(config), "--host", "127.0.0.1", "--port", str(self.port),
                     "--log-format", "text", *(extra or [])]
        if role == "worker":
            self.args += ["--threads", "1", "--worker-name", name, "--data-dir", str(log_dir / f"{name}-scratch")]
        else:
            self.args += ["--data-dir", str(log_dir / f"{name}-scratch")]
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Node":
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
               "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(self.args, cwd=ROOT, env=env, stdout=open(self.log_path, "ab"),
                                     stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, timeout: float = 180) -> "Node":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready within {timeout}s:\n{self.log_tail()}")

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)


class Cluster:
    """API nodes and workers on one Redis and one storage directory."""

    def __init__(self, tmp: Path, redis_url: str, config: Path, lease_seconds: float = 3.0):
        self.tmp, self.redis_url, self.config = tmp, redis_url, config
        self.storage = str(tmp / "storage")
        self.lease = lease_seconds
        self.nodes: list[Node] = []

    def add(self, role: str, name: str, extra: list[str] | None = None) -> Node:
        extra = list(extra or [])
        if role == "worker":
            extra += ["--lease-seconds", str(self.lease)]
        node = Node(role, self.redis_url, self.storage, self.config, self.tmp, name, extra).start()
        self.nodes.append(node)
        return node

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@pytest.fixture(scope="module")
def cluster_config(tmp_path_factory) -> Path:
    return write_test_config(tmp_path_factory.mktemp("cluster-config"))


@pytest.fixture(scope="module")
def s3_server():
    """A real S3 API server on 127.0.0.1 (moto's server mode; boto3 talks HTTP to it)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def s3_bucket(endpoint: str, monkeypatch) -> str:
    """A new bucket on `endpoint`, as `s3://NAME`; test credentials in the environment (they reach
    the node subprocesses too)."""
    import boto3

    for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    bucket = f"videos-{free_port()}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    return f"s3://{bucket}"

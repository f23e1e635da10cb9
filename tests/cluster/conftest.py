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

import pytest

from tests.server.conftest import ServerProcess, free_port, write_test_config

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


class Node(ServerProcess):
    """A `sana-serve api` or `sana-serve worker` subprocess (`launch()`, then `wait_ready()`)."""

    def __init__(self, role: str, redis_url: str, storage: str, config: Path, log_dir: Path, name: str,
                 extra: list[str] | None = None):
        super().__init__(log_dir / f"{name}-scratch", config, extra=extra)
        self.role, self.name, self.redis_url, self.storage = role, name, redis_url, storage
        self.log_path = log_dir / f"{name}.log"

    def command(self) -> list[str]:
        args = [sys.executable, "-m", "sana_serve", self.role, "--store", self.redis_url, "--storage", self.storage,
                "--config", str(self.config), "--host", "127.0.0.1", "--port", str(self.port),
                "--log-format", "text", "--data-dir", str(self.data_dir)]
        if self.role == "worker":
            args += ["--threads", "1", "--worker-name", self.name]
        return args + self.extra  # last: a test's flags override the defaults above

    def environment(self) -> dict:
        return {**super().environment(), "OMP_NUM_THREADS": "1"}


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
        node = Node(role, self.redis_url, self.storage, self.config, self.tmp, name, extra).launch()
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

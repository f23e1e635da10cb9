"""`sana-serve api` / `sana-serve worker`: bad cluster options are one clear line and exit 2."""
import subprocess
import sys

import pytest

from tests.server.conftest import ROOT

pytestmark = pytest.mark.processes  # the CLI, as a subprocess


@pytest.mark.parametrize("args, message", [
    (["api", "--store", "http://127.0.0.1:6379", "--storage", "/tmp/x"], "expected a Redis URL"),
    (["worker", "--store", "redis://127.0.0.1:1/0", "--storage", "/tmp/x", "--lease-seconds", "0"],
     "--lease-seconds must be > 0"),
    (["worker", "--store", "redis://127.0.0.1:1/0", "--storage", "/tmp/x", "--max-attempts", "0"],
     "--max-attempts must be >= 1"),
    (["api", "--store", "redis://127.0.0.1:1/0", "--storage", "ftp://host/x"], "use a directory or s3://"),
    (["api", "--storage", "/tmp/x"], "--store"),
])
def test_bad_cluster_options(args, message):
    proc = subprocess.run([sys.executable, "-m", "sana_serve", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sana-serve: error:") and message in lines[0], proc.stderr


def test_unreachable_redis_is_one_line():
    from tests.server.conftest import free_port

    proc = subprocess.run([sys.executable, "-m", "sana_serve", "api", "--store", f"redis://127.0.0.1:{free_port()}/0",
                           "--storage", "/tmp/x", "--redis-wait", "1"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach Redis at redis://127.0.0.1" in lines[0], proc.stderr

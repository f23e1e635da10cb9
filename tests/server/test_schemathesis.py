"""Property-based fuzzing of the whole API from its own /openapi.json: no 5xx, ever."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server.conftest import API_KEY


def test_no_server_errors_on_generated_and_malformed_input(server, client, tmp_path):
    # the venv's own bin first: `make test` runs the venv's python without activating the venv
    beside = Path(sys.executable).parent / "schemathesis"
    exe = str(beside) if beside.is_file() else shutil.which("schemathesis")
    if exe is None:
        pytest.fail("schemathesis is not installed (pip install -e '.[dev]' installs it)")
    cmd = [exe, "run", f"{server.url}/openapi.json", "--checks", "not_a_server_error",
           "--header", f"Authorization: Bearer {API_KEY}", "--max-examples", "12", "--seed", "1",
           "--phases", "examples,coverage,fuzzing", "--workers", "1", "--max-time", "60",
           "--exclude-path", "/metrics"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    print(run.stdout[-3000:])
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]

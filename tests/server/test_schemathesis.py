"""Property-based testing of the whole API from its own /openapi.json, on both deployments: every
schemathesis check (no 5xx; responses, status codes, headers and content types as documented;
requests the schema calls valid are accepted and invalid ones rejected; 405s list the allowed
methods; auth is enforced; a deleted video is gone) over examples, coverage and fuzzing, and the
stateful phase, which links a created video (POST /v1/videos) to its retrieval, content and
deletion (schemathesis derives the links from the schema: the `id` a create returns is the
`video_id` those operations take)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server.conftest import API_KEY

# A created video is what these operations take (the stateful phase's links from create to them).
CONSUMERS = {"GET /v1/videos/{video_id}", "GET /v1/videos/{video_id}/content", "DELETE /v1/videos/{video_id}"}


def schemathesis_exe() -> str:
    # the venv's own bin first: `make test` runs the venv's python without activating the venv
    beside = Path(sys.executable).parent / "schemathesis"
    exe = str(beside) if beside.is_file() else shutil.which("schemathesis")
    if exe is None:
        pytest.fail("schemathesis is not installed (pip install -e '.[dev]' installs it)")
    return exe


def test_every_check_on_generated_malformed_and_stateful_requests(deployment, client, tmp_path):
    reports = tmp_path / "reports"
    cmd = [schemathesis_exe(), "run", f"{deployment.url}/openapi.json", "--checks", "all",
           "--header", f"Authorization: Bearer {API_KEY}", "--max-examples", "10", "--seed", "1",
           "--phases", "examples,coverage,fuzzing,stateful", "--workers", "1", "--max-time", "80",
           "--request-timeout", "30", "--max-response-time", "60", "--exclude-path", "/metrics", "--report", "json,ndjson",
           "--report-dir", str(reports), "--no-color"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=tmp_path)
    print(run.stdout[-4000:])
    assert run.returncode == 0, run.stdout[-10000:] + run.stderr[-2000:]

    # The stateful phase ran, and it links a created video to its retrieval, content and deletion.
    report = json.loads(next(reports.glob("json-*.json")).read_text())
    assert report["phases"]["stateful"]["status"] == "success", report["phases"]
    pool = None
    for line in next(reports.glob("ndjson-*.ndjson")).read_text().splitlines():
        event = json.loads(line)
        if "LoadingFinished" in event:
            pool = event["LoadingFinished"]["statistic"]["resource_pool"]
    assert pool is not None and "POST /v1/videos" in pool["producer_labels"], pool
    assert CONSUMERS <= set(pool["consumer_labels"]), pool

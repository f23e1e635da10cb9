"""Property-based testing of the whole API from its own /openapi.json, on both deployments: every
schemathesis check (no 5xx; responses, status codes, headers and content types as documented;
requests the schema calls valid are accepted and invalid ones rejected; 405s list the allowed
methods; auth is enforced; a deleted video is gone) over examples, coverage and fuzzing, and the
stateful phase, which follows the schema's links from a created video to its retrieval, content
and deletion."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server.conftest import API_KEY

# The operations a created video links to, by method and path.
LINKED = {("get", "/v1/videos/{video_id}"), ("get", "/v1/videos/{video_id}/content"),
          ("delete", "/v1/videos/{video_id}")}


def schemathesis_exe() -> str:
    # the venv's own bin first: `make test` runs the venv's python without activating the venv
    beside = Path(sys.executable).parent / "schemathesis"
    exe = str(beside) if beside.is_file() else shutil.which("schemathesis")
    if exe is None:
        pytest.fail("schemathesis is not installed (pip install -e '.[dev]' installs it)")
    return exe


def test_the_schema_links_a_created_video_to_its_retrieval_content_and_deletion(deployment, client):
    spec = client.get("/openapi.json").json()
    op_ids = {(method, path): op.get("operationId") for path, item in spec["paths"].items()
              for method, op in item.items() if isinstance(op, dict)}
    created = spec["paths"]["/v1/videos"]["post"]["responses"]["200"]
    links = created.get("links", {})
    targets = {link.get("operationId") for link in links.values()}
    assert {op_ids[k] for k in LINKED} <= targets, f"links of POST /v1/videos 200: {json.dumps(links)}"
    for link in links.values():  # each passes the created video's id as the path's video_id
        assert link.get("parameters", {}).get("path.video_id", link.get("parameters", {}).get("video_id")) \
            == "$response.body#/id", link


def test_every_check_on_generated_malformed_and_stateful_requests(deployment, client, tmp_path):
    report = tmp_path / "report"
    cmd = [schemathesis_exe(), "run", f"{deployment.url}/openapi.json", "--checks", "all",
           "--header", f"Authorization: Bearer {API_KEY}", "--max-examples", "12", "--seed", "1",
           "--phases", "examples,coverage,fuzzing,stateful", "--workers", "1", "--max-time", "90",
           "--exclude-path", "/metrics", "--report", "junit", "--report-dir", str(report), "--no-color"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=tmp_path)
    print(run.stdout[-4000:])
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    # The stateful phase really ran (it is skipped when the schema has no links).
    assert "Stateful" in run.stdout and "Stateful (skipped" not in run.stdout, run.stdout[-4000:]

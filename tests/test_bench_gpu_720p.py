"""bench/gpu_720p.py --tiny: the 720p GPU check's code path (transformer forward, the four decode modes,
shape estimates, table + JSON) on a tiny model on the CPU, so the script cannot rot before a GPU runs it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_gpu_720p_tiny_runs_and_reports(tmp_path):
    out = tmp_path / "gpu_720p.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_720p.py"), "--tiny", "--json", str(out)],
                         capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1",
                                                                           "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["size"] == [128, 128, 17]
    assert len(result["rows"]) == 5
    for row in result["rows"]:
        assert row["error"] is None and row["seconds"] > 0
    decodes = [r for r in result["rows"] if r["step"].startswith("VAE decode")]
    assert all(r["estimate_bytes"] > 0 for r in decodes)
    assert decodes[0]["estimate_bytes"] > decodes[2]["estimate_bytes"]  # windows + tiles need less than the whole clip
    assert "VAE decode, whole clip" in run.stdout

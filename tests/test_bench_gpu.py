"""bench/gpu.py --tiny: the GPU check's code path (LongSANA settings, random weights, every variant the
machine has, table + JSON) on a tiny model on the CPU, so the script cannot rot before a GPU runs it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_gpu_tiny_runs_and_reports(tmp_path):
    out = tmp_path / "gpu.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--tiny", "--json", str(out)],
                         capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1",
                                                                           "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    rows = {r["variant"]: r for r in result["variants"]}
    assert result["steps"] == [1000, 960, 889, 727]  # LongSANA's schedule from configs/longsana-2b-480p.yaml
    for name in ("bf16 torch", "nvfp4 torch"):  # the CPU-capable variants ran and measured something
        r = rows[name]
        assert r["status"] == "ok", r
        assert r["time_to_first_block_s"] > 0 and r["blocks_per_s"] > 0 and r["frames_per_s"] > 0
        assert r["blocks"] == 3 and r["frames"] == 1 + 4 * (2 * 3 - 1) and r["state_bytes"] > 0
    # the GPU-only variants say why they did not run, instead of disappearing
    assert all(r["status"].startswith(("n/a", "skipped")) for n, r in rows.items() if n not in ("bf16 torch", "nvfp4 torch"))
    assert len(rows) == 7
    table = run.stdout
    assert "| variant |" in table and "nvfp4 torch" in table and "needs CUDA" in table

"""bench/gpu_check.py --tiny --device cpu: the prepared GPU check's dry run. Every stage runs in its own
subprocess with the modules the GPU machine lacks made unimportable, and writes its JSON."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("kernels", "longsana", "fullseq", "speed", "compile", "vae")


def test_gpu_check_dry_run_writes_every_stage(tmp_path):
    env = {"OMP_NUM_THREADS": "1", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--out", str(tmp_path), "--tiny",
                          "--device", "cpu", "--forbid-imports"], capture_output=True, text=True, timeout=1500, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stages"] == {name: "ok" for name in STAGES}, [
        (n, json.loads((tmp_path / f"{n}.json").read_text()).get("error")) for n in STAGES]
    lines = [line for line in run.stdout.splitlines() if line.startswith("gpu_check ")]
    assert [line.split()[1] for line in lines] == [*STAGES, "done"]  # one line per stage, as it finished

    kernels = json.loads((tmp_path / "kernels.json").read_text())["results"]
    attention = [r for r in kernels if r["op"] == "linear_attention"]
    assert len(attention) == 4 and all(r["rel_err_out"] < 1e-4 and r["triton_ms"] > 0 for r in attention)
    assert all(r["rel_err"] < 1e-5 for r in kernels if r["op"] == "nvfp4_gemm")

    longsana = json.loads((tmp_path / "longsana.json").read_text())
    assert longsana["blocks"] == 2 and longsana["steps"] == [1000, 960, 889, 727] and longsana["state_bytes"] > 0
    fullseq = json.loads((tmp_path / "fullseq.json").read_text())
    assert fullseq["frames"] == 9 and fullseq["guidance_scale"] == 6.0
    speed = json.loads((tmp_path / "speed.json").read_text())
    assert {r["variant"]: r["status"] for r in speed["variants"]}["bf16 torch"] == "ok"
    compiled = json.loads((tmp_path / "compile.json").read_text())
    assert all(r["compile"] is not None for r in compiled["variants"])
    vae = json.loads((tmp_path / "vae.json").read_text())
    assert vae["bf16_vs_fp32_levels"]["max"] >= 0 and vae["fp32"]["decoder_cache_bytes"] > 0

"""Run a file of kernel checks in a subprocess under TRITON_INTERPRET=1 (Triton's CPU interpreter).

The interpreter is chosen when triton is imported, so it needs a fresh process; the checks must
all run (no skips), or a broken kernel could hide behind a skip.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def assert_checks_pass_under_interpreter(checks: Path) -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(checks)]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    summary = output.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary) and "skipped" not in summary, output[-3000:]

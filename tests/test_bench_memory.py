"""bench/memory.py: the memory table is computed (the engine's code on the meta device, sizes from
storages), and the README's "Memory per request" table is exactly what it prints."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_memory_table_is_what_bench_memory_prints():
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "memory.py")], capture_output=True, text=True,
                         timeout=900, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    table = [line for line in run.stdout.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 5  # header, rule, the built-in model, two 2B models in fp32 and bf16
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Memory per request"):]
    readme_table = [line for line in section.splitlines() if line.startswith("|")][:len(table)]
    assert readme_table == table

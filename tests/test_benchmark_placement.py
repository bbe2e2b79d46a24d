"""benchmarks/placement.py runs at its tiny size (`--tiny`: 20 nodes, 200 servers, 5 decisions
per row) as a subprocess with the suite's environment: it must finish (exit 0) and print its
figure line for both scopes, decide() and reserve() as ratios to the raw node SELECT measured
in the same run. Never a speed. It needs MariaDB only (no libvirt, no panel process): it makes,
migrates and drops a database of its own (`panel_benchpl…`), never the suite's test database.
The benchmarks that need libvirt: tests/e2e/test_benchmarks.py.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURE = r"ratio decide/floor p50\s+\d+\.\d+×\s+reserve/floor p50\s+\d+\.\d+×"


def test_placement_benchmark_runs_at_tiny_size_and_prints_its_figure():
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.Popen([sys.executable, "benchmarks/placement.py", "--tiny"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8")
    try:
        text, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.terminate()  # SIGTERM: the script drops its database before it exits
        text, _ = proc.communicate(timeout=60)
        raise AssertionError(f"benchmarks/placement.py --tiny did not finish within 300 s:\n{text[-4000:]}")
    assert proc.returncode == 0, f"benchmarks/placement.py --tiny exited {proc.returncode}:\n{text[-4000:]}"
    assert len(re.findall(FIGURE, text)) == 2, f"no figure line /{FIGURE}/ for both scopes in:\n{text[-4000:]}"

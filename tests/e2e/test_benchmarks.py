"""The benchmarks under benchmarks/ that need libvirt run at their tiny size (`--tiny`), each as a
subprocess with the suite's environment: each must finish (exit 0) and print its figure line,
the ratio to the raw libvirt/QEMU/database floor measured in the same run. A change that breaks
a benchmark fails here. The figures themselves are never checked: a tiny run on a busy CI
machine measures nothing.

Each script starts its own panel as the e2e fixture does (tests/e2e/conftest.py `running_panel`:
its own `panel_bench…` database, dropped at the end) on the local libvirt, with its own NAT test
range and its own domains, so the four run at the same time: the module costs about the longest
of them, not the sum. placement.py needs no libvirt: tests/test_benchmark_placement.py.
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import TINY_GUEST

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 600  # seconds for all four together; a tiny run takes well under a minute alone
NUMBER = r"\d+\.\d+"
FIGURES = {
    "power_action": (rf"ratio panel/direct\s+p50\s+{NUMBER}×\s+p99\s+{NUMBER}×", 2),  # stop and start
    "provision": (rf"ratio panel/floor\s+p50\s+{NUMBER}×\s+p95\s+{NUMBER}×", 1),
    "backup": (rf"throughput ratio, folder on the node, to the floor: {NUMBER} ", 1),
    "server_list": (rf"ratio panel/floor\s+p50\s+{NUMBER}×\s+p95\s+{NUMBER}×", 1),
    "ova_export": (rf"throughput ratio, OVA export to qemu-img convert: {NUMBER} ", 1),
    "metrics_graph": (rf"ratio api/floor\s+p50\s+{NUMBER}×\s+p95\s+{NUMBER}×", 1),
    "metrics_render": (rf"ratio uPlot/floor\s+p50\s+{NUMBER}×\s+p95\s+{NUMBER}×", 1),
    "metrics_scrape": (rf"ratio scrape/floor\s+p50\s+{NUMBER}×\s+p95\s+{NUMBER}×", 1),
    "metrics_collect": (rf"ratio collect/floor\s+p50\s+{NUMBER}×\s+p95\s+{NUMBER}×", 1),
    "metrics_retention": (rf"ratio upkeep/insert {NUMBER}×", 1),
}


def start(script: str, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"}
    with open(out, "wb") as log:
        return subprocess.Popen([sys.executable, f"benchmarks/{script}.py", "--tiny"], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM lets a script clean up (its panel, database, domains, NAT range) before it exits."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """All four scripts started (a second apart, so their panels do not set up the shared
    bridge at the same instant); yields {script: (process, output file)} and the deadline."""
    if not (TINY_GUEST / "vmlinuz").exists():
        pytest.fail("the tiny guest is missing: run deploy/build_demo_os.sh (make test does)")
    folder = tmp_path_factory.mktemp("benchmarks")
    runs = {}
    try:
        for script in FIGURES:
            if runs:
                time.sleep(1)
            out = folder / f"{script}.out"
            runs[script] = (start(script, out), out)
        yield runs, time.monotonic() + TIMEOUT
    finally:
        for proc, _out in runs.values():
            stop(proc)


@pytest.mark.parametrize("script", list(FIGURES))
def test_benchmark_runs_at_tiny_size_and_prints_its_figure(tiny_runs, script):
    runs, deadline = tiny_runs
    proc, out = runs[script]
    try:
        proc.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        stop(proc)
        pytest.fail(f"benchmarks/{script}.py --tiny did not finish within {TIMEOUT} s:\n"
                    f"{out.read_text(errors='replace')[-4000:]}")
    text = out.read_text(errors="replace")
    assert proc.returncode == 0, f"benchmarks/{script}.py --tiny exited {proc.returncode}:\n{text[-4000:]}"
    pattern, count = FIGURES[script]
    assert len(re.findall(pattern, text)) == count, f"no figure line /{pattern}/ ×{count} in:\n{text[-4000:]}"

"""A live panel for the benchmarks: the body of the `live_panel` e2e fixture as a context manager.

Everything else (LivePanel, the MariaDB and libvirt helpers) is imported from
tests/e2e/conftest.py, so benchmarks and end-to-end tests start the panel the same way:
its own MariaDB database, `manage.py runpanel --no-worker` (daphne + local node registration),
optionally `manage.py qcluster`, and an admin API key. On leaving — normally, on an exception,
on Ctrl-C or SIGTERM — the processes are stopped, the panel's domains removed and the database
dropped.
"""

import contextlib
import math
import shutil
import signal
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.e2e.conftest import TINY_GUEST, running_panel  # noqa: E402


def _sigterm_to_interrupt() -> None:
    """Let SIGTERM unwind like Ctrl-C, so the `finally` clean-up runs."""

    def handler(_signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def live_panel(*, worker: bool = True, env: dict | None = None, tag: str = "bench"):
    """Start a panel on its own database; yields the LivePanel (url, admin_key, manage, spawn…)."""
    if worker and not (TINY_GUEST / "vmlinuz").exists():
        raise SystemExit("the tiny guest is missing: run tests/infra/build_tiny_guest.sh (make test does)")
    _sigterm_to_interrupt()
    data = Path(tempfile.mkdtemp(prefix=f"{tag}-"))
    ok = False
    try:
        with running_panel(data, tag=tag, worker=worker, env=env) as panel:
            yield panel
        ok = True
    finally:
        if ok:
            shutil.rmtree(data, ignore_errors=True)
        else:
            print(f"(panel logs kept in {data})", file=sys.stderr)


# -- statistics ----------------------------------------------------------------------------------
def percentile(values, p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); p in 0..100."""
    xs = sorted(values)
    if not xs:
        return math.nan
    k = (len(xs) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summary(values) -> dict:
    xs = list(values)
    return {"n": len(xs), "p50": percentile(xs, 50), "p95": percentile(xs, 95), "p99": percentile(xs, 99),
            "mean": sum(xs) / len(xs) if xs else math.nan, "max": max(xs) if xs else math.nan}

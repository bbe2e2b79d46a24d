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
import os
import secrets
import shutil
import signal
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.e2e.conftest import (  # noqa: E402
    TINY_GUEST,
    LivePanel,
    _answers,
    _mysql,
    _remove_domains,
    free_port,
    wait_for,
)


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
    instance = f"{tag}{secrets.token_hex(4)}"
    database = f"panel_{instance}"
    data = Path(tempfile.mkdtemp(prefix=f"{instance}-"))
    port = free_port()
    panel_env = {
        **os.environ,
        "DATABASE_URL": f"mysql://root@localhost/{database}",
        "PANEL_DATA_DIR": str(data),
        "PANEL_INSTANCE_ID": instance,
        "TINY_GUEST_DIR": str(TINY_GUEST),
        "STOP_TIMEOUT_SECONDS": "20",
        "OPERATION_STALE_SECONDS": "6",
        "RECONCILE_INTERVAL_MINUTES": "60",
        "WORKERS": "2",
        "PORT": str(port),
        **(env or {}),
    }
    panel_env.pop("REDIS_URL", None)
    panel = LivePanel(url=f"http://127.0.0.1:{port}", env=panel_env, admin_password="", admin_key="",
                      instance=instance, logs=data)
    ok = False
    _mysql(f"CREATE DATABASE {database} CHARACTER SET utf8mb4")
    try:
        panel.manage("migrate", "--noinput", "-v", "0")
        panel.manage("collectstatic", "--noinput", "-v", "0")
        panel.admin_password = panel.manage("create_admin").strip().split(" / ")[-1]
        panel.admin_key = panel.manage("create_api_key", "--scope", "admin", "--name", "bench").strip().splitlines()[-1]
        panel.spawn("web", "runpanel", "--no-worker", "--bind", "127.0.0.1", "--port", str(port))
        if worker:
            panel.start_worker()
        wait_for(lambda: _answers(panel.url + "/login/"), 60, "the panel to answer")
        yield panel
        ok = True
    finally:
        panel.stop_all()
        if worker:
            with contextlib.suppress(Exception):
                _remove_domains(instance)
        _mysql(f"DROP DATABASE IF EXISTS {database}")
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

"""A live panel for the benchmarks: the body of the `live_panel` e2e fixture as a context manager.

Everything else (LivePanel, the MariaDB and libvirt helpers) is imported from
tests/e2e/conftest.py, so benchmarks and end-to-end tests start the panel the same way:
its own MariaDB database, `manage.py runpanel --no-worker` (daphne + local node registration),
optionally `manage.py qcluster`, and an admin API key. On leaving — normally, on an exception,
on Ctrl-C or SIGTERM — the processes are stopped, the panel's domains removed and the database
dropped.

Also shared by the scripts: `parse_args` (the `--tiny` flag), `own_nat_range` (the local node's
NAT network in a test range of the script's own) and the statistics.
"""

import argparse
import contextlib
import ipaddress
import math
import os
import shutil
import signal
import subprocess
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
        raise SystemExit("the tiny guest is missing: run deploy/build_demo_os.sh (make test does)")
    _sigterm_to_interrupt()
    data = Path(tempfile.mkdtemp(prefix=f"{tag}-"))
    ok = False
    try:
        with running_panel(data, tag=tag, worker=worker, env=env) as panel:
            try:
                yield panel
            finally:
                _stop_worker(panel)
        ok = True
    finally:
        if ok:
            shutil.rmtree(data, ignore_errors=True)
        else:
            print(f"(panel logs kept in {data})", file=sys.stderr)


def _stop_worker(panel, timeout: float = 20) -> None:
    """SIGTERM to the qcluster process alone: it stops its pusher and workers itself in about
    a second. (running_panel's SIGTERM to the whole process group reaches them all at once, and
    the cluster then hangs until the 15 s SIGKILL.)"""
    proc = panel.procs.get("worker")
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return  # running_panel kills the group
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # anything of it left over
    panel.procs.pop("worker", None)


# -- arguments -----------------------------------------------------------------------------------
def parse_args(ap: argparse.ArgumentParser, tiny: dict) -> argparse.Namespace:
    """`ap`'s arguments plus `--tiny`: the sizes in `tiny` become the defaults (arguments given
    explicitly still win), for a run of a few seconds that only shows the script still works —
    the suite runs every script so (tests/e2e/test_benchmarks.py, tests/test_benchmark_placement.py)."""
    sizes = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in tiny.items())
    ap.add_argument("--tiny", action="store_true",
                    help=f"a tiny run (the suite's): {sizes}; explicit arguments still win")
    if "--tiny" in sys.argv[1:]:
        ap.set_defaults(**tiny)
    return ap.parse_args()


# -- the local node's NAT network in a range of the script's own ---------------------------------
NAT_BRIDGE = "pnl-local"  # nodes/local.py: the local node's NAT network


def host_net_state(cidr: str) -> dict:
    """Whether the gateway address of `cidr` is on the bridge and its MASQUERADE rule is in."""
    net = ipaddress.ip_network(cidr)
    gateway = f"{next(net.hosts())}/{net.prefixlen}"
    addr = subprocess.run(["ip", "-o", "addr", "show", "dev", NAT_BRIDGE], capture_output=True, text=True)
    masq = subprocess.run(["iptables", "-t", "nat", "-C", "POSTROUTING", "-s", cidr, "!", "-d", cidr,
                           "-j", "MASQUERADE"], capture_output=True, text=True)
    return {"gateway": gateway, "address": f" {gateway} " in addr.stdout, "masquerade": masq.returncode == 0}


def undo_host_net(cidr: str, before: dict) -> None:
    """Remove the gateway address and the MASQUERADE rule again if they came after `before`."""
    after = host_net_state(cidr)
    if after["address"] and not before["address"]:
        subprocess.run(["ip", "addr", "del", after["gateway"], "dev", NAT_BRIDGE], capture_output=True)
    if after["masquerade"] and not before["masquerade"]:
        subprocess.run(["iptables", "-t", "nat", "-D", "POSTROUTING", "-s", cidr, "!", "-d", cidr, "-j", "MASQUERADE"],
                       capture_output=True)


@contextlib.contextmanager
def own_nat_range(cidr: str):
    """The panel env for a local node whose NAT network is `cidr` (not the e2e tests'
    10.77.5.0/24, so a run beside them shares no addresses), listening on its gateway too; the
    host's address and rule are removed again at the end if this run added them."""
    before = host_net_state(cidr)
    gateway = str(next(ipaddress.ip_network(cidr).hosts()))
    try:
        yield {"LOCAL_NAT_CIDR": cidr, "BIND": f"127.0.0.1,{gateway}"}
    finally:
        undo_host_net(cidr, before)


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

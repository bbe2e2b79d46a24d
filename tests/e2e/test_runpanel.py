"""`manage.py runpanel` on the quick start's defaults (SQLite): web and worker together,
the local node registered, a server created and deleted, and Ctrl-C stops everything."""

import os
import signal
import subprocess
import sys
import time

import requests

from tests.e2e.conftest import ROOT, TINY_GUEST, free_port, wait_for


def live_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, group = fields[0], int(fields[2])
        if group == pgid and state not in ("Z", "X"):
            pids.append(int(entry))
    return pids


def test_runpanel_serves_works_on_sqlite_and_stops_cleanly_on_ctrl_c(tmp_path):
    port = free_port()
    env = {**os.environ, "PANEL_DATA_DIR": str(tmp_path), "PORT": str(port), "TINY_GUEST_DIR": str(TINY_GUEST),
           "PANEL_INSTANCE_ID": f"rp{port}", "STOP_TIMEOUT_SECONDS": "5",
           # The demo network of the local node, in a test range of its own; the guest fetches
           # its install config from the panel at its gateway.
           "LOCAL_NAT_CIDR": "10.77.8.0/24", "BIND": "127.0.0.1,10.77.8.1",
           "TEMPLATE_SHARE": str(ROOT / ".cache" / "os-templates")}
    env.pop("DATABASE_URL", None)  # the default: SQLite in the data folder

    def manage(*args):
        out = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout

    manage("migrate", "--noinput", "-v", "0")
    assert (tmp_path / "panel.sqlite3").exists() and (tmp_path / "secret_key").exists()
    key = manage("create_api_key", "--scope", "admin", "--name", "quickstart").strip().splitlines()[-1]
    log = open(tmp_path / "runpanel.log", "wb")
    proc = subprocess.Popen([sys.executable, "manage.py", "runpanel"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _ok(url + "/login/"), 60, "runpanel to answer")
        auth = {"Authorization": f"Token {key}"}
        nodes = requests.get(url + "/api/v1/nodes/", headers=auth, timeout=10).json()["results"]
        assert [n["uri"] for n in nodes] == ["qemu:///system"] and nodes[0]["ram_mib"] > 0
        plan = requests.post(url + "/api/v1/plans/", headers=auth, timeout=10,
                             json={"name": "p", "vcpus": 1, "ram_mib": 128, "disk_gib": 1}).json()
        customer = requests.post(url + "/api/v1/customers/", headers=auth, timeout=10,
                                 json={"name": "Q", "email": "q@example.com"}).json()
        r = requests.post(url + "/api/v1/servers/", headers=auth, timeout=10,
                          json={"customer": customer["id"], "plan": plan["id"], "os_template": "tiny", "hostname": "quick"})
        assert r.status_code == 202, r.text

        def finished(op_id):
            op = requests.get(f"{url}/api/v1/operations/{op_id}/", headers=auth, timeout=10).json()
            return op if op["status"] in ("succeeded", "failed") else None

        op = wait_for(lambda: finished(r.json()["id"]), 90, "the create operation")
        assert op["status"] == "succeeded", op
        r = requests.delete(f"{url}/api/v1/servers/{op['server']}/", headers=auth, timeout=10)
        assert wait_for(lambda: finished(r.json()["id"]), 60, "the delete")["status"] == "succeeded"

        assert len(live_pids(proc.pid)) >= 3  # runpanel, daphne, the worker
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert time.monotonic() - started < 20
        wait_for(lambda: not live_pids(proc.pid), 10, "every child of runpanel to exit")
        assert b"panel stopped" in (tmp_path / "runpanel.log").read_bytes()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def _ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False

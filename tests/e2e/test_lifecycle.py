"""The whole life of a server on real libvirtd + QEMU, through the API of a live panel."""

import re
import subprocess
import time

import libvirt
import pytest

from tests.e2e.conftest import make_tenant, serial_log, wait_for
from tests.guest import guest_command, wait_shell


def domain_name(server: dict) -> str:
    return "vps-" + server["uuid"].replace("-", "")[:12]


def libvirt_state(name: str):
    conn = libvirt.open("qemu:///system")
    try:
        dom = conn.lookupByName(name)
        return dom.state()[0], dom.ID()
    except libvirt.libvirtError:
        return None, None
    finally:
        conn.close()


def uptimes(log: str) -> list[float]:
    return [float(v) for v in re.findall(r"TINY-GUEST uptime (\d+(?:\.\d+)?)", log)]


def wait_booted(uuid_hex: str, after: int = 0, timeout: float = 60) -> str:
    """Wait for a 'booted' line in the serial log past offset `after` and an uptime line after
    it; returns the log from that boot on."""
    def booted():
        tail = serial_log(uuid_hex)[after:]
        if "TINY-GUEST booted" not in tail:
            return None
        boot = tail.rsplit("TINY-GUEST booted", 1)[1]
        return boot if uptimes(boot) else None

    return wait_for(booted, timeout, "the guest to boot and print its uptime", interval=0.3)


@pytest.fixture
def alice(live_panel):
    return make_tenant(live_panel, "alice")


def test_a_server_lives_its_whole_life_on_real_libvirt(live_panel, plan_id, alice):
    panel = live_panel
    # The customer creates a server.
    r = panel.call(alice.key, "POST", "/api/v1/servers/", json={"plan": plan_id, "os_template": "tiny", "hostname": "life-1"})
    assert r.status_code == 202, r.text
    op = panel.wait_operation(alice.key, r.json()["id"])
    assert op["status"] == "succeeded", op
    server = panel.call(alice.key, "GET", f"/api/v1/servers/{op['server']}/").json()
    sid, name, uuid_hex = server["id"], domain_name(server), server["uuid"].replace("-", "")
    assert server["state"] == "running"
    assert libvirt_state(name)[0] == libvirt.VIR_DOMAIN_RUNNING
    wait_booted(uuid_hex)

    # Reboot: a new QEMU boot (new domain id) and the guest's uptime starts again.
    _, boot_id = libvirt_state(name)
    # Let the uptime grow well past what a boot takes (TCG on a busy machine: up to ~10 s).
    wait_for(lambda: uptimes(serial_log(uuid_hex))[-1] >= 20, 60, "the guest's uptime to reach 20 s")
    offset = len(serial_log(uuid_hex))
    uptime_before = uptimes(serial_log(uuid_hex))[-1]
    r = panel.call(alice.key, "POST", f"/api/v1/servers/{sid}/reboot/")
    assert r.status_code == 202, r.text
    op = panel.wait_operation(alice.key, r.json()["id"])
    assert op["status"] == "succeeded", op
    state, new_boot_id = libvirt_state(name)
    assert state == libvirt.VIR_DOMAIN_RUNNING and new_boot_id != boot_id
    after = wait_booted(uuid_hex, offset)
    assert uptimes(after)[0] < uptime_before
    assert "TINY-GUEST poweroff" in serial_log(uuid_hex)[offset:]  # it shut down gracefully, not by force

    # Stop (graceful), start.
    r = panel.call(alice.key, "POST", f"/api/v1/servers/{sid}/stop/")
    op = panel.wait_operation(alice.key, r.json()["id"])
    assert op["status"] == "succeeded", op
    assert libvirt_state(name)[0] == libvirt.VIR_DOMAIN_SHUTOFF
    assert panel.call(alice.key, "GET", f"/api/v1/servers/{sid}/").json()["state"] == "stopped"
    r = panel.call(alice.key, "POST", f"/api/v1/servers/{sid}/start/")
    assert panel.wait_operation(alice.key, r.json()["id"])["status"] == "succeeded"
    assert libvirt_state(name)[0] == libvirt.VIR_DOMAIN_RUNNING

    # Suspended by the provider: the customer cannot start it, and is told why.
    r = panel.call(panel.admin_key, "POST", f"/api/v1/servers/{sid}/suspend/", json={"reason": "invoice 17 overdue"})
    assert r.status_code == 202, r.text
    assert panel.wait_operation(alice.key, r.json()["id"])["status"] == "succeeded"
    assert libvirt_state(name)[0] == libvirt.VIR_DOMAIN_SHUTOFF
    r = panel.call(alice.key, "POST", f"/api/v1/servers/{sid}/start/")
    assert r.status_code == 409 and "invoice 17 overdue" in r.json()["detail"]
    assert libvirt_state(name)[0] == libvirt.VIR_DOMAIN_SHUTOFF
    r = panel.call(panel.admin_key, "POST", f"/api/v1/servers/{sid}/unsuspend/")
    assert panel.wait_operation(alice.key, r.json()["id"])["status"] == "succeeded"
    assert libvirt_state(name)[0] == libvirt.VIR_DOMAIN_RUNNING
    assert panel.call(alice.key, "GET", f"/api/v1/servers/{sid}/").json()["state"] == "running"

    # Deleted: no domain, no disk.
    conn = libvirt.open("qemu:///system")
    disk = conn.lookupByName(name).XMLDesc(0).split("<source file='")[1].split("'")[0]
    conn.close()
    r = panel.call(panel.admin_key, "DELETE", f"/api/v1/servers/{sid}/")
    assert r.status_code == 202, r.text
    assert panel.wait_operation(alice.key, r.json()["id"])["status"] == "succeeded"
    assert libvirt_state(name) == (None, None)
    import os

    assert not os.path.exists(disk)
    assert panel.call(alice.key, "GET", f"/api/v1/servers/{sid}/").status_code == 404
    assert panel.call(alice.key, "POST", f"/api/v1/servers/{sid}/stop/").status_code == 404


def test_a_worker_killed_mid_operation_is_settled_and_reconciled(live_panel, plan_id, alice):
    panel = live_panel
    r = panel.call(alice.key, "POST", "/api/v1/servers/", json={"plan": plan_id, "os_template": "tiny", "hostname": "crash-1"})
    op = panel.wait_operation(alice.key, r.json()["id"])
    assert op["status"] == "succeeded", op
    server = panel.call(alice.key, "GET", f"/api/v1/servers/{op['server']}/").json()
    sid, name = server["id"], domain_name(server)
    # A guest that does not hear the ACPI button (its acpid is gone): a graceful stop waits
    # out its timeout, and the worker dies in the middle of it.
    uuid_hex = server["uuid"].replace("-", "")
    run = subprocess.run
    wait_shell(run, name, lambda: serial_log(uuid_hex), timeout=60)
    code, out = guest_command(run, name, lambda: serial_log(uuid_hex), "killall acpid", timeout=40)
    assert code == 0, out
    r = panel.call(alice.key, "POST", f"/api/v1/servers/{sid}/stop/", json={"timeout": 60})
    stop_id = r.json()["id"]
    wait_for(lambda: panel.call(alice.key, "GET", f"/api/v1/operations/{stop_id}/").json()["status"] == "running",
             30, "the stop to start running")
    time.sleep(1)
    panel.kill_worker()
    panel.start_worker()
    time.sleep(7)  # past OPERATION_STALE_SECONDS without a heartbeat
    panel.manage("reconcile")
    op = panel.call(alice.key, "GET", f"/api/v1/operations/{stop_id}/").json()
    assert op["status"] == "failed" and "interrupted" in op["error"], op
    assert "worker stopped" in panel.call(panel.admin_key, "GET", f"/api/v1/operations/{stop_id}/").json()["error"]
    # Database and libvirt agree.
    server = panel.call(alice.key, "GET", f"/api/v1/servers/{sid}/").json()
    state = libvirt_state(name)[0]
    expected = {libvirt.VIR_DOMAIN_RUNNING: "running", libvirt.VIR_DOMAIN_SHUTOFF: "stopped"}[state]
    assert server["state"] == expected
    # And the server takes new operations with the restarted worker.
    r = panel.call(alice.key, "POST", f"/api/v1/servers/{sid}/stop/", json={"force": True})
    assert r.status_code == 202, r.text
    assert panel.wait_operation(alice.key, r.json()["id"])["status"] == "succeeded"
    assert libvirt_state(name)[0] == libvirt.VIR_DOMAIN_SHUTOFF

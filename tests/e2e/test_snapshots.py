"""Snapshots on the test cluster's node: real libvirt external snapshots of a running QEMU guest
(disk-only and with memory), reverts, online merges, and a backup after a snapshot and a
revert that restores the right data. One guest for the module; its data is a marker written
to its raw disk at 64 MiB, above the installed system."""

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import ClusterGuest, cluster_with_node, create_tiny_server, make_tenant, wait_for

pytestmark = pytest.mark.e2e

MARK_AT = 64  # MiB into the disk


class MarkerGuest(ClusterGuest):
    READY_TIMEOUT, COMMAND_TIMEOUT = 120, 60

    # (Typed on the guest's keyboard: short lines get through a busy TCG guest more reliably.)
    def write(self, marker: str) -> None:
        # In the guest's RAM (/tmp is in the initramfs) and on its disk: a memory revert brings both.
        self.sh(f"(echo {marker} >/tmp/m)")  # ( ): the helper redirects the last command
        self.sh(f"dd if=/tmp/m of=/dev/vda bs=1M seek={MARK_AT} conv=fsync 2>/dev/null")

    def disk_marker(self) -> str:
        self.sh("(sync; echo 3 >/proc/sys/vm/drop_caches)")
        return self.sh(f"(dd if=/dev/vda bs=1M skip={MARK_AT} count=1 2>/dev/null | head -c 5; echo)").strip()[-5:]

    def ram_marker(self) -> str:
        return self.sh("cat /tmp/m").strip()[-5:]

    def uptime(self) -> float:
        return float(self.sh("cut -d' ' -f1 /proc/uptime").split()[-1])

    def boots(self) -> int:
        return self.log().count("TINY-GUEST installed")

    def disk_file(self) -> str:
        return self.run(["virsh", "-c", "qemu:///system", "domblklist", self.name]).stdout


@pytest.fixture(scope="module")
def env(live_panel, test_cluster):
    with cluster_with_node(live_panel, test_cluster, "snapshots", "10.77.1.180", "10.77.1.189", snapshots=2,
                           snapshot_memory=True, backups=3) as env:
        tenant = make_tenant(live_panel, "snapshots")
        server = create_tiny_server(live_panel, env, tenant, "snap-1")
        yield {**env, "tenant": tenant, "server": server, "guest": MarkerGuest(test_cluster, server)}


def call(panel, env, method, path, expect=202, **kw) -> dict:
    r = panel.call(env["tenant"].key, method, f"/api/v1/servers/{env['server']['id']}/snapshots/{path}", **kw)
    assert r.status_code == expect, r.text
    return r.json()


def done(panel, env, answer: dict, timeout: float = 240) -> dict:
    op = panel.wait_operation(env["tenant"].key, answer["id"], timeout=timeout)
    assert op["status"] == "succeeded", op
    return op


def snapshots(panel, env) -> list[dict]:
    return call(panel, env, "GET", "", expect=200)["results"]


def test_a_disk_snapshot_reverts_the_marker_and_a_memory_snapshot_resumes_the_same_boot(live_panel, env):
    panel, guest = live_panel, env["guest"]
    guest.write("MARKA")
    done(panel, env, call(panel, env, "POST", "", json={"name": "disk-only"}))
    disk_only = snapshots(panel, env)[0]
    assert (disk_only["status"], disk_only["memory"]) == ("ready", False)
    assert "snap" in guest.disk_file()  # the running domain writes the overlay
    guest.write("MARKB")
    assert guest.disk_marker() == "MARKB"
    boots = guest.boots()
    done(panel, env, call(panel, env, "POST", f"{disk_only['id']}/revert/"))
    wait_for(lambda: guest.boots() > boots, 120, "the reverted guest to boot")
    assert guest.disk_marker() == "MARKA"

    guest.write("MARKC")
    at_snapshot = guest.uptime()
    done(panel, env, call(panel, env, "POST", "", json={"name": "with-memory", "memory": True}))
    time.sleep(5)
    guest.write("MARKD")
    before_revert = guest.uptime()
    boots = guest.boots()
    with_memory = snapshots(panel, env)[0]
    assert with_memory["memory"] and with_memory["size_bytes"] > 0
    done(panel, env, call(panel, env, "POST", f"{with_memory['id']}/revert/"))
    resumed = guest.uptime()
    print(f"uptime: {at_snapshot:.1f} s at the snapshot, {before_revert:.1f} s before the revert, "
          f"{resumed:.1f} s after it")
    assert at_snapshot <= resumed < before_revert  # the same boot, from where it was
    assert guest.boots() == boots
    assert (guest.disk_marker(), guest.ram_marker()) == ("MARKC", "MARKC")
    server = panel.call(env["tenant"].key, "GET", f"/api/v1/servers/{env['server']['id']}/").json()
    assert server["state"] == "running"


def test_beyond_the_limit_is_refused_and_revert_while_busy_too(live_panel, env):
    panel = live_panel
    assert len(snapshots(panel, env)) == 2
    refused = call(panel, env, "POST", "", expect=409, json={})
    assert refused["code"] == "snapshot_limit"
    assert len(snapshots(panel, env)) == 2


def test_deleting_the_snapshots_of_a_running_guest_merges_them_online(live_panel, env):
    panel, guest = live_panel, env["guest"]
    boots = guest.boots()
    guest.write("MARKE")
    for snapshot in snapshots(panel, env):  # newest first: each is the top when it goes
        done(panel, env, call(panel, env, "DELETE", f"{snapshot['id']}/"))
    assert snapshots(panel, env) == []
    assert "snap" not in guest.disk_file() and "disk0" in guest.disk_file()
    assert guest.boots() == boots and guest.disk_marker() == "MARKE"
    guest.write("MARKF")  # it keeps writing, to its own disk again
    assert guest.disk_marker() == "MARKF"


def test_a_backup_after_a_snapshot_and_a_revert_restores_the_right_data(live_panel, env):
    panel, guest, admin = live_panel, env["guest"], live_panel.admin_key
    server = env["server"]
    folder = Path(f"/var/tmp/e2e-snapshot-backups-{server['uuid'][:8]}")
    target = panel.call(admin, "POST", "/api/v1/backup-targets/", json={
        "name": "snapshots-folder", "kind": "node", "path": str(folder)})
    assert target.status_code == 201, target.text
    try:
        backup_after_revert(panel, env, guest, admin, server, target.json()["id"])
    finally:  # the folder's pool was defined on the nodes' libvirtd
        pools = subprocess.run(["virsh", "-c", "qemu:///system", "pool-list", "--all", "--name"],
                               capture_output=True, text=True).stdout.split()
        for pool in (p for p in pools if p.startswith(f"backups-{target.json()['id']}-")):
            subprocess.run(["virsh", "-c", "qemu:///system", "pool-destroy", pool], capture_output=True)
            subprocess.run(["virsh", "-c", "qemu:///system", "pool-undefine", pool], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def backup_after_revert(panel, env, guest, admin, server, target: int) -> None:
    done(panel, env, call(panel, env, "POST", "", json={"name": "before-backup"}))
    guest.write("MARKG")
    boots = guest.boots()
    done(panel, env, call(panel, env, "POST", f"{snapshots(panel, env)[0]['id']}/revert/"))
    wait_for(lambda: guest.boots() > boots, 120, "the reverted guest to boot")
    assert guest.disk_marker() == "MARKF"
    r = panel.call(admin, "POST", f"/api/v1/servers/{server['id']}/backup/", json={"target": target})
    assert r.status_code == 202, r.text
    assert panel.wait_operation(admin, r.json()["id"], timeout=180)["status"] == "succeeded"
    backup = panel.call(admin, "GET", f"/api/v1/servers/{server['id']}/backups/").json()
    backup = (backup["results"] if isinstance(backup, dict) else backup)[0]
    assert backup["kind"] == "full" and backup["status"] == "done", backup
    guest.write("MARKH")
    boots = guest.boots()
    r = panel.call(admin, "POST", f"/api/v1/servers/{server['id']}/restore/", json={"backup": backup["id"]})
    assert r.status_code == 202, r.text
    op = panel.wait_operation(admin, r.json()["id"], timeout=240)
    assert op["status"] == "succeeded", op
    wait_for(lambda: guest.boots() > boots, 120, "the restored guest to boot")
    assert guest.disk_marker() == "MARKF"
    assert snapshots(panel, env) == []  # they were of the replaced disk
    assert "snap" not in guest.disk_file()

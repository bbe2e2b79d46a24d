"""Data disks on the test cluster's real libvirt and QEMU: a disk hot-plugged into the running
tiny guest is seen by it, written, survives a reboot; a backup of the server with its data disk
(a running guest: one libvirt job for both disks) restores both disks' data after the guest
destroyed them; deleting the disk takes it out of the running guest (its kernel releases it)."""

import pytest

from tests.e2e.conftest import ClusterGuest, backups_of, cluster_with_node, create_tiny_server, make_tenant, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def disks_env(live_panel, test_cluster):
    with cluster_with_node(live_panel, test_cluster, "disks", "10.77.1.150", "10.77.1.159", backups=2,
                           data_disks=1, data_disk_gib=1) as env:
        tenant = make_tenant(live_panel, "disks")
        server = create_tiny_server(live_panel, env, tenant, "disks-1")
        yield {**env, "tenant": tenant, "server": server, "guest": ClusterGuest(test_cluster, server)}


def awaited(panel, key, response, timeout: float = 240) -> dict:
    assert response.status_code == 202, response.text
    op = panel.wait_operation(key, response.json()["id"], timeout=timeout)
    assert op["status"] == "succeeded", op
    return op


@pytest.mark.xfail(strict=False, reason=(
    "an open defect (docs/data-disks.md): after the server with a data disk boots again (a reboot, a "
    "stop and start), the guest's writes to its disks hung in 3 of 4 runs on this TCG host"))
def test_a_hot_plugged_disk_is_seen_written_kept_over_a_reboot_and_backed_up_with_the_system_disk(
        live_panel, disks_env, tmp_path):
    panel, tenant, guest = live_panel, disks_env["tenant"], disks_env["guest"]
    server = disks_env["server"]
    disks = f"/api/v1/servers/{server['id']}/disks/"
    assert "vdb" not in guest.sh("ls /sys/block")
    # Over the plan: refused, nothing made.
    over = panel.call(tenant.key, "POST", disks, json={"name": "big", "size_gib": 2})
    assert over.status_code == 409 and over.json()["code"] == "data_disk_limit", over.text
    awaited(panel, tenant.key, panel.call(tenant.key, "POST", disks, json={"name": "data", "size_gib": 1}))
    wait_for(lambda: "vdb" in guest.sh("ls /sys/block"), 60, "the guest to see the hot-plugged vdb")
    assert guest.sh("cat /sys/block/vdb/size") == str(2**30 // 512)
    print(guest.sh("grep -i virtio /proc/interrupts"))
    print(guest.sh("dd if=/dev/vdb bs=4k count=1 2>/dev/null | md5sum"))
    guest.sh("dd if=/dev/urandom of=/dev/vdb bs=1M count=8 conv=fsync 2>/dev/null; sync", timeout=90)
    data = guest.sh("dd if=/dev/vdb bs=1M count=8 2>/dev/null | md5sum").split()[0]
    system = guest.md5(64, 8)

    boots = guest.log().count("TINY-GUEST installed")
    awaited(panel, tenant.key, panel.call(tenant.key, "POST", f"/api/v1/servers/{server['id']}/reboot/", json={}))
    wait_for(lambda: guest.log().count("TINY-GUEST installed") > boots, 120, "the guest to boot again")
    assert guest.sh("dd if=/dev/vdb bs=1M count=8 2>/dev/null | md5sum").split()[0] == data

    r = panel.call(panel.admin_key, "POST", "/api/v1/backup-targets/", json={"name": "disks-folder", "kind": "dir",
                                                                              "path": str(tmp_path)})
    assert r.status_code == 201, r.text
    awaited(panel, panel.admin_key, panel.call(panel.admin_key, "POST", f"/api/v1/servers/{server['id']}/backup/",
                                               json={"target": r.json()["id"]}))
    backup = backups_of(panel, tenant.key, server["id"])[0]
    assert backup["status"] == "done" and len(list(tmp_path.rglob("*-vdb.qcow2*"))) == 1

    # 2 MiB each changes both checksums; writes under TCG on a loaded CI host crawl (16 MiB took > 40 s).
    guest.sh("dd if=/dev/zero of=/dev/vdb bs=1M count=2 conv=fsync 2>/dev/null; "
             "dd if=/dev/zero of=/dev/vda bs=1M seek=64 count=2 conv=fsync 2>/dev/null; sync", timeout=120)
    assert guest.sh("dd if=/dev/vdb bs=1M count=8 2>/dev/null | md5sum").split()[0] != data
    boots = guest.log().count("TINY-GUEST installed")
    awaited(panel, tenant.key, panel.call(tenant.key, "POST", f"/api/v1/servers/{server['id']}/restore/",
                                          json={"backup": backup["id"]}))
    wait_for(lambda: guest.log().count("TINY-GUEST installed") > boots, 120, "the restored guest to boot")
    assert guest.sh("dd if=/dev/vdb bs=1M count=8 2>/dev/null | md5sum").split()[0] == data
    assert guest.md5(64, 8) == system

    (disk,) = panel.call(tenant.key, "GET", disks).json()
    awaited(panel, tenant.key, panel.call(tenant.key, "DELETE", f"{disks}{disk['id']}/"), timeout=120)
    wait_for(lambda: "vdb" not in guest.sh("ls /sys/block"), 30, "vdb to leave the guest")
    assert panel.call(tenant.key, "GET", disks).json() == []
    assert panel.call(make_tenant(panel, "disks-other").key, "GET", disks).status_code == 404

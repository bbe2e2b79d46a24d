"""Data disks on the test cluster's real libvirt and QEMU: a disk hot-plugged into the running
tiny guest is seen by it, written, survives a reboot; a backup of the server with its data disk
(a running guest: one libvirt job for both disks) restores both disks' data after the guest
destroyed them; deleting the disk takes it out of the running guest (its kernel releases it).

Every command typed into the guest stays short (`ShortLines`): tests/guest.py types a line as
fast as virsh takes it, and on this TCG host keys of a longer line were lost (docs/data-disks.md,
"The writes that hung"), which looked like the guest's writes hanging."""

import pytest

from tests.e2e.conftest import ClusterGuest, backups_of, cluster_with_node, create_tiny_server, make_tenant, wait_for

pytestmark = pytest.mark.e2e

# Characters of a command typed into the guest. guest_command adds 57 keys (its redirect and
# marker): lines of 135 keys came through every time here, lines of 177 and more lost keys.
MAX_TYPED = 72


class ShortLines(ClusterGuest):
    """The server's guest, refusing to type a command longer than MAX_TYPED."""

    def sh(self, command: str, timeout: float | None = None) -> str:
        assert len(command) <= MAX_TYPED, f"split this command ({len(command)} > {MAX_TYPED} characters): {command}"
        return super().sh(command, timeout)


@pytest.fixture(scope="module")
def backup_target(live_panel, tmp_path_factory):
    """A folder backup target, deleted at the end: after disks_env (which needs it, so it is torn
    down first) deleted the server and with it the backups that keep a target in use."""
    panel, folder = live_panel, tmp_path_factory.mktemp("disks-backups")
    r = panel.call(panel.admin_key, "POST", "/api/v1/backup-targets/",
                   json={"name": "disks-folder", "kind": "dir", "path": str(folder)})
    assert r.status_code == 201, r.text
    target = r.json()
    yield {**target, "folder": folder}
    r = panel.call(panel.admin_key, "DELETE", f"/api/v1/backup-targets/{target['id']}/")
    assert r.status_code == 204, r.text


@pytest.fixture(scope="module")
def disks_env(live_panel, test_cluster, backup_target):
    with cluster_with_node(live_panel, test_cluster, "disks", "10.77.1.150", "10.77.1.159", backups=2,
                           data_disks=1, data_disk_gib=1) as env:
        tenant = make_tenant(live_panel, "disks")
        server = create_tiny_server(live_panel, env, tenant, "disks-1")
        yield {**env, "tenant": tenant, "server": server, "guest": ShortLines(test_cluster, server),
               "target": backup_target}


def node_view(guest) -> str:
    """What the node says of the domain's disks (printed when the guest does not answer)."""
    out = []
    for argv in (["virsh", "domstate", "--reason", guest.name], ["virsh", "domblkerror", guest.name],
                 ["virsh", "domblkstat", guest.name, "vda"], ["virsh", "domblkstat", guest.name, "vdb"]):
        done = guest.run(argv)
        out.append(f"$ {' '.join(argv)}\n{done.stdout}{done.stderr}")
    return "\n".join(out)


def awaited(panel, key, response, timeout: float = 240) -> dict:
    assert response.status_code == 202, response.text
    op = panel.wait_operation(key, response.json()["id"], timeout=timeout)
    assert op["status"] == "succeeded", op
    return op


def test_a_hot_plugged_disk_is_seen_written_kept_over_a_reboot_and_backed_up_with_the_system_disk(
        live_panel, disks_env):
    guest = disks_env["guest"]
    try:
        hot_plug_reboot_backup_restore_delete(live_panel, disks_env)
    except Exception:
        print(node_view(guest))
        raise


def hot_plug_reboot_backup_restore_delete(panel, disks_env) -> None:
    tenant, guest, server, target = disks_env["tenant"], disks_env["guest"], disks_env["server"], disks_env["target"]
    disks = f"/api/v1/servers/{server['id']}/disks/"
    assert "vdb" not in guest.sh("ls /sys/block")
    # Over the plan: refused, nothing made.
    over = panel.call(tenant.key, "POST", disks, json={"name": "big", "size_gib": 2})
    assert over.status_code == 409 and over.json()["code"] == "data_disk_limit", over.text
    awaited(panel, tenant.key, panel.call(tenant.key, "POST", disks, json={"name": "data", "size_gib": 1}))
    wait_for(lambda: "vdb" in guest.sh("ls /sys/block"), 60, "the guest to see the hot-plugged vdb")
    assert guest.sh("cat /sys/block/vdb/size") == str(2**30 // 512)
    guest.sh("dd if=/dev/urandom of=/dev/vdb bs=1M count=8 conv=fsync 2>/dev/null", timeout=90)
    data = guest.sh("dd if=/dev/vdb bs=1M count=8 2>/dev/null | md5sum").split()[0]
    system = guest.md5(64, 8)

    boots = guest.log().count("TINY-GUEST installed")
    awaited(panel, tenant.key, panel.call(tenant.key, "POST", f"/api/v1/servers/{server['id']}/reboot/", json={}))
    wait_for(lambda: guest.log().count("TINY-GUEST installed") > boots, 120, "the guest to boot again")
    assert guest.sh("dd if=/dev/vdb bs=1M count=8 2>/dev/null | md5sum").split()[0] == data

    awaited(panel, panel.admin_key, panel.call(panel.admin_key, "POST", f"/api/v1/servers/{server['id']}/backup/",
                                               json={"target": target["id"]}))
    backup = backups_of(panel, tenant.key, server["id"])[0]
    assert backup["status"] == "done"
    assert len(list(target["folder"].rglob("*-vdb.qcow2*"))) == 1

    # After the reboot and the backup the guest writes to both disks (2 MiB each changes both
    # checksums; the time allowed is TCG's on a loaded CI host).
    guest.sh("dd if=/dev/zero of=/dev/vdb bs=1M count=2 conv=fsync", timeout=120)
    guest.sh("dd if=/dev/zero of=/dev/vda bs=1M seek=64 count=2 conv=fsync", timeout=120)
    assert guest.sh("dd if=/dev/vdb bs=1M count=8 2>/dev/null | md5sum").split()[0] != data
    boots = guest.log().count("TINY-GUEST installed")
    awaited(panel, tenant.key, panel.call(tenant.key, "POST", f"/api/v1/servers/{server['id']}/restore/",
                                          json={"backup": backup["id"]}))
    wait_for(lambda: guest.log().count("TINY-GUEST installed") > boots, 120, "the restored guest to boot")
    assert guest.sh("dd if=/dev/vdb bs=1M count=8 2>/dev/null | md5sum").split()[0] == data
    assert guest.md5(64, 8) == system
    # The restored guest writes to both disks again.
    guest.sh("dd if=/dev/zero of=/dev/vdb bs=1M seek=8 count=2 conv=fsync", timeout=120)
    guest.sh("dd if=/dev/zero of=/dev/vda bs=1M seek=72 count=2 conv=fsync", timeout=120)

    (disk,) = panel.call(tenant.key, "GET", disks).json()["results"]
    awaited(panel, tenant.key, panel.call(tenant.key, "DELETE", f"{disks}{disk['id']}/"), timeout=120)
    wait_for(lambda: "vdb" not in guest.sh("ls /sys/block"), 30, "vdb to leave the guest")
    assert panel.call(tenant.key, "GET", disks).json()["results"] == []
    assert panel.call(make_tenant(panel, "disks-other").key, "GET", disks).status_code == 404


"""Backups on the test cluster: real libvirt backup jobs of a running QEMU guest, stored on a
real FTP server on loopback (pyftpdlib), restored after the guest destroyed its own disk; and
the panel's own backup brought back into a fresh database by `manage.py restore_panel`."""

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import (ROOT, BackupGuest, _mysql, backups_of, cluster_with_node, create_tiny_server,
                                make_tenant, wait_for)

DATA_MIB = (64, 32)  # the guest's data: 32 MiB at 64 MiB into its disk (the installed system is below 8 MiB)


@pytest.fixture(scope="module")
def ftp_server(tmp_path_factory):
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler
    from pyftpdlib.servers import ThreadedFTPServer

    home = tmp_path_factory.mktemp("ftp-home")
    (home / "vps").mkdir()
    authorizer = DummyAuthorizer()
    authorizer.add_user("backup", "ftp-secret-1", str(home), perm="elradfmwMT")
    handler = type("Handler", (FTPHandler,), {"authorizer": authorizer, "banner": "test ftp"})
    server = ThreadedFTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"timeout": 0.5}, daemon=True)
    thread.start()
    yield {"server": server, "port": server.address[1], "home": home}
    server.close_all()


@pytest.fixture(scope="module")
def backup_env(live_panel, test_cluster, ftp_server):
    panel = live_panel
    with cluster_with_node(panel, test_cluster, "backups", "10.77.1.120", "10.77.1.139", backups=3) as env:
        r = panel.call(panel.admin_key, "POST", "/api/v1/backup-targets/", json={
            "name": "loopback-ftp", "kind": "ftp", "host": "127.0.0.1", "port": ftp_server["port"],
            "username": "backup", "password": "ftp-secret-1", "path": "vps"})
        assert r.status_code == 201, r.text
        assert "password" not in r.json() and not r.json()["check_error"]
        yield {**env, "target": r.json()["id"], "tenant": make_tenant(panel, "backup"),
               "other": make_tenant(panel, "backup-other")}


def server_action(panel, server: dict, action: str, body: dict, timeout: float = 240) -> dict:
    """An admin's action on the server (backup, restore, stop…), awaited: its finished operation."""
    r = panel.call(panel.admin_key, "POST", f"/api/v1/servers/{server['id']}/{action}/", json=body)
    assert r.status_code == 202, r.text
    op = panel.wait_operation(panel.admin_key, r.json()["id"], timeout=timeout)
    assert op["status"] == "succeeded", op
    return op


@pytest.fixture(scope="module")
def guest_server(live_panel, test_cluster, backup_env):
    server = create_tiny_server(live_panel, backup_env, backup_env["tenant"], "backup-1")
    return server, BackupGuest(test_cluster, server, DATA_MIB)


def test_a_scheduled_backup_of_a_busy_guest_restores_its_destroyed_disk(live_panel, backup_env, guest_server,
                                                                          ftp_server):
    panel, admin, tenant = live_panel, live_panel.admin_key, backup_env["tenant"]
    server, guest = guest_server
    start, count = DATA_MIB
    guest.sh(f"dd if=/dev/urandom of=/dev/vda bs=1M seek={start} count={count} conv=fsync 2>/dev/null; sync")
    # The guest keeps writing (1 MiB at 256 MiB, over and over) while the backup runs.
    # (Typed on the guest's keyboard: short lines get through a busy TCG guest more reliably.)
    for line, to in (("while :; do", ">"), ("dd if=/dev/urandom of=/dev/vda bs=64k seek=4096 count=16", ">>"),
                     ("done", ">>")):
        guest.sh(f"(echo '{line}' {to}/tmp/writer.sh)")
    guest.sh("sh /tmp/writer.sh </dev/null >/dev/null 2>&1 & (echo $! >/tmp/writer.pid)")
    before = guest.data_md5()

    plan = panel.call(admin, "POST", "/api/v1/backup-plans/", json={
        "name": "every-minute", "target": backup_env["target"], "schedule": "* * * * *", "scope": "servers",
        "servers": [server["id"]], "keep": 3, "full_every": 7, "compression": "zstd"})
    assert plan.status_code == 201, plan.text
    started = time.monotonic()
    full = wait_for(lambda: next((b for b in backups_of(panel, tenant.key, server["id"]) if b["status"] != "running"),
                                 None), 200, "the scheduled backup", interval=2)
    print(f"the scheduled backup finished {time.monotonic() - started:.0f} s after the plan was made")
    assert full["status"] == "done", full
    assert panel.call(admin, "PATCH", f"/api/v1/backup-plans/{plan.json()['id']}/",
                      json={"enabled": False}).status_code == 200
    assert full["kind"] == "full" and full["target"] == "loopback-ftp"

    guest.sh("kill $(cat /tmp/writer.pid)")
    guest.sh(f"dd if=/dev/urandom of=/dev/vda bs=1M seek={start + 8} count=1 conv=fsync 2>/dev/null; sync")
    changed = guest.data_md5()
    assert changed != before
    r = panel.call(tenant.key, "POST", f"/api/v1/servers/{server['id']}/backup/", json={})
    assert r.status_code == 202, r.text
    op = panel.wait_operation(tenant.key, r.json()["id"], timeout=180)
    assert op["status"] == "succeeded", op
    incremental = backups_of(panel, tenant.key, server["id"])[0]
    assert incremental["kind"] == "incremental" and incremental["parent"] == full["id"]
    print(f"full backup {full['size_bytes']} bytes stored, incremental {incremental['size_bytes']} bytes "
          f"({full['size_bytes'] / max(incremental['size_bytes'], 1):.0f}x smaller)")
    assert incremental["size_bytes"] * 5 < full["size_bytes"]
    stored = sorted(p.name for p in (ftp_server["home"] / "vps").rglob("*") if p.is_file())
    assert len(stored) == 4 and not [n for n in stored if n.endswith(".part")], stored

    # The customer destroys the disk from inside the guest.
    guest.sh("dd if=/dev/zero of=/dev/vda bs=1M count=128 conv=fsync 2>/dev/null; sync")
    assert guest.data_md5() != changed
    boots = guest.log().count("TINY-GUEST installed")
    r = panel.call(tenant.key, "POST", f"/api/v1/servers/{server['id']}/restore/", json={"backup": incremental["id"]})
    assert r.status_code == 202, r.text
    op = panel.wait_operation(tenant.key, r.json()["id"], timeout=240)
    assert op["status"] == "succeeded", op
    wait_for(lambda: guest.log().count("TINY-GUEST installed") > boots, 120, "the restored guest to boot")
    assert guest.data_md5() == changed
    assert panel.call(tenant.key, "GET", f"/api/v1/servers/{server['id']}/").json()["state"] == "running"
    # Another customer sees none of it.
    assert panel.call(backup_env["other"].key, "GET", f"/api/v1/servers/{server['id']}/backups/").status_code == 404


def test_a_damaged_file_or_an_unreachable_ftp_server_changes_nothing(live_panel, backup_env, guest_server,
                                                                     ftp_server):
    panel, tenant = live_panel, backup_env["tenant"]
    server, guest = guest_server
    backups = [b for b in backups_of(panel, tenant.key, server["id"]) if b["status"] == "done"]
    assert backups, "needs the backups of the test before"
    full = backups[-1]
    files = sorted(p for p in (ftp_server["home"] / "vps").rglob(f"{full['id']:06d}-full.qcow2*"))
    assert len(files) == 1, files
    data = bytearray(files[0].read_bytes())
    original = bytes(data)
    data[len(data) // 2] ^= 0xFF
    files[0].write_bytes(bytes(data))
    now = guest.data_md5()
    try:
        r = panel.call(tenant.key, "POST", f"/api/v1/servers/{server['id']}/restore/", json={"backup": full["id"]})
        op = panel.wait_operation(tenant.key, r.json()["id"], timeout=120)
        assert op["status"] == "failed" and "damaged" in op["error"] and "nothing was overwritten" in op["error"], op
        assert "checksum" not in op["error"]  # the customer reads that it is damaged; the admin reads why
        assert "checksum" in panel.call(panel.admin_key, "GET", f"/api/v1/operations/{op['id']}/").json()["error"]
        assert guest.data_md5() == now
    finally:
        files[0].write_bytes(original)

    ftp_server["server"].close_all()  # the FTP server goes away
    r = panel.call(tenant.key, "POST", f"/api/v1/servers/{server['id']}/backup/", json={})
    op = panel.wait_operation(tenant.key, r.json()["id"], timeout=120)
    assert op["status"] == "failed" and "127.0.0.1" not in op["error"], op  # the provider's target: not theirs
    op = panel.call(panel.admin_key, "GET", f"/api/v1/operations/{op['id']}/").json()
    assert "cannot reach" in op["error"] and "127.0.0.1" in op["error"], op
    assert "ftp-secret-1" not in op["error"]
    assert panel.call(tenant.key, "GET", f"/api/v1/servers/{server['id']}/").json()["state"] == "running"
    assert guest.data_md5() == now


def test_a_folder_on_the_node_takes_the_image_straight_from_the_job(live_panel, backup_env, guest_server):
    """The fast target: libvirt's backup job writes into a folder on the guest's node, the node
    checksums the file there (b3sum over the node's ssh), an incremental follows (with a backup
    to a second folder in between: each target keeps its own checkpoint), and the restore brings
    the guest's data back from that folder (copied and checked on the node)."""
    panel, admin = live_panel, live_panel.admin_key
    server, guest = guest_server
    folder, other_folder = (Path(f"/var/tmp/e2e-node-backups-{server['uuid'][:8]}{suffix}") for suffix in ("", "-2"))
    targets = []
    for name, path in (("node-folder", folder), ("node-folder-2", other_folder)):
        r = panel.call(admin, "POST", "/api/v1/backup-targets/", json={"name": name, "kind": "node", "path": str(path)})
        assert r.status_code == 201, r.text
        targets.append(r.json()["id"])
    target = targets[0]

    def back_up(to: int, name: str) -> dict:
        server_action(panel, server, "backup", {"target": to}, timeout=180)
        return next(b for b in backups_of(panel, admin, server["id"]) if b["target"] == name)

    try:
        full = back_up(target, "node-folder")
        assert back_up(targets[1], "node-folder-2")["kind"] == "full"
        guest.sh(f"dd if=/dev/urandom of=/dev/vda bs=1M seek={DATA_MIB[0] + 4} count=1 conv=fsync 2>/dev/null")
        incremental = back_up(target, "node-folder")
        assert (full["kind"], incremental["kind"], incremental["parent"]) == ("full", "incremental", full["id"])
        image = folder / f"{server['uuid']}.{full['id']:06d}-full.qcow2"
        manifest = json.loads((folder / f"{server['uuid']}.{full['id']:06d}-full.manifest.json").read_text())
        b3sum = subprocess.run(["b3sum", "--no-names", str(image)], capture_output=True, text=True, check=True)
        assert manifest["file"]["checksum"] == f"blake3:{b3sum.stdout.strip()}"
        assert manifest["file"]["compression"] == "none" and manifest["consistent"].startswith("backup job")
        subprocess.run(["qemu-img", "check", "-q", str(image)], check=True)
        assert not list(folder.glob("*.part"))
        print(f"node folder: full {full['size_bytes']} bytes, incremental {incremental['size_bytes']} bytes")
        assert incremental["size_bytes"] * 5 < full["size_bytes"]

        changed = guest.data_md5()
        guest.sh("dd if=/dev/zero of=/dev/vda bs=1M count=128 conv=fsync 2>/dev/null; sync")
        boots = guest.log().count("TINY-GUEST installed")
        op = server_action(panel, server, "restore", {"backup": incremental["id"]})
        assert op["log"].count("from node-folder on the node and checking its checksum") == 2, op["log"]
        wait_for(lambda: guest.log().count("TINY-GUEST installed") > boots, 120, "the restored guest to boot")
        assert guest.data_md5() == changed
    finally:  # the folder's pool was defined on every node, this host's libvirtd too
        pools = subprocess.run(["virsh", "-c", "qemu:///system", "pool-list", "--all", "--name"],
                               capture_output=True, text=True).stdout.split()
        for pool in (p for p in pools if p.startswith(tuple(f"backups-{t}-" for t in targets))):
            subprocess.run(["virsh", "-c", "qemu:///system", "pool-destroy", pool], capture_output=True)
            subprocess.run(["virsh", "-c", "qemu:///system", "pool-undefine", pool], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(other_folder, ignore_errors=True)


def test_a_stopped_guest_is_not_copied_again_while_its_disk_is_unchanged(live_panel, backup_env, guest_server,
                                                                          tmp_path):
    """No bitmap follows a stopped disk: the file's stamp does. Backed up twice while stopped,
    the second backup (streamed to a folder on the panel's host, zstd) is an incremental holding
    no change; a start moves the stamp (the next backup is full again); and the empty
    incremental restores the guest's data."""
    panel, admin = live_panel, live_panel.admin_key
    server, guest = guest_server
    r = panel.call(admin, "POST", "/api/v1/backup-targets/", json={"name": "panel-folder", "kind": "dir",
                                                                    "path": str(tmp_path)})
    assert r.status_code == 201, r.text
    target = r.json()["id"]
    guest.sh(f"dd if=/dev/urandom of=/dev/vda bs=1M seek={DATA_MIB[0]} count=8 conv=fsync 2>/dev/null; sync")
    data = guest.data_md5()

    def back_up() -> dict:
        op = server_action(panel, server, "backup", {"target": target})
        return next(b for b in backups_of(panel, admin, server["id"]) if b["id"] == op["params"]["backup_id"])

    server_action(panel, server, "stop", {"force": True})
    full, unchanged = back_up(), back_up()
    assert (full["kind"], unchanged["kind"], unchanged["parent"]) == ("full", "incremental", full["id"])
    print(f"stopped guest: full {full['size_bytes']} bytes, unchanged {unchanged['size_bytes']} bytes")
    assert unchanged["size_bytes"] < 2**20 and unchanged["size_bytes"] * 20 < full["size_bytes"]
    server_action(panel, server, "start", {})
    server_action(panel, server, "stop", {"force": True})
    assert back_up()["kind"] == "full"

    boots = guest.log().count("TINY-GUEST installed")
    server_action(panel, server, "restore", {"backup": unchanged["id"]})
    wait_for(lambda: guest.log().count("TINY-GUEST installed") > boots, 120, "the restored guest to boot")
    assert guest.data_md5() == data


def test_restore_panel_brings_a_fresh_database_back(live_panel, backup_env, tmp_path):
    panel = live_panel
    file = tmp_path / "panel.backup"
    panel.manage("backup_panel", str(file))
    key = (Path(panel.env["PANEL_DATA_DIR"]) / "backup_key").read_text().strip()
    fresh_db = f"{panel.env['DATABASE_URL'].rsplit('/', 1)[-1]}_fresh"
    fresh = {**panel.env, "DATABASE_URL": f"mysql://root@localhost/{fresh_db}",
             "PANEL_DATA_DIR": str(tmp_path / "fresh-data")}
    for name in ("CREDENTIALS_KEY", "SECRET_KEY", "PANEL_INSTANCE_ID"):
        fresh.pop(name, None)
    _mysql(f"CREATE DATABASE {fresh_db} CHARACTER SET utf8mb4")

    def manage(*args):
        out = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=fresh, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    query = ("from panel.accounts.models import Customer, ApiKey; from panel.vps.models import VirtualServer; "
             "from nodes.models import Node; from nodes.ssh import panel_identity; "
             "print(sorted(Customer.objects.values_list('name', flat=True)), "
             "sorted(VirtualServer.objects.values_list('hostname', flat=True)), ApiKey.objects.count(), "
             "Node.objects.count(), panel_identity()[1].split()[1])")
    try:
        original = subprocess.run([sys.executable, "manage.py", "shell", "-c", query], cwd=ROOT, env=panel.env,
                                  capture_output=True, text=True, timeout=120).stdout.strip()
        manage("restore_panel", str(file), f"--key={key}", "--yes")  # a key may begin with "-"
        restored = manage("shell", "-c", query).strip()
        assert restored == original and "backup-1" in restored, (original, restored)
    finally:
        _mysql(f"DROP DATABASE IF EXISTS {fresh_db}")

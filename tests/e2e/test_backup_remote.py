"""Backups to an SFTP host through the real worker: a private OpenSSH server on loopback
(tests/sshd_fixture.py) lets the live panel's own key in; a guest on the test cluster is backed
up there (image and manifest, BLAKE3-checksummed) and restored from it; a changed host key
stops the next backup before anything is written."""

import json
import os
import subprocess

import blake3
import pytest
import zstandard

from tests.e2e.conftest import (ClusterGuest, backups_of, cluster_with_node, create_tiny_server, make_tenant,
                                wait_for)
from tests.sshd_fixture import SSHD, PrivateSshd

DATA_MIB = (64, 8)  # the guest's data: 8 MiB at 64 MiB into its disk (the installed system is below 8 MiB)
QCOW2_MAGIC = b"QFI\xfb"

pytestmark = pytest.mark.skipif(not os.path.exists(SSHD), reason=f"{SSHD} is missing (openssh-server)")


def ssh_fingerprint(host_key: str) -> str:
    """OpenSSH's own SHA256 fingerprint of a "<type> <base64>" key (ssh-keygen, not the panel's code)."""
    out = subprocess.run(["ssh-keygen", "-lf", "-"], input=host_key + "\n", capture_output=True, text=True,
                         check=True).stdout
    return out.split()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = PrivateSshd(tmp_path_factory.mktemp("sftp-sshd"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """The target's folder on the SFTP host."""
    return tmp_path_factory.mktemp("sftp-home")


@pytest.fixture(scope="module")
def sftp_env(live_panel, test_cluster, sshd, home):
    panel = live_panel
    with cluster_with_node(panel, test_cluster, "sftp", "10.77.1.140", "10.77.1.149") as env:
        # The node was installed with the panel's key; the SFTP host lets the same key in.
        public = panel.manage("shell", "-c", "from nodes.ssh import panel_identity; print(panel_identity()[1])")
        sshd.authorized_keys.write_text(public.strip().splitlines()[-1] + "\n")
        r = panel.call(panel.admin_key, "POST", "/api/v1/backup-targets/", json={
            "name": "loopback-sftp", "kind": "sftp", "host": "127.0.0.1", "port": sshd.port, "username": sshd.user,
            "path": str(home)})
        assert r.status_code == 201, r.text
        target = r.json()
        assert target["check_error"] == "" and target["host_key"] == sshd.host_key, target
        assert target["host_key_fingerprint"] == ssh_fingerprint(sshd.host_key), target
        assert target["host_key_fingerprint"].startswith("SHA256:")
        yield {**env, "target": target["id"], "tenant": make_tenant(panel, "sftp")}
    # Its servers and their backups are gone: the target goes too, or it would be the panel's
    # default target (the first enabled one) for the next module's customers.
    admin = panel.admin_key
    if panel.call(admin, "DELETE", f"/api/v1/backup-targets/{target['id']}/").status_code != 204:
        assert panel.call(admin, "PATCH", f"/api/v1/backup-targets/{target['id']}/",
                          json={"enabled": False}).status_code == 200


class Guest(ClusterGuest):
    READY_TIMEOUT, COMMAND_TIMEOUT = 120, 60

    def data_md5(self) -> str:
        return self.md5(*DATA_MIB)


@pytest.fixture(scope="module")
def guest_server(live_panel, test_cluster, sftp_env):
    server = create_tiny_server(live_panel, sftp_env, sftp_env["tenant"], "sftp-1")
    return server, Guest(test_cluster, server)


def _stored(folder) -> dict[str, tuple[int, int]]:
    """Every file below `folder`: its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file()}


def test_a_backup_goes_to_the_sftp_host_and_the_guest_is_restored_from_it(live_panel, sftp_env, guest_server,
                                                                          home):
    panel, admin = live_panel, live_panel.admin_key
    server, guest = guest_server
    start, count = DATA_MIB
    guest.sh(f"dd if=/dev/urandom of=/dev/vda bs=1M seek={start} count={count} conv=fsync 2>/dev/null; sync")
    written = guest.data_md5()

    r = panel.call(admin, "POST", f"/api/v1/servers/{server['id']}/backup/", json={"target": sftp_env["target"]})
    assert r.status_code == 202, r.text
    op = panel.wait_operation(admin, r.json()["id"], timeout=180)
    assert op["status"] == "succeeded", op
    backups = backups_of(panel, admin, server["id"])
    assert len(backups) == 1, backups
    backup = backups[0]
    assert (backup["status"], backup["kind"], backup["target"]) == ("done", "full", "loopback-sftp"), backup

    folder = home / server["uuid"]
    image = folder / f"{backup['id']:06d}-full.qcow2.zst"
    manifest_file = folder / f"{backup['id']:06d}-full.manifest.json"
    assert sorted(_stored(home)) == sorted(str(p.relative_to(home)) for p in (image, manifest_file))
    manifest = json.loads(manifest_file.read_text())
    data = image.read_bytes()
    assert manifest["file"]["checksum"] == f"blake3:{blake3.blake3(data).hexdigest()}"
    assert backup["size_bytes"] == len(data) == manifest["file"]["bytes"]
    assert manifest["file"]["name"] == f"{server['uuid']}/{image.name}" and manifest["file"]["compression"] == "zstd"
    assert manifest["server"]["uuid"] == server["uuid"]
    head = zstandard.ZstdDecompressor().decompressobj().decompress(data[:1 << 16])
    assert head[:4] == QCOW2_MAGIC  # a qcow2 image, compressed
    print(f"sftp: full backup of {backup['size_bytes']} bytes stored")

    # The customer destroys the disk from inside the guest (the installed system and the data).
    guest.sh("dd if=/dev/zero of=/dev/vda bs=1M count=128 conv=fsync 2>/dev/null; sync")
    assert guest.data_md5() != written
    boots = guest.log().count("TINY-GUEST installed")
    r = panel.call(admin, "POST", f"/api/v1/servers/{server['id']}/restore/", json={"backup": backup["id"]})
    assert r.status_code == 202, r.text
    op = panel.wait_operation(admin, r.json()["id"], timeout=240)
    assert op["status"] == "succeeded", op
    wait_for(lambda: guest.log().count("TINY-GUEST installed") > boots, 120, "the restored guest to boot")
    assert guest.data_md5() == written
    assert panel.call(admin, "GET", f"/api/v1/servers/{server['id']}/").json()["state"] == "running"


def test_a_changed_host_key_stops_the_backup_before_anything_is_written(live_panel, sftp_env, guest_server, sshd,
                                                                         home):
    panel, admin = live_panel, live_panel.admin_key
    server, _guest = guest_server
    before = _stored(home)
    backups_before = [b["id"] for b in backups_of(panel, admin, server["id"])]
    pinned = sshd.host_key
    sshd.restart_with_new_key()  # same port, another key
    offered = sshd.host_key
    assert offered != pinned

    r = panel.call(admin, "POST", f"/api/v1/servers/{server['id']}/backup/", json={"target": sftp_env["target"]})
    assert r.status_code == 202, r.text
    op = panel.wait_operation(admin, r.json()["id"], timeout=120)
    assert op["status"] == "failed", op
    assert "host key" in op["error"], op
    assert ssh_fingerprint(pinned) in op["error"] and ssh_fingerprint(offered) in op["error"], op
    assert _stored(home) == before
    assert not [b for b in backups_of(panel, admin, server["id"]) if b["id"] not in backups_before
                and b["status"] == "done"]
    target = panel.call(admin, "GET", f"/api/v1/backup-targets/{sftp_env['target']}/").json()
    assert target["host_key_fingerprint"] == ssh_fingerprint(pinned), target  # never re-pinned by itself
    assert ssh_fingerprint(offered) in target["check_error"], target
    assert panel.call(admin, "GET", f"/api/v1/servers/{server['id']}/").json()["state"] == "running"

    # An admin accepts the new key: the next check pins it.
    r = panel.call(admin, "PATCH", f"/api/v1/backup-targets/{sftp_env['target']}/", json={"host_key": ""})
    assert r.status_code == 200, r.text
    assert r.json()["host_key_fingerprint"] == ssh_fingerprint(offered) and r.json()["check_error"] == "", r.json()

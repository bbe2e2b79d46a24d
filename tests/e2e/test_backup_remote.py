"""Backups to a remote host through the real worker, once over SFTP and once over FTPS: a
private OpenSSH server on loopback (tests/sshd_fixture.py) that lets the live panel's own key in,
and a pyftpdlib FTPS server with a self-signed certificate (tests/ftpd_fixture.py). A guest on
the test cluster is backed up there (image and manifest, BLAKE3-checksummed) and restored from
it; a changed host key or certificate stops the next backup before anything is written, until
an admin compares the fingerprints in chromium and accepts the new one."""

import base64
import json
import os
import subprocess

import blake3
import pytest
import zstandard

from tests.e2e.conftest import (BackupGuest, backups_of, cluster_with_node, create_tiny_server, make_tenant,
                                wait_for)
from tests.ftpd_fixture import self_signed_cert, serve_ftp
from tests.sshd_fixture import SSHD, PrivateSshd

DATA_MIB = (64, 8)  # the guest's data: 8 MiB at 64 MiB into its disk (the installed system is below 8 MiB)
QCOW2_MAGIC = b"QFI\xfb"


class SftpHost:
    """The SFTP host: a private sshd; the target's folder is `home`."""
    kind, what = "sftp", "host key"

    def __init__(self, folder, panel_key: str):
        self.home = folder / "home"
        self.home.mkdir()
        (folder / "sshd").mkdir()
        self.sshd = PrivateSshd(folder / "sshd")
        self.sshd.authorized_keys.write_text(panel_key + "\n")

    def target(self) -> dict:
        return {"kind": "sftp", "host": "127.0.0.1", "port": self.sshd.port, "username": self.sshd.user,
                "path": str(self.home)}

    def fingerprint(self) -> str:
        """OpenSSH's own SHA256 fingerprint of the host key (ssh-keygen, not the panel's code)."""
        out = subprocess.run(["ssh-keygen", "-lf", "-"], input=self.sshd.host_key + "\n", capture_output=True,
                             text=True, check=True).stdout
        return out.split()[1]

    def change_key(self) -> None:
        self.sshd.restart_with_new_key()  # same port, another key

    def stop(self) -> None:
        self.sshd.stop()


class FtpsHost:
    """The FTPS server: TLS required on control and data connections; its root is `home`."""
    kind, what = "ftps", "certificate"

    def __init__(self, folder, _panel_key: str):
        self.folder, self.home = folder, folder / "home"
        self.home.mkdir()
        self.cert = self_signed_cert(folder, "first.pem")
        self.server, self._shutdown = serve_ftp(self.home, certfile=self.cert)

    def target(self) -> dict:
        return {"kind": "ftps", "host": self.server.host, "port": self.server.port, "username": self.server.user,
                "password": self.server.password, "path": ""}

    def fingerprint(self) -> str:
        """openssl's SHA-256 of the certificate, written the way SSH writes fingerprints."""
        out = subprocess.run(["openssl", "x509", "-in", str(self.cert), "-noout", "-fingerprint", "-sha256"],
                             capture_output=True, text=True, check=True).stdout
        digest = bytes.fromhex(out.strip().split("=", 1)[1].replace(":", ""))
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")

    def change_key(self) -> None:
        self._shutdown()
        self.cert = self_signed_cert(self.folder, "second.pem")
        self.server, self._shutdown = serve_ftp(self.home, certfile=self.cert, port=self.server.port)

    def stop(self) -> None:
        self._shutdown()


@pytest.fixture(scope="module")
def remote_env(live_panel, test_cluster):
    panel = live_panel
    with cluster_with_node(panel, test_cluster, "remote", "10.77.1.140", "10.77.1.149") as env:
        # The node was installed with the panel's key; the SFTP host lets the same key in.
        public = panel.manage("shell", "-c", "from nodes.ssh import panel_identity; print(panel_identity()[1])")
        yield {**env, "panel_key": public.strip().splitlines()[-1], "tenant": make_tenant(panel, "remote")}


@pytest.fixture(scope="module", params=[
    pytest.param(SftpHost, id="sftp", marks=pytest.mark.skipif(not os.path.exists(SSHD), reason=f"{SSHD} is missing")),
    pytest.param(FtpsHost, id="ftps")])
def remote(request, live_panel, remote_env, tmp_path_factory):
    """The host and its target in the panel, pinned at the first check to what the host presents."""
    panel, admin = live_panel, live_panel.admin_key
    host = request.param(tmp_path_factory.mktemp(request.param.kind), remote_env["panel_key"])
    try:
        r = panel.call(admin, "POST", "/api/v1/backup-targets/", json={"name": f"loopback-{host.kind}",
                                                                        **host.target()})
        assert r.status_code == 201, r.text
        target = r.json()
        assert target["check_error"] == "" and target["host_key_fingerprint"] == host.fingerprint(), target
        assert target["host_key_fingerprint"].startswith("SHA256:") and "password" not in target
        host.target_id, host.target_name = target["id"], target["name"]
        yield host
        # Its backups stay, so the target may only be disabled: else it would be the panel's
        # default target (the first enabled one) for the next module's customers.
        if panel.call(admin, "DELETE", f"/api/v1/backup-targets/{target['id']}/").status_code != 204:
            assert panel.call(admin, "PATCH", f"/api/v1/backup-targets/{target['id']}/",
                              json={"enabled": False}).status_code == 200
    finally:
        host.stop()


@pytest.fixture(scope="module")
def guest_server(live_panel, test_cluster, remote_env):
    server = create_tiny_server(live_panel, remote_env, remote_env["tenant"], "remote-1")
    return server, BackupGuest(test_cluster, server, DATA_MIB)


def _stored(folder) -> dict[str, tuple[int, int]]:
    """Every file below `folder`: its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file()}


def test_a_backup_goes_to_the_remote_host_and_the_guest_is_restored_from_it(live_panel, remote, guest_server):
    panel, admin = live_panel, live_panel.admin_key
    server, guest = guest_server
    start, count = DATA_MIB
    guest.sh(f"dd if=/dev/urandom of=/dev/vda bs=1M seek={start} count={count} conv=fsync 2>/dev/null; sync")
    written = guest.data_md5()

    r = panel.call(admin, "POST", f"/api/v1/servers/{server['id']}/backup/", json={"target": remote.target_id})
    assert r.status_code == 202, r.text
    op = panel.wait_operation(admin, r.json()["id"], timeout=180)
    assert op["status"] == "succeeded", op
    backups = [b for b in backups_of(panel, admin, server["id"]) if b["target"] == remote.target_name]
    assert len(backups) == 1, backups
    backup = backups[0]
    assert (backup["status"], backup["kind"]) == ("done", "full"), backup

    folder = remote.home / server["uuid"]
    image = folder / f"{backup['id']:06d}-full.qcow2.zst"
    manifest_file = folder / f"{backup['id']:06d}-full.manifest.json"
    assert sorted(_stored(remote.home)) == sorted(str(p.relative_to(remote.home)) for p in (image, manifest_file))
    manifest = json.loads(manifest_file.read_text())
    data = image.read_bytes()
    assert manifest["file"]["checksum"] == f"blake3:{blake3.blake3(data).hexdigest()}"
    assert backup["size_bytes"] == len(data) == manifest["file"]["bytes"]
    assert manifest["file"]["name"] == f"{server['uuid']}/{image.name}" and manifest["file"]["compression"] == "zstd"
    assert manifest["server"]["uuid"] == server["uuid"]
    head = zstandard.ZstdDecompressor().decompressobj().decompress(data[:1 << 16])
    assert head[:4] == QCOW2_MAGIC  # a qcow2 image, compressed
    print(f"{remote.kind}: full backup of {backup['size_bytes']} bytes stored")

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


@pytest.mark.browser
def test_a_changed_host_key_or_certificate_stops_the_backup_until_an_admin_accepts_it(live_panel, remote,
                                                                                      guest_server, browser):
    panel, admin = live_panel, live_panel.admin_key
    server, _guest = guest_server
    before = _stored(remote.home)
    backups_before = [b["id"] for b in backups_of(panel, admin, server["id"])]
    pinned = remote.fingerprint()
    remote.change_key()  # same port, another key or certificate
    offered = remote.fingerprint()
    assert offered != pinned

    r = panel.call(admin, "POST", f"/api/v1/servers/{server['id']}/backup/", json={"target": remote.target_id})
    assert r.status_code == 202, r.text
    op = panel.wait_operation(admin, r.json()["id"], timeout=120)
    assert op["status"] == "failed", op
    assert remote.what in op["error"], op
    assert pinned in op["error"] and offered in op["error"], op
    assert _stored(remote.home) == before
    assert not [b for b in backups_of(panel, admin, server["id"]) if b["id"] not in backups_before
                and b["status"] == "done"]
    target = panel.call(admin, "GET", f"/api/v1/backup-targets/{remote.target_id}/").json()
    assert target["host_key_fingerprint"] == pinned, target  # never re-pinned by itself
    assert offered in target["check_error"], target
    assert panel.call(admin, "GET", f"/api/v1/servers/{server['id']}/").json()["state"] == "running"

    # The admin compares both fingerprints on the target's page in chromium and accepts the new
    # one: saving checks the target again, which pins what the server shows now.
    page = browser.new_page()
    page.goto(panel.url + "/login/")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", panel.admin_password)
    page.click("form:has(input[name=password]) button[type=submit]")
    page.wait_for_url("**/admin/")
    page.goto(f"{panel.url}/admin/backups/targets/{remote.target_id}/edit/")
    assert page.text_content("#pinned-fingerprint") == pinned
    assert offered in page.text_content("#target-check-error")
    page.check("input[name=forget_pin]")
    page.click("form:has(input[name=forget_pin]) button[type=submit]")
    page.wait_for_url("**/admin/backups/")
    row = page.text_content(f"#backup-targets tr[data-target-id='{remote.target_id}']")
    assert offered in row and pinned not in row
    page.close()
    target = panel.call(admin, "GET", f"/api/v1/backup-targets/{remote.target_id}/").json()
    assert target["host_key_fingerprint"] == offered and target["check_error"] == "", target

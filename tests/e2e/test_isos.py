"""The ISO library and rescue mode on real QEMU (node 1 of the test cluster, TCG): a customer
uploads a bootable ISO (built here with pycdlib: an El Torito no-emulation boot sector that
writes a marker to the serial port), the stopped server boots from it; rescue mode boots the
rescue kernel and initrd (the tiny OS) with the server's disk attached, a repair written there
is seen by the normal boot afterwards, whose domain definition is the one before. Bad uploads
over real HTTP leave nothing on the share. The refusals' details are tests/test_isos.py."""

import hashlib
import io
import secrets
import socket
import time
from urllib.parse import urlparse

import pytest

from tests.e2e.conftest import ROOT, ClusterGuest, cluster_with_node, create_tiny_server, make_tenant, wait_for

pytestmark = pytest.mark.e2e

ISO_DIR = ROOT / ".cache" / "os-templates" / ".isos"  # the live panel's TEMPLATE_SHARE
BOOTED = "ISO-BOOTED-FROM-CDROM"


def bootable_iso() -> bytes:
    """An ISO 9660 image whose El Torito boot image (16-bit, loaded at 0x7c00) prints BOOTED on
    COM1 and halts: position-independent (call/pop finds the message), no BIOS calls."""
    import pycdlib

    message = (BOOTED + "\r\n").encode() + b"\0"
    code = bytes([0xFA,              # cli
                  0xE8, 0, 0,        # call next
                  0x5E,              # next: pop si
                  0x0E, 0x1F,        # push cs; pop ds
                  0x83, 0xC6, 0x14,  # add si, message - next (20)
                  0xBA, 0xF8, 0x03,  # mov dx, 0x3f8
                  0xAC,              # loop: lodsb
                  0x84, 0xC0,        # test al, al
                  0x74, 0x03,        # jz halt
                  0xEE,              # out dx, al
                  0xEB, 0xF8,        # jmp loop
                  0xF4, 0xEB, 0xFD])  # halt: hlt; jmp halt
    boot = (code + message).ljust(2048, b"\0")
    iso = pycdlib.PyCdlib()
    iso.new()
    iso.add_fp(io.BytesIO(boot), len(boot), "/BOOT.BIN;1")
    iso.add_eltorito("/BOOT.BIN;1", bootcatfile="/BOOT.CAT;1", media_name="noemul", boot_load_size=4)
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return out.getvalue()


@pytest.fixture(scope="module")
def iso_env(live_panel, test_cluster):
    with cluster_with_node(live_panel, test_cluster, "isos", "10.77.1.200", "10.77.1.209") as env:
        tenant, other = make_tenant(live_panel, "isos"), make_tenant(live_panel, "isos-other")
        server = create_tiny_server(live_panel, env, tenant, "iso-1")
        guest = ClusterGuest(test_cluster, server)
        # The definition of its normal boot, which every return to it must give back exactly.
        yield {**env, "tenant": tenant, "other": other, "server": server, "guest": guest,
               "normal_xml": inactive_xml(test_cluster, guest)}


def upload(panel, key, body: bytes, name: str):
    return panel.call(key, "PUT", f"/api/v1/isos/upload/?name={name}", data=body)


def act(panel, key, server, action, body=None, timeout=180) -> dict:
    r = panel.call(key, "POST", f"/api/v1/servers/{server['id']}/{action}/", json=body or {})
    assert r.status_code == 202, r.text
    op = panel.wait_operation(key, r.json()["id"], timeout=timeout)
    assert op["status"] == "succeeded", op
    return op


def inactive_xml(cluster, guest) -> str:
    return cluster.run(1, ["virsh", "-c", "qemu:///system", "dumpxml", "--inactive", guest.name]).stdout


def test_bad_uploads_over_http_leave_nothing_on_the_share(live_panel, iso_env):
    panel, key = live_panel, iso_env["tenant"].key
    before = set(ISO_DIR.iterdir()) if ISO_DIR.exists() else set()
    r = upload(panel, key, b"\x7fELF" + secrets.token_bytes(64 * 1024), "not-an-iso")
    assert r.status_code == 400 and "not an ISO" in r.json()["detail"], r.text
    # A client that drops the connection halfway through its declared body.
    url = urlparse(panel.url)
    body = bootable_iso()
    with socket.create_connection((url.hostname, url.port)) as sock:
        sock.sendall((f"PUT /api/v1/isos/upload/?name=cut HTTP/1.1\r\nHost: {url.hostname}\r\n"
                      f"Authorization: Token {key}\r\nContent-Type: application/octet-stream\r\n"
                      f"Content-Length: {len(body) * 4}\r\n\r\n").encode() + body)
        time.sleep(1)
    time.sleep(2)
    assert panel.call(key, "GET", "/api/v1/isos/").json()["results"] == []
    assert (set(ISO_DIR.iterdir()) if ISO_DIR.exists() else set()) == before


def test_a_server_boots_from_an_uploaded_iso_and_normally_after_detach(live_panel, test_cluster, iso_env):
    panel, tenant, server, guest = live_panel, iso_env["tenant"], iso_env["server"], iso_env["guest"]
    body = bootable_iso()
    r = upload(panel, tenant.key, body, "boot-test.iso")
    assert r.status_code == 201, r.text
    iso = r.json()
    assert iso["sha256"] == hashlib.sha256(body).hexdigest() and iso["size_bytes"] == len(body)
    assert any(p.read_bytes() == body for p in ISO_DIR.glob("*.iso"))
    # Another customer's ISO does not exist for this one.
    theirs = upload(panel, iso_env["other"].key, body, "theirs.iso").json()["id"]
    act(panel, tenant.key, server, "stop")
    r = panel.call(tenant.key, "POST", f"/api/v1/servers/{server['id']}/attach-iso/", json={"iso": theirs})
    assert r.status_code == 400 and "iso" in r.json()["fields"], r.text

    logged = len(guest.log())
    act(panel, tenant.key, server, "attach-iso", {"iso": iso["id"]})
    wait_for(lambda: BOOTED in guest.log()[logged:], 60, "the boot sector of the ISO to print on the serial port")
    xml = inactive_xml(test_cluster, guest)
    assert "<boot dev='cdrom'/>" in xml and "device='cdrom'" in xml and "<kernel>" not in xml
    act(panel, tenant.key, server, "stop", {"force": True})  # the boot sector only halts
    act(panel, tenant.key, server, "detach-iso")
    assert "Linux" in guest.sh("uname -s")
    assert inactive_xml(test_cluster, guest) == iso_env["normal_xml"]


def test_rescue_boots_the_rescue_image_with_the_disk_writable_and_the_normal_boot_sees_the_repair(
        live_panel, test_cluster, iso_env):
    panel, tenant, server, guest = live_panel, iso_env["tenant"], iso_env["server"], iso_env["guest"]
    repair = f"REPAIRED-{secrets.token_hex(6)}"
    act(panel, tenant.key, server, "stop")
    act(panel, tenant.key, server, "rescue")
    assert "panel.rescue=1" in guest.sh("cat /proc/cmdline")
    # The server's own disk, there and writable: the repair goes 100 MiB in (above the system).
    guest.sh(f"echo {repair} | dd of=/dev/vda bs=1M seek=100 conv=fsync 2>/dev/null; sync")
    act(panel, tenant.key, server, "stop", timeout=120)
    act(panel, tenant.key, server, "unrescue")
    assert "panel.rescue" not in guest.sh("cat /proc/cmdline")
    assert repair in guest.sh("dd if=/dev/vda bs=1M skip=100 count=1 2>/dev/null | head -n 1")
    assert inactive_xml(test_cluster, guest) == iso_env["normal_xml"]

"""OVA export and import on real libvirt + QEMU (the test cluster's node 1): a stopped server is
exported (the node's qemu-img writes the streamOptimized VMDK, folding in the template's image
its disk is an overlay of), the package is read by COT with its SHA256 manifest checked, and it
re-imports as a new server that boots the exported system (the tiny guest restores the system
saved on its disk and says its hostname) with the marker written before the export; an OVA made
outside the panel (a tar, qemu-img and a descriptor as VirtualBox writes it) imports and boots
the same way. Bad input, mapping and tenancy are in tests/test_ovf.py."""

import io
import logging
import subprocess
import tarfile
from unittest import mock

import pytest

from tests.e2e.conftest import ClusterGuest, cluster_with_node, create_tiny_server, make_tenant
from tests.test_ovf import pack, virtualbox_ovf

pytestmark = pytest.mark.e2e

MARKER_MIB = 64  # raw at 64 MiB of the disk, above the installed system (its first 8 MiB)


@pytest.fixture(scope="module")
def env(live_panel, test_cluster):
    with cluster_with_node(live_panel, test_cluster, "ovf", "10.77.1.220", "10.77.1.239") as env:
        templates = live_panel.call(live_panel.admin_key, "GET", "/api/v1/os-templates/").json()["results"]
        yield {**env, "tenant": make_tenant(live_panel, "ovf"),
               "tiny": next(t["id"] for t in templates if t["slug"] == "tiny")}


def act(panel, path: str, body: dict | None = None, timeout: float = 240) -> dict:
    r = panel.call(panel.admin_key, "POST", f"/api/v1/{path}", json=body or {})
    assert r.status_code == 202, r.text
    op = panel.wait_operation(panel.admin_key, r.json()["id"], timeout=timeout)
    assert op["status"] == "succeeded", op
    return op


def import_ova(panel, env, data: bytes, hostname: str) -> tuple[dict, dict]:
    """PUT the OVA; the import operation, awaited, and the new server as the admin sees it."""
    import requests

    query = {"customer": env["tenant"].customer_id, "hostname": hostname, "os_template": env["tiny"],
             "plan": env["plan"], "node": env["node"]}
    r = requests.put(panel.url + "/api/v1/ova/import/", params=query, data=data, timeout=120,
                     headers={"Authorization": f"Token {panel.admin_key}", "Content-Type": "application/octet-stream"})
    assert r.status_code == 202, r.text
    op = panel.wait_operation(panel.admin_key, r.json()["operation"]["id"], timeout=240)
    assert op["status"] == "succeeded", op
    server = panel.call(panel.admin_key, "GET", f"/api/v1/servers/{r.json()['server']}/").json()
    return op, server


def marker(guest: ClusterGuest) -> str:
    return guest.sh(f"dd if=/dev/vda bs=1M skip={MARKER_MIB} count=1 2>/dev/null | head -n 1").strip()


def wait_log(guest: ClusterGuest, text: str, timeout: float = 120) -> None:
    from tests.e2e.conftest import wait_for

    wait_for(lambda: text in guest.log(), timeout, f"{text!r} on the serial console")


def test_an_export_passes_cot_re_imports_and_boots_the_exported_system(live_panel, test_cluster, env, tmp_path,
                                                                       caplog):
    panel = live_panel
    original = create_tiny_server(panel, env, env["tenant"], "ovf-src")
    guest = ClusterGuest(test_cluster, original)
    guest.sh(f"echo exported-marker | dd of=/dev/vda bs=1M seek={MARKER_MIB} conv=fsync 2>/dev/null; sync")
    act(panel, f"servers/{original['id']}/stop/", {"force": True})

    op = act(panel, f"servers/{original['id']}/export-ova/", {"format": "vmdk"})
    r = panel.call(panel.admin_key, "GET", f"/api/v1/ova/{op['id']}/download/")
    assert r.status_code == 200, r.text
    ova = tmp_path / "export.ova"
    ova.write_bytes(r.content)
    with tarfile.open(ova) as tar:
        names = tar.getnames()
    assert names[0].endswith(".ovf") and names[1].endswith("-disk1.vmdk") and names[2].endswith(".mf")

    # COT reads the package and checks every checksum of its manifest (as SHA256, see tests/test_ovf.py).
    from COT.vm_description.ovf import OVF

    caplog.set_level(logging.WARNING)
    with mock.patch.object(OVF, "checksum_algorithm", "sha256"), OVF(str(ova), None) as vm:
        summary = vm.info_string(100)
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR], caplog.text
    assert "harddisk @ SATA 0:0" in summary and "128 MiB" in summary, summary

    op, copy = import_ova(panel, env, ova.read_bytes(), "ovf-reimported")
    assert copy["state"] == "running" and copy["uuid"] != original["uuid"]
    assert copy["ipv4"] and set(copy["ipv4"]).isdisjoint(original["ipv4"])
    back = ClusterGuest(test_cluster, copy)
    wait_log(back, "TINY-GUEST installed ovf-src")  # the exported system, restored from the imported disk
    assert marker(back) == "exported-marker"


def installed_system(hostname: str) -> bytes:
    """What the tiny guest restores at boot: a tar with etc/tiny-guest/installed and etc/hostname."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in (("etc/tiny-guest/installed", b"1\n"), ("etc/hostname", hostname.encode() + b"\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_an_ova_made_as_virtualbox_makes_one_imports_and_boots(live_panel, test_cluster, env, tmp_path):
    raw = tmp_path / "vbox.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(raw), "1G"], check=True)
    with open(raw, "r+b") as f:
        f.write(installed_system("vbox-made"))
        f.seek(MARKER_MIB * 2 ** 20)
        f.write(b"virtualbox-marker\n")
    vmdk = tmp_path / "vbox-tiny-disk001.vmdk"
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized",
                    str(raw), str(vmdk)], check=True)
    ova = pack([("vbox-tiny.ovf", virtualbox_ovf(capacity=2 ** 30)), (vmdk.name, vmdk.read_bytes())])

    op, server = import_ova(live_panel, env, ova, "vbox-import")
    assert any("(E1000) → virtio" in line for line in op["log"].splitlines()), op["log"]
    guest = ClusterGuest(test_cluster, server)
    wait_log(guest, "TINY-GUEST installed vbox-made")
    assert marker(guest) == "virtualbox-marker"
    assert f"TINY-GUEST net eth0 {server['ipv4'][0]}/24" in guest.log()  # an address from the pool

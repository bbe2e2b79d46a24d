"""OVF/OVA export and import (panel/images/ovf.py, ovf_jobs.py, ovf_api.py) on MariaDB with the
fake driver, and real qemu-img, tar and COT (the Common OVF Tool) for the packages themselves.
tests/e2e/test_ovf.py boots the results on real QEMU."""

import hashlib
import io
import json
import logging
import re
import subprocess
import tarfile
from pathlib import Path
from unittest import mock

import pytest

from nodes.connection import driver_for
from panel.images import ovf
from panel.vps.models import Operation, VirtualServer

pytestmark = pytest.mark.django_db

# A descriptor as VirtualBox 7 writes it (the vbox:Machine section left out): IDE and SATA
# controllers, an E1000 NIC on NAT, a USB controller, a sound card and an empty CD drive.
VIRTUALBOX_OVF = """<?xml version="1.0"?>
<Envelope ovf:version="1.0" xml:lang="en-US" xmlns="http://schemas.dmtf.org/ovf/envelope/1"
 xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
 xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
 xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
 xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:vbox="http://www.virtualbox.org/ovf/machine">
  <References>
    <File ovf:id="file1" ovf:href="{disk}"/>
  </References>
  <DiskSection>
    <Info>List of the virtual disks used in the package</Info>
    <Disk ovf:capacity="{capacity}" ovf:diskId="vmdisk1" ovf:fileRef="file1"
     ovf:format="{fmt_url}" vbox:uuid="0b3c0a9e-3a37-4a3f-9d0c-8f1d3f4b2a10"/>
  </DiskSection>
  <NetworkSection>
    <Info>Logical networks used in the package</Info>
    <Network ovf:name="NAT"><Description>Logical network used by this appliance.</Description></Network>
  </NetworkSection>
  <VirtualSystem ovf:id="vbox-tiny">
    <Info>A virtual machine</Info>
    <OperatingSystemSection ovf:id="101">
      <Info>The kind of installed guest operating system</Info>
      <Description>Linux26_64</Description>
      <vbox:OSType ovf:required="false">Linux26_64</vbox:OSType>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements for a virtual machine</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>vbox-tiny</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>virtualbox-2.2</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:Caption>2 virtual CPU</rasd:Caption><rasd:Description>Number of virtual CPUs</rasd:Description>
        <rasd:ElementName>2 virtual CPU</rasd:ElementName><rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>2</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>{mem_units}</rasd:AllocationUnits><rasd:Caption>256 MB of memory</rasd:Caption>
        <rasd:Description>Memory Size</rasd:Description><rasd:ElementName>256 MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>256</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address><rasd:Caption>ideController0</rasd:Caption>
        <rasd:Description>IDE Controller</rasd:Description><rasd:ElementName>ideController0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceSubType>PIIX4</rasd:ResourceSubType>
        <rasd:ResourceType>5</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address><rasd:Caption>sataController0</rasd:Caption>
        <rasd:Description>SATA Controller</rasd:Description><rasd:ElementName>sataController0</rasd:ElementName>
        <rasd:InstanceID>4</rasd:InstanceID><rasd:ResourceSubType>AHCI</rasd:ResourceSubType>
        <rasd:ResourceType>20</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address><rasd:Caption>usb</rasd:Caption><rasd:Description>USB Controller</rasd:Description>
        <rasd:ElementName>usb</rasd:ElementName><rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceType>23</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>3</rasd:AddressOnParent><rasd:AutomaticAllocation>false</rasd:AutomaticAllocation>
        <rasd:Caption>sound</rasd:Caption><rasd:Description>Sound Card</rasd:Description>
        <rasd:ElementName>sound</rasd:ElementName><rasd:InstanceID>6</rasd:InstanceID>
        <rasd:ResourceSubType>ensoniq1371</rasd:ResourceSubType><rasd:ResourceType>35</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation><rasd:Caption>Ethernet adapter on 'NAT'</rasd:Caption>
        <rasd:Connection>NAT</rasd:Connection><rasd:ElementName>Ethernet adapter on 'NAT'</rasd:ElementName>
        <rasd:InstanceID>7</rasd:InstanceID><rasd:ResourceSubType>E1000</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
      {disk_items}
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent><rasd:AutomaticAllocation>false</rasd:AutomaticAllocation>
        <rasd:Caption>cdrom1</rasd:Caption><rasd:Description>CD-ROM Drive</rasd:Description>
        <rasd:ElementName>cdrom1</rasd:ElementName><rasd:InstanceID>9</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent><rasd:ResourceType>15</rasd:ResourceType>
      </Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"""

DISK_ITEM = """<Item>
        <rasd:AddressOnParent>{n}</rasd:AddressOnParent><rasd:Caption>disk{n}</rasd:Caption>
        <rasd:Description>Disk Image</rasd:Description><rasd:ElementName>disk{n}</rasd:ElementName>
        <rasd:HostResource>/disk/{disk_id}</rasd:HostResource><rasd:InstanceID>{instance}</rasd:InstanceID>
        <rasd:Parent>4</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType>
      </Item>"""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_disk(tmp: Path, content: bytes, fmt: str = "vmdk", mib: int = 8) -> bytes:
    """A disk image made by qemu-img holding `content` at offset 0."""
    raw = tmp / "content.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(raw), f"{mib}M"], check=True)
    with open(raw, "r+b") as f:
        f.write(content)
    out = tmp / f"made.{fmt}"
    options = ["-o", "subformat=streamOptimized"] if fmt == "vmdk" else []
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", fmt, *options, str(raw), str(out)], check=True)
    return out.read_bytes()


def virtualbox_ovf(disk: str = "vbox-tiny-disk001.vmdk", capacity: int = 8 * 2 ** 20,
                   fmt_url: str = ovf.VMDK_STREAM, mem_units: str = "MegaBytes", disks: int = 1) -> bytes:
    items = "\n".join(DISK_ITEM.format(n=n, disk_id="vmdisk1" if n == 1 else f"vmdisk{n}", instance=7 + n + 10)
                      for n in range(1, disks + 1))
    text = VIRTUALBOX_OVF.format(disk=disk, capacity=capacity, fmt_url=fmt_url, mem_units=mem_units,
                                 disk_items=items)
    if disks > 1:  # the other disks' files and DiskSection entries
        extra_files = "".join(f'<File ovf:id="file{n}" ovf:href="vbox-tiny-disk00{n}.vmdk"/>' for n in range(2, disks + 1))
        extra_disks = "".join(f'<Disk ovf:capacity="{capacity}" ovf:diskId="vmdisk{n}" ovf:fileRef="file{n}" '
                              f'ovf:format="{fmt_url}"/>' for n in range(2, disks + 1))
        text = text.replace("</References>", extra_files + "</References>").replace(
            "</DiskSection>", extra_disks + "</DiskSection>")
    return text.encode()


def pack(members: list[tuple[str, bytes]], manifest: bool = True, name: str = "vbox-tiny") -> bytes:
    """An OVA as VirtualBox packs one: the descriptor, the disks, a SHA256 manifest."""
    if manifest:
        members = [*members, (f"{name}.mf", "".join(f"SHA256({n})= {sha256(d)}\n" for n, d in members).encode())]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for n, data in members:
            info = tarfile.TarInfo(n)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def virtualbox_ova(tmp: Path, content: bytes = b"VBOX-MARKER", fmt: str = "vmdk") -> bytes:
    """An OVA made outside the panel: qemu-img's disk and a hand-written VirtualBox descriptor."""
    disk = make_disk(tmp, content, fmt)
    href = f"vbox-tiny-disk001.{fmt}"
    url = ovf.VMDK_STREAM if fmt == "vmdk" else ovf.QCOW2
    return pack([("vbox-tiny.ovf", virtualbox_ovf(disk=href, fmt_url=url)), (href, disk)])


def raw_of(image: bytes, tmp: Path) -> bytes:
    src, out = tmp / "image", tmp / "image.raw"
    src.write_bytes(image)
    subprocess.run(["qemu-img", "convert", "-q", "-O", "raw", str(src), str(out)], check=True)
    return out.read_bytes()


@pytest.fixture(autouse=True)
def ovf_dir(settings, tmp_path):
    settings.OVF_DIR = tmp_path / "ovf"
    return settings.OVF_DIR


def left_in(ovf_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(ovf_dir)) for p in ovf_dir.rglob("*") if p.is_file()) if ovf_dir.exists() else []


def import_ova(world, data: bytes, hostname: str = "imported", **params):
    query = {"customer": world.alice_customer.id, "hostname": hostname, "os_template": tiny_id(), **params}
    url = "/api/v1/ova/import/?" + "&".join(f"{k}={v}" for k, v in query.items())
    return world.client(world.admin_key).put(url, data, content_type="application/octet-stream")


def tiny_id() -> int:
    from templates_os.models import OsTemplate

    return OsTemplate.objects.get(slug="tiny").id


def stopped(server) -> VirtualServer:
    driver_for(server.node.uri).destroy(server.domain_name)
    server.set_state("stopped")
    return server


# -- the descriptor --------------------------------------------------------------------------------
def test_a_virtualbox_descriptor_maps_cpus_memory_disk_and_nic_and_says_how():
    appliance = ovf.parse_descriptor(virtualbox_ovf())
    assert (appliance.name, appliance.vcpus, appliance.ram_mib, appliance.nics) == ("vbox-tiny", 2, 256, 1)
    assert [d.href for d in appliance.disks] == ["vbox-tiny-disk001.vmdk"] and appliance.disks[0].claimed == "vmdk"
    said = "\n".join(appliance.mapping)
    assert "controller ideController0 (PIIX4) → virtio" in said and "sataController0 (AHCI) → virtio" in said
    assert "network adapter Ethernet adapter on 'NAT' (E1000) → virtio" in said
    assert "USB controller usb → left out" in said and "sound card sound → left out" in said
    assert "CD drive cdrom1 → left out" in said


@pytest.mark.parametrize("units,mib", [("MegaBytes", 256), ("byte * 2^20", 256), ("byte * 2^30", 256 * 1024)])
def test_memory_units_as_virtualbox_and_vmware_write_them(units, mib):
    assert ovf.parse_descriptor(virtualbox_ovf(mem_units=units)).ram_mib == mib


def test_what_cannot_be_mapped_is_refused_in_one_list():
    text = virtualbox_ovf(disks=2).replace(b"<rasd:ResourceType>23</rasd:ResourceType>",
                                           b"<rasd:ResourceType>7</rasd:ResourceType>")
    with pytest.raises(ovf.OvfError) as caught:
        ovf.parse_descriptor(text)
    assert caught.value.problems == [
        "device usb of resource type 7 cannot be mapped",
        "2 disks; a server takes 1: vbox-tiny-disk001.vmdk, vbox-tiny-disk002.vmdk"]


def test_an_entity_bomb_or_an_external_entity_is_refused_by_the_parser():
    bomb = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><x>&b;</x>'
    external = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>'
    for text in (bomb, external):
        with pytest.raises(ovf.OvfError, match="not valid XML"):
            ovf.parse_descriptor(text)


def test_a_drive_naming_a_disk_the_disk_section_lacks_is_refused():
    text = virtualbox_ovf().replace(b"<rasd:HostResource>/disk/vmdisk1", b"<rasd:HostResource>/disk/vmdisk9")
    with pytest.raises(ovf.OvfError, match="names /disk/vmdisk9, which DiskSection does not describe"):
        ovf.parse_descriptor(text)


# -- export ----------------------------------------------------------------------------------------
def test_an_export_is_an_ova_cot_reads_with_matching_sha256_manifest_and_the_disk_as_vmdk(
        world, alice_server, tmp_path, caplog):
    server = stopped(alice_server)
    driver_for(server.node.uri).set_content(server.disk_volume, b"EXPORT-MARKER" + b"\0" * 4096)
    r = world.client(world.admin_key).post(f"/api/v1/servers/{server.id}/export-ova/", {"format": "vmdk"},
                                           format="json")
    assert r.status_code == 202, r.json()
    op = Operation.objects.get(pk=r.json()["id"])
    assert op.status == "succeeded", op.log
    assert "packing the OVA" in op.customer_log  # live progress, in the customer's words too
    download = world.client(world.admin_key).get(f"/api/v1/ova/{op.id}/download/")
    assert download.status_code == 200 and download["Content-Type"] == "application/x-tar"
    ova = tmp_path / "export.ova"
    ova.write_bytes(b"".join(download.streaming_content))
    with tarfile.open(ova) as tar:
        names = tar.getnames()
        files = {n: tar.extractfile(n).read() for n in names}
    base = f"alice-web-{op.id}"
    assert names == [f"{base}.ovf", f"{base}-disk1.vmdk", f"{base}.mf"]  # the descriptor first
    manifest = dict(re.fullmatch(r"SHA256\((.+)\)= ([0-9a-f]{64})", line).groups()
                    for line in files[f"{base}.mf"].decode().splitlines())
    assert manifest == {n: sha256(files[n]) for n in names[:2]}
    disk = tmp_path / "disk.vmdk"
    disk.write_bytes(files[f"{base}-disk1.vmdk"])
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(disk)], capture_output=True,
                                     check=True).stdout)
    assert info["format"] == "vmdk" and info["format-specific"]["data"]["create-type"] == "streamOptimized"
    assert raw_of(disk.read_bytes(), tmp_path).startswith(b"EXPORT-MARKER")
    # COT, an OVF library: it parses the package and checks the manifest. It assumes SHA1 for
    # OVF 1.x; VirtualBox and this panel write SHA256, so it is told which algorithm to check.
    from COT.vm_description.ovf import OVF

    caplog.set_level(logging.WARNING)
    with mock.patch.object(OVF, "checksum_algorithm", "sha256"), OVF(str(ova), None) as vm:
        summary = vm.info_string(100)
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR], caplog.text
    nics = server.nics.count()
    assert re.search(rf"None \(default\)\s+1\s+256 MiB\s+{nics}\s+0\s+1 /", summary), summary
    assert "harddisk @ SATA 0:0" in summary and f"{base}-disk1.vmdk" in summary


def test_a_qcow2_export_and_what_a_customer_or_a_running_server_gets(world, alice_server):
    admin = world.client(world.admin_key)
    r = admin.post(f"/api/v1/servers/{alice_server.id}/export-ova/", {"format": "qcow2"}, format="json")
    assert r.status_code == 409 and r.json()["code"] == "invalid_state"
    server = stopped(alice_server)
    r = world.client(world.alice_key).post(f"/api/v1/servers/{server.id}/export-ova/", {}, format="json")
    assert r.status_code == 403
    r = admin.post(f"/api/v1/servers/{server.id}/export-ova/", {"format": "ova"}, format="json")
    assert r.status_code == 400 and "format" in r.json()["fields"]
    assert not Operation.objects.filter(kind="ova_export").exists()
    r = admin.post(f"/api/v1/servers/{server.id}/export-ova/", {"format": "qcow2"}, format="json")
    op = Operation.objects.get(pk=r.json()["id"])
    assert op.status == "succeeded", op.log and op.params["file"].endswith(".ova")
    assert world.client(world.alice_key).get(f"/api/v1/ova/{op.id}/download/").status_code == 403
    download = admin.get(f"/api/v1/ova/{op.id}/download/")
    with tarfile.open(fileobj=io.BytesIO(b"".join(download.streaming_content))) as tar:
        disk = tar.extractfile(tar.getnames()[1]).read()
    assert disk.startswith(b"QFI\xfb")


def test_a_failed_export_leaves_no_ova_and_no_staged_volume(world, alice_server, ovf_dir):
    server = stopped(alice_server)
    driver = driver_for(server.node.uri)
    driver.fail_next["read_volume"] = ovf.OvfError(["the stream broke"])
    r = world.client(world.admin_key).post(f"/api/v1/servers/{server.id}/export-ova/", {}, format="json")
    op = Operation.objects.get(pk=r.json()["id"])
    assert op.status == "failed" and "the stream broke" in op.error
    assert left_in(ovf_dir) == []
    assert not driver.volume_exists(server.storage.pool_name, f"{server.domain_name}-export.vmdk")


def test_an_export_after_a_snapshot_holds_what_the_guest_wrote_since(world, alice_server, tmp_path):
    """The domain writes the newest snapshot's overlay: the export reads the chain from its top."""
    from panel.images.snapshots import Snapshot

    server = stopped(alice_server)
    driver = driver_for(server.node.uri)
    overlay = f"{server.domain_name}-snap1.qcow2"
    driver.set_content(server.disk_volume, b"BEFORE-SNAPSHOT" + b"\0" * 4096)
    driver.upload_volume(server.storage.pool_name, overlay, b"AFTER-SNAPSHOT" + b"\0" * 4096)
    Snapshot.objects.create(server=server, name="s1", status="ready", image=server.disk_volume, overlay=overlay)
    admin = world.client(world.admin_key)
    op = Operation.objects.get(pk=admin.post(f"/api/v1/servers/{server.id}/export-ova/", {}, format="json").json()["id"])
    with tarfile.open(fileobj=io.BytesIO(b"".join(admin.get(f"/api/v1/ova/{op.id}/download/").streaming_content))) as tar:
        disk = tar.extractfile(tar.getnames()[1]).read()
    assert raw_of(disk, tmp_path).startswith(b"AFTER-SNAPSHOT")


# -- import ----------------------------------------------------------------------------------------
def test_an_export_re_imports_as_a_running_server_with_the_same_disk(world, alice_server, tmp_path, ovf_dir):
    server = stopped(alice_server)
    driver = driver_for(server.node.uri)
    driver.set_content(server.disk_volume, b"ROUND-TRIP" + b"\0" * 4096)
    admin = world.client(world.admin_key)
    op = Operation.objects.get(pk=admin.post(f"/api/v1/servers/{server.id}/export-ova/", {}, format="json").json()["id"])
    ova = b"".join(admin.get(f"/api/v1/ova/{op.id}/download/").streaming_content)
    r = import_ova(world, ova, hostname="round-trip")
    assert r.status_code == 202, r.json()
    new = VirtualServer.objects.get(pk=r.json()["server"])
    imported = Operation.objects.get(pk=r.json()["operation"]["id"])
    assert imported.status == "succeeded", imported.log
    assert (new.state, new.vcpus, new.ram_mib, new.plan) == ("running", 1, 256, world.plan)  # the plan derived
    assert any("→ virtio vda, qcow2" in line for line in r.json()["mapping"])
    assert raw_of(driver.content(new.disk_volume), tmp_path).startswith(b"ROUND-TRIP")
    assert driver.state(new.domain_name) == "running" and new.nics.count() == server.nics.count()
    assert [p for p in left_in(ovf_dir) if p.startswith("imports")] == []  # the upload is consumed


@pytest.mark.parametrize("fmt", ["vmdk", "qcow2"])
def test_a_virtualbox_made_ova_imports(world, tmp_path, fmt):
    from panel.vps.models import Plan

    bigger = Plan.objects.create(name="two-cpu", vcpus=2, ram_mib=512, disk_gib=2)
    r = import_ova(world, virtualbox_ova(tmp_path, fmt=fmt))
    assert r.status_code == 202, r.json()
    new = VirtualServer.objects.get(pk=r.json()["server"])
    assert new.plan == bigger and new.state == "running" and new.disk_gib == 2  # smallest plan with 2 CPUs
    assert raw_of(driver_for(new.node.uri).content(new.disk_volume), tmp_path).startswith(b"VBOX-MARKER")


def _refused(world, ovf_dir, data: bytes, *fragments: str):
    servers = VirtualServer.objects.count()
    r = import_ova(world, data)
    assert r.status_code == 400, r.json()
    assert r.json()["code"] == "ova_invalid", r.json()
    for fragment in fragments:
        assert fragment in r.json()["detail"], r.json()["detail"]
    assert VirtualServer.objects.count() == servers and not Operation.objects.filter(kind="ova_import").exists()
    assert left_in(ovf_dir) == []  # nothing left behind


def test_a_truncated_ova_is_refused_and_nothing_is_left(world, tmp_path, ovf_dir):
    ova = virtualbox_ova(tmp_path)
    _refused(world, ovf_dir, ova[:len(ova) // 2], "truncated")
    _refused(world, ovf_dir, b"not a tar at all" * 100, "truncated or not a tar archive")


def test_an_ovf_naming_a_missing_disk_is_refused(world, tmp_path, ovf_dir):
    descriptor = virtualbox_ovf(disk="vbox-tiny-disk001.vmdk")
    _refused(world, ovf_dir, pack([("vbox-tiny.ovf", descriptor)], manifest=False),
             "names disk file vbox-tiny-disk001.vmdk, which the package does not hold")


def test_a_manifest_mismatch_is_refused(world, tmp_path, ovf_dir):
    disk = make_disk(tmp_path, b"x")
    descriptor = virtualbox_ovf()
    mf = f"SHA256(vbox-tiny.ovf)= {sha256(descriptor)}\nSHA256(vbox-tiny-disk001.vmdk)= {sha256(disk + b'!')}\n"
    _refused(world, ovf_dir, pack([("vbox-tiny.ovf", descriptor), ("vbox-tiny-disk001.vmdk", disk),
                                   ("vbox-tiny.mf", mf.encode())], manifest=False),
             "checksum mismatch for vbox-tiny-disk001.vmdk")


def test_a_disk_that_is_not_what_it_claims_is_refused(world, tmp_path, ovf_dir):
    qcow2 = make_disk(tmp_path, b"x", fmt="qcow2")
    _refused(world, ovf_dir, pack([("vbox-tiny.ovf", virtualbox_ovf()), ("vbox-tiny-disk001.vmdk", qcow2)]),
             "vbox-tiny-disk001.vmdk claims to be vmdk but is qcow2")
    _refused(world, ovf_dir, pack([("vbox-tiny.ovf", virtualbox_ovf()), ("vbox-tiny-disk001.vmdk", b"\0" * 4096)]),
             "claims to be vmdk but is raw")


def test_a_disk_naming_a_file_of_the_panel_is_refused(world, tmp_path, ovf_dir):
    """A VMDK descriptor whose extent is /etc/passwd, a qcow2 backed by it: either would copy the
    panel's own file into the imported disk."""
    flat = (b'# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\n'
            b'RW 8 FLAT "/etc/passwd" 0\nddb.virtualHWVersion = "4"\n')
    _refused(world, ovf_dir, pack([("vbox-tiny.ovf", virtualbox_ovf()), ("vbox-tiny-disk001.vmdk", flat)]),
             "refers to another file")
    backed = tmp_path / "backed.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", "/etc/passwd", str(backed)],
                   check=True)
    _refused(world, ovf_dir, pack([("vbox-tiny.ovf", virtualbox_ovf(disk="d.qcow2", fmt_url=ovf.QCOW2)),
                                   ("d.qcow2", backed.read_bytes())]),
             "refers to another file (a backing or data file)")


def test_links_paths_and_unmappable_hardware_are_refused(world, tmp_path, ovf_dir):
    _refused(world, ovf_dir, pack([("../vbox-tiny.ovf", virtualbox_ovf())]), "not a plain file with a plain name")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        link = tarfile.TarInfo("vbox-tiny-disk001.vmdk")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    _refused(world, ovf_dir, buf.getvalue(), "not a plain file")
    _refused(world, ovf_dir, pack([("vbox-tiny.ovf", virtualbox_ovf(disks=2))]), "2 disks; a server takes 1")


def test_import_is_for_admins_and_names_its_bad_parameters(world, tmp_path, ovf_dir):
    ova = virtualbox_ova(tmp_path)
    url = f"/api/v1/ova/import/?customer={world.alice_customer.id}&hostname=x&os_template={tiny_id()}"
    r = world.client(world.alice_key).put(url, ova, content_type="application/octet-stream")
    assert r.status_code == 403
    assert import_ova(world, ova, hostname="bad_name!").json()["fields"] == {"hostname": [mock.ANY]}
    assert import_ova(world, ova, plan=99999).json()["fields"] == {"plan": ["plan: does not exist."]}
    r = import_ova(world, ova, plan_id=1)
    assert r.status_code == 400 and r.json()["code"] == "unknown_filter"
    assert VirtualServer.objects.count() == 0 and left_in(ovf_dir) == []


def test_a_failed_import_leaves_no_server_volume_domain_or_file(world, tmp_path, ovf_dir):
    from panel.ipam.models import IpAddress
    from nodes.driver import DriverError

    driver = driver_for(world.node.uri)
    driver.fail_next["start"] = DriverError("the node said no")
    used = IpAddress.objects.filter(server__isnull=False).count()
    r = import_ova(world, virtualbox_ova(tmp_path), plan=world.plan.id)
    assert r.status_code == 202
    op = Operation.objects.get(pk=r.json()["operation"]["id"])
    assert op.status == "failed" and "the node said no" in op.error
    assert not VirtualServer.objects.filter(pk=r.json()["server"]).exists()
    assert IpAddress.objects.filter(server__isnull=False).count() == used
    assert driver.list_domains() == [] and left_in(ovf_dir) == []
    assert not [v for pool in driver.host.pools.values() for v in pool if v.endswith("-disk0.qcow2")]


# -- the UI (admins) -------------------------------------------------------------------------------
def ui(user):
    from django.test import Client

    client = Client()
    client.force_login(user)
    return client


def test_the_server_page_exports_a_stopped_server_and_the_operation_page_downloads_it(world, alice_server):
    admin, alice = ui(world.admin), ui(world.alice)
    assert 'id="ova-stop-first"' in admin.get(f"/servers/{alice_server.pk}/").content.decode()
    server = stopped(alice_server)
    assert 'id="ova-export-form"' in admin.get(f"/servers/{server.pk}/").content.decode()
    assert 'id="ova"' not in alice.get(f"/servers/{server.pk}/").content.decode()
    assert alice.post(f"/servers/{server.pk}/export-ova/", {"format": "vmdk"}).status_code == 404
    assert not Operation.objects.filter(kind="ova_export").exists()
    r = admin.post(f"/servers/{server.pk}/export-ova/", {"format": "vmdk"})
    op = Operation.objects.get(kind="ova_export")
    assert r.status_code == 302 and r["Location"] == f"/operations/{op.pk}/" and op.status == "succeeded"
    page = admin.get(f"/operations/{op.pk}/").content.decode()
    assert f'href="/operations/{op.pk}/ova/"' in page and 'id="ova-download"' not in alice.get(
        f"/operations/{op.pk}/").content.decode()
    download = admin.get(f"/operations/{op.pk}/ova/")
    assert download.status_code == 200 and tarfile.open(fileobj=io.BytesIO(b"".join(download.streaming_content)))
    assert alice.get(f"/operations/{op.pk}/ova/").status_code == 404


def test_the_import_form_imports_an_ova_and_shows_a_refusal_keeping_nothing(world, tmp_path, ovf_dir):
    from django.core.files.uploadedfile import SimpleUploadedFile

    admin = ui(world.admin)
    assert ui(world.alice).get("/admin/ova-import/").status_code == 404
    assert 'id="ova-import-link"' in admin.get("/admin/servers/").content.decode()
    form = {"customer": world.alice_customer.pk, "hostname": "from-form", "os_template": tiny_id(), "plan": ""}
    ova = virtualbox_ova(tmp_path)
    r = admin.post("/admin/ova-import/", {**form, "file": SimpleUploadedFile("cut.ova", ova[:len(ova) // 2])})
    assert r.status_code == 400 and "truncated" in r.content.decode()
    assert VirtualServer.objects.count() == 0 and left_in(ovf_dir) == []
    r = admin.post("/admin/ova-import/", {**form, "plan": world.plan.pk, "file": SimpleUploadedFile("v.ova", ova)})
    op = Operation.objects.get(kind="ova_import")
    assert r.status_code == 302 and r["Location"] == f"/operations/{op.pk}/" and op.status == "succeeded", op.log
    assert VirtualServer.objects.get(hostname="from-form").state == "running"

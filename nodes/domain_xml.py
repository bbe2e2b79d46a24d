"""Libvirt domain XML built from typed objects (never by string concatenation).

`DomainSpec` says what a server's domain is; `DomainSpec.to_xml()` renders it with
ElementTree, which escapes every value, so a hostile name can never change the structure.
"""

import ipaddress
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

METADATA_NS = "urn:x-kvm-panel:server:1"
# How often a guest's balloon driver reports its memory use (seconds).
BALLOON_STATS_SECONDS = 10
# Characters XML 1.0 cannot carry at all: ElementTree would write them and break the document.
_NOT_XML = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _check_text(what: str, value: str) -> None:
    if _NOT_XML.search(value):
        raise ValueError(f"{what} contains a control character")


@dataclass(frozen=True)
class Disk:
    """A virtio disk, or (device="cdrom") a read-only IDE CD-ROM such as a cloud-init seed."""

    path: str
    target: str = "vda"
    format: str = "qcow2"
    device: str = "disk"


def mbit_to_kbytes(mbit: int) -> int:
    """A rate in Mbit/s as libvirt's <bandwidth> KiB/s (1 Mbit/s = 125 kB/s ≈ 122 KiB/s); 0: no cap."""
    return mbit * 1000 // 8 * 1000 // 1024 if mbit else 0


# The anti-spoofing filter every addressed NIC references: libvirt's clean-traffic (MAC, IPv4,
# ARP) plus the same for IPv6, which clean-traffic drops entirely. Defined on every node by the
# driver (nodes.driver.LibvirtDriver.ensure_filters) before a domain can reference it.
ANTI_SPOOFING_FILTER = "panel-clean-traffic"
ANTI_SPOOFING_FILTER_UUID = "4f0c1c2e-7a5b-4e38-9d0f-5a6e1c0b7d21"
# An IPv4 source no guest can use: the value of IP on a NIC without IPv4 addresses, so it sends
# no IPv4 and no ARP (libvirt would otherwise learn IP from the guest's first packet).
NO_IPV4 = "0.0.0.0"


def anti_spoofing_filter_xml() -> str:
    """The panel's filter: out of a guest only its MAC, its IPv4 ($IP) and IPv6 ($IPV6) sources,
    ARP only for its own IPv4 and MAC; nothing else at layer 2 but QEMU's migration
    announcements. Built from libvirt's own filters; priorities as in clean-traffic."""
    root = ET.Element("filter", name=ANTI_SPOOFING_FILTER, chain="root")
    ET.SubElement(root, "uuid").text = ANTI_SPOOFING_FILTER_UUID

    def ref(name):
        ET.SubElement(root, "filterref", filter=name)

    def accept(protocol, direction, priority):
        rule = ET.SubElement(root, "rule", action="accept", direction=direction, priority=priority)
        ET.SubElement(rule, "mac", protocolid=protocol)

    ref("no-mac-spoofing")
    ref("no-ip-spoofing")  # chain ipv4-ip: sources other than $IP dropped
    accept("ipv4", "out", "-650")
    ref("allow-incoming-ipv4")
    ref("no-ipv6-spoofing")  # chain ipv6-ip: sources other than $IPV6 dropped (link-local UDP passes)
    accept("ipv6", "out", "-560")
    ref("allow-incoming-ipv6")
    ref("no-arp-spoofing")  # ARP sender MAC and IP must be the guest's own
    accept("arp", "inout", "-500")
    ref("no-other-l2-traffic")
    ref("qemu-announce-self")
    return ET.tostring(root, encoding="unicode")


def link_local(mac: str) -> str:
    """The IPv6 link-local address a NIC derives from its MAC (modified EUI-64): the one link-local
    source its filter lets through (neighbour discovery needs it)."""
    octets = [int(part, 16) for part in mac.split(":")]
    if len(octets) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    octets[0] ^= 0x02
    eui = octets[:3] + [0xFF, 0xFE] + octets[3:]
    groups = [f"{eui[i] << 8 | eui[i + 1]:x}" for i in range(0, 8, 2)]
    return str(ipaddress.IPv6Address("fe80::" + ":".join(groups)))


@dataclass(frozen=True)
class Nic:
    """A virtio NIC on a bridge. `ips` feed the anti-spoofing filter (ANTI_SPOOFING_FILTER);
    `average_kbytes` caps each direction (libvirt <bandwidth>, KiB/s); `isolated` makes its
    bridge port an isolated one (the shared private network: it reaches the bridge's host side
    only, never another isolated port)."""

    bridge: str
    mac: str
    ips: tuple[str, ...] = ()
    average_kbytes: int = 0
    isolated: bool = False

    def element(self) -> ET.Element:
        nic = ET.Element("interface", type="bridge")
        ET.SubElement(nic, "source", bridge=self.bridge)
        ET.SubElement(nic, "mac", address=self.mac)
        ET.SubElement(nic, "model", type="virtio")
        if self.ips:
            v4 = [ip for ip in self.ips if ":" not in ip]
            v6 = [ip for ip in self.ips if ":" in ip]
            filterref = ET.SubElement(nic, "filterref", filter=ANTI_SPOOFING_FILTER)
            # Never learn addresses from what the guest sends: only the panel's count.
            ET.SubElement(filterref, "parameter", name="CTRL_IP_LEARNING", value="none")
            for ip in v4 or [NO_IPV4]:
                ET.SubElement(filterref, "parameter", name="IP", value=ip)
            for ip in [*v6, link_local(self.mac)]:
                ET.SubElement(filterref, "parameter", name="IPV6", value=ip)
        if self.average_kbytes:
            bandwidth = ET.SubElement(nic, "bandwidth")
            for direction in ("inbound", "outbound"):
                ET.SubElement(bandwidth, direction, average=str(self.average_kbytes))
        if self.isolated:
            ET.SubElement(nic, "port", isolated="yes")
        return nic

    def to_xml(self) -> str:
        return ET.tostring(self.element(), encoding="unicode")


@dataclass(frozen=True)
class KernelBoot:
    """Direct kernel boot: the demo guest, and network installers later."""

    kernel: str
    initrd: str
    cmdline: str = "console=ttyS0"


@dataclass(frozen=True)
class DomainSpec:
    name: str
    uuid: str
    vcpus: int
    ram_mib: int
    virt_type: str  # "kvm" or "qemu"
    disks: tuple[Disk, ...] = ()
    kernel_boot: KernelBoot | None = None
    # Without kernel boot: the devices the firmware boots from, in order (default: the disk).
    boot_order: tuple[str, ...] = ()
    serial_log: str | None = None
    vnc_listen: str = "127.0.0.1"
    vnc_password: str | None = None
    # Written into <metadata> so the reconciler knows whose domain it is.
    panel_instance: str = ""
    server_id: int | None = None
    nics: tuple[Nic, ...] = ()
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.virt_type not in ("kvm", "qemu"):
            raise ValueError(f"virt_type must be kvm or qemu, not {self.virt_type!r}")
        if self.vcpus < 1 or self.ram_mib < 16:
            raise ValueError("a domain needs at least 1 vCPU and 16 MiB of RAM")
        _check_text("name", self.name)
        _check_text("serial log path", self.serial_log or "")
        for disk in self.disks:
            _check_text("disk path", disk.path)
        for nic in self.nics:
            for value in (nic.bridge, nic.mac, *nic.ips):
                _check_text("nic", value)
        if self.kernel_boot:
            for value in (self.kernel_boot.kernel, self.kernel_boot.initrd, self.kernel_boot.cmdline):
                _check_text("kernel boot", value)

    def to_xml(self) -> str:
        dom = ET.Element("domain", type=self.virt_type)
        ET.SubElement(dom, "name").text = self.name
        ET.SubElement(dom, "uuid").text = self.uuid
        meta = ET.SubElement(dom, "metadata")
        ET.SubElement(
            meta, f"{{{METADATA_NS}}}server", {"instance": self.panel_instance, "id": str(self.server_id or "")}
        )
        ET.SubElement(dom, "memory", unit="MiB").text = str(self.ram_mib)
        ET.SubElement(dom, "vcpu").text = str(self.vcpus)

        os_el = ET.SubElement(dom, "os")
        ET.SubElement(os_el, "type", arch="x86_64", machine="pc").text = "hvm"
        if self.kernel_boot:
            ET.SubElement(os_el, "kernel").text = self.kernel_boot.kernel
            ET.SubElement(os_el, "initrd").text = self.kernel_boot.initrd
            ET.SubElement(os_el, "cmdline").text = self.kernel_boot.cmdline
        else:
            for dev in self.boot_order or ("hd",):
                ET.SubElement(os_el, "boot", dev=dev)
        features = ET.SubElement(dom, "features")
        ET.SubElement(features, "acpi")
        ET.SubElement(features, "apic")
        if self.virt_type == "kvm":
            ET.SubElement(dom, "cpu", mode="host-passthrough")
        ET.SubElement(dom, "on_poweroff").text = "destroy"
        ET.SubElement(dom, "on_reboot").text = "restart"
        ET.SubElement(dom, "on_crash").text = "destroy"

        devices = ET.SubElement(dom, "devices")
        for disk in self.disks:
            d = ET.SubElement(devices, "disk", type="file", device=disk.device)
            if disk.device == "cdrom":
                ET.SubElement(d, "driver", name="qemu", type="raw")
                ET.SubElement(d, "source", file=disk.path)
                ET.SubElement(d, "target", dev=disk.target, bus="ide")
                ET.SubElement(d, "readonly")
                continue
            ET.SubElement(d, "driver", name="qemu", type=disk.format, discard="unmap")
            ET.SubElement(d, "source", file=disk.path)
            ET.SubElement(d, "target", dev=disk.target, bus="virtio")
        for nic in self.nics:
            devices.append(nic.element())
        if self.serial_log:
            serial = ET.SubElement(devices, "serial", type="file")
            ET.SubElement(serial, "source", path=self.serial_log, append="on")
            ET.SubElement(serial, "target", port="0")
        else:
            serial = ET.SubElement(devices, "serial", type="pty")
            ET.SubElement(serial, "target", port="0")
        console = ET.SubElement(devices, "console", type="file" if self.serial_log else "pty")
        if self.serial_log:
            ET.SubElement(console, "source", path=self.serial_log, append="on")
        ET.SubElement(console, "target", type="serial", port="0")
        graphics_attrs = {"type": "vnc", "port": "-1", "autoport": "yes", "listen": self.vnc_listen}
        if self.vnc_password:
            graphics_attrs["passwd"] = self.vnc_password
        graphics = ET.SubElement(devices, "graphics", graphics_attrs)
        ET.SubElement(graphics, "listen", type="address", address=self.vnc_listen)
        video = ET.SubElement(devices, "video")
        ET.SubElement(video, "model", type="vga")
        balloon = ET.SubElement(devices, "memballoon", model="virtio")
        # The guest reports its memory use every BALLOON_STATS_SECONDS (monitoring reads it;
        # a guest without the balloon driver reports nothing, and its memory reads "unknown").
        ET.SubElement(balloon, "stats", period=str(BALLOON_STATS_SECONDS))
        # The QEMU guest agent's channel: guests running qemu-guest-agent answer on it (password
        # resets); libvirt makes the socket itself, and guests without the agent ignore it.
        channel = ET.SubElement(devices, "channel", type="unix")
        ET.SubElement(channel, "target", type="virtio", name="org.qemu.guest_agent.0")
        ET.register_namespace("panel", METADATA_NS)
        return ET.tostring(dom, encoding="unicode")


def read_metadata(domain_xml: str) -> dict:
    """The panel metadata of a domain's XML: {'instance': …, 'id': …}, or {} if not ours."""
    root = ET.fromstring(domain_xml)
    el = root.find(f"metadata/{{{METADATA_NS}}}server")
    return dict(el.attrib) if el is not None else {}


def volume_xml(name: str, capacity_gib: int, fmt: str = "qcow2", backing: str | None = None,
               backing_format: str = "qcow2", capacity_bytes: int | None = None) -> str:
    """A volume; with `backing`, a thin qcow2 overlay on that image (the template's base disk)."""
    _check_text("volume", name + (backing or ""))
    vol = ET.Element("volume")
    ET.SubElement(vol, "name").text = name
    if capacity_bytes is not None:
        ET.SubElement(vol, "capacity", unit="bytes").text = str(capacity_bytes)
    else:
        ET.SubElement(vol, "capacity", unit="GiB").text = str(capacity_gib)
    target = ET.SubElement(vol, "target")
    ET.SubElement(target, "format", type=fmt)
    if fmt == "qcow2":
        # qcow2 v3: only it can keep the dirty bitmaps of incremental backups (libvirt's default is v2).
        ET.SubElement(target, "compat").text = "1.1"
    if backing:
        store = ET.SubElement(vol, "backingStore")
        ET.SubElement(store, "path").text = backing
        ET.SubElement(store, "format", type=backing_format)
    return ET.tostring(vol, encoding="unicode")


def dir_pool_xml(name: str, path: str) -> str:
    pool = ET.Element("pool", type="dir")
    ET.SubElement(pool, "name").text = name
    target = ET.SubElement(pool, "target")
    ET.SubElement(target, "path").text = path
    return ET.tostring(pool, encoding="unicode")


def backup_xml(disk: str, target_path: str, since: str | None = None) -> str:
    """A push-mode backup of one disk into a new qcow2 file; with `since`, only what changed
    after that checkpoint (an incremental backup)."""
    _check_text("backup", disk + target_path + (since or ""))
    backup = ET.Element("domainbackup", mode="push")
    if since:
        ET.SubElement(backup, "incremental").text = since
    disks = ET.SubElement(backup, "disks")
    entry = ET.SubElement(disks, "disk", name=disk, backup="yes", type="file")
    ET.SubElement(entry, "target", file=target_path)
    ET.SubElement(entry, "driver", type="qcow2")
    return ET.tostring(backup, encoding="unicode")


def checkpoint_xml(name: str, disk: str) -> str:
    """A checkpoint: QEMU starts a dirty bitmap on `disk`, so the next backup can copy only
    what was written after this one."""
    _check_text("checkpoint", name + disk)
    checkpoint = ET.Element("domaincheckpoint")
    ET.SubElement(checkpoint, "name").text = name
    disks = ET.SubElement(checkpoint, "disks")
    ET.SubElement(disks, "disk", name=disk, checkpoint="bitmap")
    return ET.tostring(checkpoint, encoding="unicode")


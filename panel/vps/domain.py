"""A server's domain definition, built from its rows: what the node's libvirt is told to run.

`domain_spec()` only reads (the server, its template, its NICs and addresses); the disk it
names is made apart, by `disk_path()`, so building a definition never changes a node.
"""

from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ObjectDoesNotExist

from nodes.domain_xml import Disk, DomainSpec, KernelBoot
from nodes.driver import Driver, DriverError
from panel.crypto import decrypt
from panel.images.models import Snapshot
from panel.ipam.addressing import domain_nics
from panel.vps.models import VirtualServer
from templates_os import provisioning


@dataclass(frozen=True)
class InstallBoot:
    """Boot the template's installer: its one-time config URL, and a seed ISO where it takes one."""

    config_url: str
    seed_path: str = ""


def disk_path(server: VirtualServer, driver: Driver) -> str:
    """The path of the server's system disk on `driver`'s node; made there when it is missing
    (a thin overlay of the template's image, or an empty disk), kept when it exists."""
    template = server.os_template
    if template is None:
        raise DriverError("the server has no OS template")
    top = Snapshot.top_volume(server)
    if top != server.disk_volume:
        # After a snapshot the domain writes its overlay: every definition must name that file.
        # It is never made here (an empty one would hide the guest's data).
        if not driver.volume_exists(server.storage.pool_name, top):
            raise DriverError(f"the server's snapshot overlay {top} is missing")
        return driver.create_volume(server.storage.pool_name, top, server.disk_gib)
    image = template.boot.get("image")
    return driver.create_volume(server.storage.pool_name, server.disk_volume, server.disk_gib,
                                backing=str(template.file_path(image)) if image else None)


def volume_path(storage, volume: str) -> str:
    """Where a volume of `storage`'s pool lies on every node (its pool's folder, or LVM's device)."""
    if storage.kind == storage.Kind.LVM:
        return f"/dev/{storage.volume_group}/{volume}"
    return f"{storage.path.rstrip('/')}/{volume}"


def data_disks(server: VirtualServer) -> list[Disk]:
    """The server's data disks (panel/images/disks.py) as its domain carries them: vdb, vdc, …"""
    if server.pk is None:
        return []
    return [Disk(path=volume_path(d.storage, d.volume), target=d.target)
            for d in server.data_disks.select_related("storage").order_by("target")]


# Rescue mode's cmdline: the rescue system (and a test) can tell it was booted as one.
RESCUE_CMDLINE = "console=ttyS0 panel.rescue=1"


def rescue_image() -> tuple[str, str]:
    """The rescue kernel and initrd: settings RESCUE_KERNEL/RESCUE_INITRD, by default the tiny
    demo OS's on the share (a busybox system in RAM)."""
    tiny = Path(settings.TEMPLATE_SHARE) / "tiny"
    return settings.RESCUE_KERNEL or str(tiny / "vmlinuz"), settings.RESCUE_INITRD or str(tiny / "initrd.img")


def boot_media(server: VirtualServer, disks: list, kernel_boot):
    """(disks, kernel boot, boot order) with the server's boot media (panel/images/isos.py,
    read through its relation so this room does not import that one): an ISO as a CD-ROM booted
    first, its disks after it; or the rescue kernel and initrd with the server's disks attached.
    As given when it boots normally."""
    try:
        media = server.media if server.pk else None
    except ObjectDoesNotExist:
        media = None
    if media is None or media.boot == "normal":
        return disks, kernel_boot, ()
    if media.boot == "rescue":
        kernel, initrd = rescue_image()
        return disks, KernelBoot(kernel, initrd, RESCUE_CMDLINE), ()
    cdrom = Disk(path=str(media.iso.path), target="hdc", format="raw", device="cdrom")
    return [*disks, cdrom], None, ("cdrom", "hd")


def domain_spec(server: VirtualServer, disk: str, node=None, install: InstallBoot | None = None) -> DomainSpec:
    """The server's domain as `node` (default: its own) would run it from the disk at `disk`:
    booting its installed system, or (with `install`) its template's installer."""
    node = node or server.node
    template = server.os_template
    if template is None:
        raise DriverError("the server has no OS template")
    boot = template.boot
    disks = [Disk(path=disk), *data_disks(server)]
    if install and install.seed_path:
        disks.append(Disk(path=install.seed_path, target="hdc", format="raw", device="cdrom"))
    kernel_boot = None
    key = "install_cmdline" if install else "cmdline"
    if boot.get("kernel") and boot.get(key):
        context = provisioning.boot_context(server, install.config_url if install else "")
        kernel_boot = KernelBoot(str(template.file_path(boot["kernel"])), str(template.file_path(boot["initrd"])),
                                 provisioning.render_cmdline(template, key, context))
    boot_order = ()
    if not install:  # an attached ISO or rescue mode (panel/images/isos.py) changes the boot
        disks, kernel_boot, boot_order = boot_media(server, disks, kernel_boot)
    return DomainSpec(
        name=server.domain_name,
        uuid=str(server.uuid),
        vcpus=server.vcpus,
        ram_mib=server.ram_mib,
        virt_type=node.virt_type or "qemu",
        disks=tuple(disks),
        kernel_boot=kernel_boot,
        boot_order=boot_order,
        nics=tuple(domain_nics(server)),
        serial_log=server.serial_log,
        # VNC listens only where the panel reaches it: the node's management address (or
        # loopback on the panel's own host), with the server's own password.
        vnc_listen=node.address or "127.0.0.1",
        vnc_password=decrypt(server.vnc_password),
        panel_instance=settings.PANEL_INSTANCE_ID,
        server_id=server.id,
    )

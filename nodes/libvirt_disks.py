"""Data disks on a node through libvirt: hot-plugging a disk into a domain and taking it out.

Contract (the fake driver keeps it too):

- `attach_disk` adds a virtio disk to the domain's definition and, when it runs, to the live
  guest (attachDeviceFlags LIVE|CONFIG); it returns whether the guest has it now. A disk
  already attached at that target is left alone (a retried add).
- `detach_disk` asks the running guest to release the disk (detachDeviceFlags LIVE: the guest
  must cooperate, as with a PCI unplug button) and waits up to `timeout` seconds for it to go;
  a guest that does not release it is a DriverError and the disk stays in the definition and
  the guest: never a forced removal under a guest that may still write to it. A stopped
  domain's definition just loses it. A disk not attached is nothing to do.
"""

import time
import xml.etree.ElementTree as ET
from typing import Callable

from nodes.domain_xml import Disk
from nodes.libvirt_errors import DriverError, is_missing, reconnecting


def disk_device_xml(disk: Disk) -> str:
    """The <disk> device of a virtio data disk, as DomainSpec.to_xml writes it."""
    d = ET.Element("disk", type="file", device="disk")
    ET.SubElement(d, "driver", name="qemu", type=disk.format, discard="unmap")
    ET.SubElement(d, "source", file=disk.path)
    ET.SubElement(d, "target", dev=disk.target, bus="virtio")
    return ET.tostring(d, encoding="unicode")


class LibvirtDisks:
    """The data-disk half of LibvirtDriver (mixed into it; uses its connection helpers)."""

    def _targets(self, dom, flags: int) -> set[str]:
        root = ET.fromstring(self._call("domain XML", dom.XMLDesc, flags))
        return {t.get("dev") for t in root.findall("devices/disk/target")}

    @reconnecting
    def attach_disk(self, name: str, disk: Disk) -> bool:
        lv = self._libvirt
        dom = self._require(name)
        running = bool(self._call("state", dom.isActive))
        flags = lv.VIR_DOMAIN_AFFECT_CONFIG
        if disk.target not in self._targets(dom, lv.VIR_DOMAIN_XML_INACTIVE):
            if running and disk.target not in self._targets(dom, 0):
                flags |= lv.VIR_DOMAIN_AFFECT_LIVE
            self._call("attach disk", dom.attachDeviceFlags, disk_device_xml(disk), flags)
        elif running and disk.target not in self._targets(dom, 0):
            self._call("attach disk", dom.attachDeviceFlags, disk_device_xml(disk), lv.VIR_DOMAIN_AFFECT_LIVE)
        return running

    @reconnecting
    def detach_disk(self, name: str, disk: Disk, timeout: float,
                    tick: Callable[[float], None] | None = None) -> None:
        lv = self._libvirt
        dom = self._domain(name)
        if dom is None:
            return
        xml = disk_device_xml(disk)
        if self._call("state", dom.isActive) and disk.target in self._targets(dom, 0):
            try:
                dom.detachDeviceFlags(xml, lv.VIR_DOMAIN_AFFECT_LIVE)
            except lv.libvirtError as exc:
                # QEMU answers at once that the unplug was asked; only a refusal is an error here.
                if not is_missing(exc):
                    raise DriverError(f"detach {disk.target}: {exc}") from exc
            started = time.monotonic()
            while disk.target in self._targets(dom, 0):
                elapsed = time.monotonic() - started
                if elapsed >= timeout:
                    raise DriverError(f"the guest did not release {disk.target} within {timeout:.0f} s; "
                                      "the disk stays attached (is the guest running and does it support "
                                      "PCI hot-unplug?)")
                if tick:
                    tick(elapsed)
                time.sleep(0.25)
        if disk.target in self._targets(dom, lv.VIR_DOMAIN_XML_INACTIVE):
            self._call("detach disk", dom.detachDeviceFlags, xml, lv.VIR_DOMAIN_AFFECT_CONFIG)


def disks_backup_xml(disks: list[tuple[str, str]], since: str | None = None) -> str:
    """A push-mode backup of several disks (target, file to write) in one job, so every disk is
    copied as it was at the same instant; with `since`, only what changed after that checkpoint."""
    backup = ET.Element("domainbackup", mode="push")
    if since:
        ET.SubElement(backup, "incremental").text = since
    entries = ET.SubElement(backup, "disks")
    for target, path in disks:
        entry = ET.SubElement(entries, "disk", name=target, backup="yes", type="file")
        ET.SubElement(entry, "target", file=path)
        ET.SubElement(entry, "driver", type="qcow2")
    return ET.tostring(backup, encoding="unicode")


def disks_checkpoint_xml(name: str, targets: list[str]) -> str:
    """One checkpoint with a dirty bitmap on every disk: the next backup of all of them is
    incremental from it (a disk added since has no bitmap, and the backup becomes full)."""
    checkpoint = ET.Element("domaincheckpoint")
    ET.SubElement(checkpoint, "name").text = name
    entries = ET.SubElement(checkpoint, "disks")
    for target in targets:
        ET.SubElement(entries, "disk", name=target, checkpoint="bitmap")
    return ET.tostring(checkpoint, encoding="unicode")


class LibvirtDiskBackups:
    """Backups of a domain with data disks: every disk in one libvirt backup job (mixed into
    LibvirtDriver beside LibvirtBackups, whose helpers it uses)."""

    @reconnecting
    def backup_disks(self, name: str, pool: str, disks: list[tuple[str, str, str]], checkpoint: str,
                     since: str | None = None, tick: Callable[[float], None] | None = None,
                     staging_pool: str | None = None) -> tuple[str, bool]:
        """`backup_disk` for several disks, `disks` as (target, volume, staging): the same kind
        for all and one checkpoint covering all. A stopped domain's disks are copied one by one
        (nothing writes to them)."""
        into = staging_pool or pool
        dom = self._require(name)
        if not self._call("state", dom.isActive):
            for _target, volume, staging in disks:
                self.backup_disk(name, pool, volume, staging, checkpoint, tick=tick, staging_pool=into)
            return "full", False
        for _target, _volume, staging in disks:
            self.delete_volume(into, staging)  # a leftover of a crashed run
        root = self._pool_path(into)
        files = [(target, f"{root}/{staging}") for target, _volume, staging in disks]
        targets = [target for target, _volume, _staging in disks]
        attempts = [(since, checkpoint)] if since else []
        attempts += [(None, checkpoint), (None, None)]
        for number, (base, mark) in enumerate(attempts):
            try:
                self._call("backup", dom.backupBegin, disks_backup_xml(files, base),
                           disks_checkpoint_xml(mark, targets) if mark else None, 0)
                break
            except DriverError as exc:
                if exc.retryable or number == len(attempts) - 1:
                    raise
                if base:  # a bitmap is missing (a disk replaced or added since): a new chain
                    self.drop_checkpoints(name, metadata_only=True)
        self._wait_for_job(dom, tick)
        self._call("refresh pool", self._pool(into).refresh, 0)
        return ("incremental" if base else "full"), mark is not None

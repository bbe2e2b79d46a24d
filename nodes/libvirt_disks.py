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

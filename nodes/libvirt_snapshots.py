"""Snapshots on a node through libvirt: external snapshots of a domain's system disk (vda),
with or without its memory, reverted by making the overlay anew, merged by block commit.

Contract (the fake driver keeps it too):

- `snapshot_disk` puts the new qcow2 overlay `overlay` on top of `top` (the file the domain
  writes now) and leaves the domain writing the overlay. A running domain does it through
  libvirt's external snapshot (no libvirt metadata is kept: the panel records the chain), with
  the guest agent freezing its file systems where one answers (the result says whether it
  did); with `memory`, the guest's RAM and device state are saved into that file at the same
  instant (the guest pauses for it, then runs on). A stopped domain gets the overlay made by
  qemu-img through libvirt. Internal qcow2 snapshots are never used: they block the guest and
  do not mix with the backups' checkpoints.
- `revert_disk` (the domain off) throws the overlay away and makes it anew, empty, on `image`.
  `restore_memory` then starts the domain from a memory file: the guest resumes where it was.
- `merge_snapshot` commits `overlay` into `image` (the file below it) and deletes it: a
  running domain's QEMU does it online (an active commit and pivot when the overlay is the top,
  else a commit below the top); a stopped one's by qemu-img, rebasing the file above.
- The domain's definition is the caller's: after each of these it defines the domain with its
  new top file (panel/vps/domain.py reads it from the panel's rows).
"""

import time
import xml.etree.ElementTree as ET

from nodes.domain_xml import volume_xml
from nodes.libvirt_errors import DriverError, is_connection_error, reconnecting

# The longest a block commit may take before the panel gives up on it (the job is aborted).
MERGE_TIMEOUT = 3600


def snapshot_xml(name: str, disks: list[str], overlay_path: str, memory_path: str | None) -> str:
    """An external snapshot of vda into `overlay_path` (and the memory into `memory_path`);
    the domain's other disks (a seed CD-ROM, data disks) are left out of it."""
    root = ET.Element("domainsnapshot")
    ET.SubElement(root, "name").text = name
    if memory_path:
        ET.SubElement(root, "memory", snapshot="external", file=memory_path)
    else:
        ET.SubElement(root, "memory", snapshot="no")
    listed = ET.SubElement(root, "disks")
    for target in disks:
        if target == "vda":
            disk = ET.SubElement(listed, "disk", name="vda", snapshot="external", type="file")
            ET.SubElement(disk, "source", file=overlay_path)
            ET.SubElement(disk, "driver", type="qcow2")
        else:
            ET.SubElement(listed, "disk", name=target, snapshot="no")
    return ET.tostring(root, encoding="unicode")


class LibvirtSnapshots:
    """The snapshot half of LibvirtDriver (mixed into it; uses its connection helpers)."""

    @reconnecting
    def snapshot_disk(self, name: str, pool: str, top: str, overlay: str, memory: str | None = None,
                      quiesce: bool = True) -> bool:
        """Returns whether the guest's file systems were frozen for it."""
        lv = self._libvirt
        dom = self._require(name)
        root = self._pool_path(pool)
        self.delete_volume(pool, overlay)  # a leftover of a crashed run
        if memory:
            self.delete_volume(pool, memory)
        if not self._call("state", dom.isActive):
            if memory:
                raise DriverError("a snapshot with memory needs a running domain")
            capacity = self._call("volume info", self._call("volume", self._pool(pool).storageVolLookupByName,
                                                            top).info)[1]
            self._call("create overlay", self._pool(pool).createXML,
                       volume_xml(overlay, 0, capacity_bytes=capacity, backing=f"{root}/{top}"), 0)
            return False
        domain = ET.fromstring(self._call("domain XML", dom.XMLDesc, 0))
        disks = [t.get("dev") for t in domain.findall("devices/disk/target")]
        xml = snapshot_xml(overlay, disks, f"{root}/{overlay}", f"{root}/{memory}" if memory else None)
        flags = lv.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA | lv.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
        if not memory:
            flags |= lv.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
        frozen = False
        if quiesce and not memory:  # a memory snapshot keeps the guest's caches: nothing to flush
            try:
                dom.snapshotCreateXML(xml, flags | lv.VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE)
                frozen = True
            except lv.libvirtError as exc:
                if is_connection_error(exc):
                    raise
                # No agent (or none answering): an ATOMIC snapshot that failed changed nothing.
        if not frozen:
            self._call("snapshot", dom.snapshotCreateXML, xml, flags)
        self._call("refresh pool", self._pool(pool).refresh, 0)
        return frozen

    @reconnecting
    def revert_disk(self, pool: str, image: str, overlay: str) -> None:
        root = self._pool_path(pool)
        capacity = self._call("volume info", self._call("volume", self._pool(pool).storageVolLookupByName,
                                                        image).info)[1]
        self.delete_volume(pool, overlay)
        self._call("create overlay", self._pool(pool).createXML,
                   volume_xml(overlay, 0, capacity_bytes=capacity, backing=f"{root}/{image}"), 0)

    @reconnecting
    def restore_memory(self, name: str, pool: str, memory: str, xml: str) -> None:
        """Start the (defined, stopped) domain from the memory file, with `xml` as its definition
        (the same devices; its disk is the new overlay)."""
        lv = self._libvirt
        self._call("restore", self.conn.restoreFlags, f"{self._pool_path(pool)}/{memory}", xml,
                   lv.VIR_DOMAIN_SAVE_RUNNING)

    @reconnecting
    def merge_snapshot(self, name: str, pool: str, image: str, overlay: str, above: str | None,
                       tick=None) -> None:
        """Commit `overlay` into `image`; `above` is the file whose backing file is `overlay`
        (None: `overlay` is the domain's top)."""
        lv = self._libvirt
        root = self._pool_path(pool)
        base, top = f"{root}/{image}", f"{root}/{overlay}"
        dom = self._domain(name)
        if dom is not None and self._call("state", dom.isActive):
            if above is None:
                self._call("block commit", dom.blockCommit, "vda", base, None, 0, lv.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE)
                self._wait_for_commit(dom, tick, pivot=True)
            else:
                self._call("block commit", dom.blockCommit, "vda", base, top, 0, 0)
                self._wait_for_commit(dom, tick, pivot=False)
            chain = ET.fromstring(self._call("domain XML", dom.XMLDesc, 0))
            if any(s.get("file") == top for s in chain.iter("source")):
                raise DriverError(f"the block commit of {overlay} did not finish: it is still in the disk's chain")
        else:
            self._run_on_node(["qemu-img", "commit", "-q", "-f", "qcow2", "-b", base, top])
            if above:
                # The data of `overlay` is in `image` now: only the header changes.
                self._run_on_node(["qemu-img", "rebase", "-q", "-u", "-f", "qcow2", "-F", "qcow2", "-b", base,
                                   f"{root}/{above}"])
        self.delete_volume(pool, overlay)
        self._call("refresh pool", self._pool(pool).refresh, 0)

    def _wait_for_commit(self, dom, tick, pivot: bool) -> None:
        lv = self._libvirt
        started = time.monotonic()
        while time.monotonic() - started < MERGE_TIMEOUT:
            info = self._call("block job", dom.blockJobInfo, "vda", 0)
            if not info:  # a commit below the top ends by itself
                if pivot:
                    raise DriverError("the active block commit ended before it could pivot")
                return
            if tick and info.get("end"):
                tick(info.get("cur", 0) / info["end"])
            if pivot and info.get("end") and info.get("cur") == info.get("end") and info.get("ready", 1):
                try:
                    dom.blockJobAbort("vda", lv.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
                    return
                except lv.libvirtError as exc:
                    if is_connection_error(exc) or "ready" not in str(exc).lower():
                        raise DriverError(f"block commit pivot: {exc}") from exc
            time.sleep(0.05)
        try:
            dom.blockJobAbort("vda", 0)
        except lv.libvirtError:
            pass
        raise DriverError(f"the block commit did not finish within {MERGE_TIMEOUT} s")

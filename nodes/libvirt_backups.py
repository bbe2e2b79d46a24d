"""Backups on a node through libvirt: point-in-time copies of a domain's disk, checkpoints for
incremental ones, streaming volumes to and from the panel, and rebuilding a disk from backups.

Contract (the fake driver keeps it too):

- `backup_disk` copies a disk as it is at one instant into a new qcow2 volume. A running domain
  is copied by libvirt's backup job (QEMU copies the point-in-time view while the guest keeps
  writing; never a plain copy of a disk being written) and gets a checkpoint, a dirty bitmap
  from which the next backup can be incremental. A stopped domain is copied whole by
  `qemu-img convert` through libvirt (nothing writes to it).
- A stopped domain has no bitmap to say what changed, but its disk file's `disk_stamp` (size,
  modification and change times) moves with every write, every start and every replacement
  ("" for a block device such as an LVM volume, whose device node's times do not move).
  When it has not moved since the last backup, `empty_increment` is that backup's next
  incremental: a qcow2 image of the disk's size holding no cluster, which restores to its parent.
- `assemble_disk` checks each image's structure, chains them (a full backup, then the
  incrementals in order) and writes one standalone qcow2 image; it never touches the disk
  the domain uses. `move_volume` then puts it in place.
- Volumes move between the panel and the node over libvirt's own connection (`read_volume`,
  `write_volume`): on a remote node that is the qemu+ssh tunnel, with its pinned host key.
"""

import shlex
import subprocess
import time
import xml.etree.ElementTree as ET
from typing import Callable, Collection, Iterable, Iterator
from urllib.parse import parse_qs, urlsplit

from nodes.domain_xml import backup_xml, checkpoint_xml, volume_xml
from nodes.libvirt_errors import DriverError, is_connection_error, reconnecting

CHUNK = 4 * 1024 * 1024
# libvirt carries a stream in messages of at most 256 KiB, so a receive never returns more; a
# larger buffer is only allocated and cleared on every call (4 MiB: ~25% slower downloads).
RECV_BYTES = 256 * 1024

# Runs on the node with the new image as $1 and the chain after it. `rebase -u` only rewrites
# the header (a backup job's incremental image names the live disk as its backing file); the
# check then reads each image's structure through its new backing chain.
ASSEMBLE_SCRIPT = r"""
set -e
dest=$1; shift
prev=
damaged() { echo "the backup image $(basename "$1") is damaged (qemu-img check failed)" >&2; exit 3; }
for image in "$@"; do
  if [ -z "$prev" ]; then
    qemu-img rebase -q -u -f qcow2 -b '' "$image" 2>/dev/null || damaged "$image"
  else
    qemu-img rebase -q -u -f qcow2 -F qcow2 -b "$prev" "$image" 2>/dev/null || damaged "$image"
  fi
  qemu-img check -q -f qcow2 "$image" >/dev/null 2>&1 || damaged "$image"
  prev=$image
done
qemu-img convert -q -f qcow2 -O qcow2 "$prev" "$dest.part"
mv -f "$dest.part" "$dest"
"""


# Runs on the node with a file as $1: "<algorithm>:<hex>". b3sum (BLAKE3, all cores) where the
# node has it, else SHA-256 through openssl (coreutils' sha256sum is several times slower).
CHECKSUM_SCRIPT = r"""
set -e
if command -v b3sum >/dev/null 2>&1; then
  sum=$(b3sum --no-names "$1")
  echo "blake3:$sum"
elif command -v openssl >/dev/null 2>&1; then
  sum=$(openssl dgst -sha256 -r "$1")
  echo "sha256:${sum%% *}"
else
  sum=$(sha256sum "$1")
  echo "sha256:${sum%% *}"
fi
"""


# Runs on the node: copy $1 to $2 through "$2.part", which a failed copy does not leave behind.
COPY_SCRIPT = r"""
cp --reflink=auto --sparse=always "$1" "$2.part" || { rm -f "$2.part"; exit 1; }
mv -f "$2.part" "$2"
"""


class LibvirtBackups:
    """The backup half of LibvirtDriver (mixed into it; uses its connection helpers)."""

    @reconnecting
    def backup_disk(self, name: str, pool: str, disk_volume: str, staging: str, checkpoint: str,
                    since: str | None = None, tick: Callable[[float], None] | None = None,
                    staging_pool: str | None = None) -> tuple[str, bool]:
        """Copy `disk_volume` (in `pool`) of domain `name` into the new volume `staging` (in
        `staging_pool`, by default the same pool). Returns the kind ("full" or "incremental")
        and whether `checkpoint` was made. An incremental whose checkpoint is gone (a reinstall
        replaced the disk) becomes a full backup; a disk that cannot hold bitmaps (a qcow2 v2
        image) gets full backups without a checkpoint."""
        into = staging_pool or pool
        self.delete_volume(into, staging)  # a leftover of a crashed run
        dom = self._require(name)
        if not self._call("state", dom.isActive):
            source = self._call("volume", self._pool(pool).storageVolLookupByName, disk_volume)
            capacity = self._call("volume info", source.info)[1]
            # createXMLFrom runs qemu-img convert, which reads through the template's backing image.
            self._call("copy volume", self._pool(into).createXMLFrom,
                       volume_xml(staging, 0, capacity_bytes=capacity), source, 0)
            return "full", False
        path = f"{self._pool_path(into)}/{staging}"
        attempts = [(since, checkpoint)] if since else []
        attempts += [(None, checkpoint), (None, None)]
        for number, (base, mark) in enumerate(attempts):
            try:
                self._call("backup", dom.backupBegin, backup_xml("vda", path, base),
                           checkpoint_xml(mark, "vda") if mark else None, 0)
                break
            except DriverError as exc:
                if exc.retryable or number == len(attempts) - 1:
                    raise
                if base:  # the checkpoint's bitmap went with a replaced disk: start a new chain
                    self.drop_checkpoints(name, metadata_only=True)
        self._wait_for_job(dom, tick)
        self._call("refresh pool", self._pool(into).refresh, 0)
        return ("incremental" if base else "full"), mark is not None

    @reconnecting
    def disk_stamp(self, pool: str, name: str) -> str:
        vol = self._call("volume", self._pool(pool).storageVolLookupByName, name)
        # The volume's XML stats the file anew on every call. ctime cannot be set back by hand
        # (a disk copied in with its old mtime still gets a new ctime).
        root = ET.fromstring(self._call("volume XML", vol.XMLDesc, 0))
        if root.get("type") != "file":
            return ""  # a device node's times do not move when the volume is written (LVM)
        stamps = root.find("target/timestamps")
        physical = self._call("volume info", vol.infoFlags, self._libvirt.VIR_STORAGE_VOL_GET_PHYSICAL)[2]
        return f"{physical}:{stamps.findtext('mtime')}:{stamps.findtext('ctime')}"

    @reconnecting
    def empty_increment(self, pool: str, disk_volume: str, staging: str, staging_pool: str) -> None:
        source = self._call("volume", self._pool(pool).storageVolLookupByName, disk_volume)
        capacity = self._call("volume info", source.info)[1]
        self.delete_volume(staging_pool, staging)
        self._call("create volume", self._pool(staging_pool).createXML,
                   volume_xml(staging, 0, capacity_bytes=capacity), 0)

    def _wait_for_job(self, dom, tick) -> None:
        lv = self._libvirt
        while True:
            stats = self._call("job", dom.jobStats, 0)
            if stats.get("type", lv.VIR_DOMAIN_JOB_NONE) == lv.VIR_DOMAIN_JOB_NONE:
                break
            if tick and stats.get("disk_total"):
                tick(stats.get("disk_processed", 0) / stats["disk_total"])
            time.sleep(0.02)  # the job's end is the backup's end: don't sit on it
        done = self._call("job", dom.jobStats, lv.VIR_DOMAIN_JOB_STATS_COMPLETED)
        if not done.get("success", done.get("type") == lv.VIR_DOMAIN_JOB_COMPLETED):
            raise DriverError(f"the backup job failed: {done.get('errmsg', 'no reason given by libvirt')}")

    def _pool_path(self, pool: str) -> str:
        root = ET.fromstring(self._call("pool XML", self._pool(pool).XMLDesc, 0))
        return root.findtext("target/path")

    @reconnecting
    def checkpoints(self, name: str) -> list[str]:
        dom = self._domain(name)
        if dom is None:
            return []
        # libvirt lists from a hash table; topological order puts each parent before its child.
        flags = self._libvirt.VIR_DOMAIN_CHECKPOINT_LIST_TOPOLOGICAL
        return [cp.getName() for cp in self._call("checkpoints", dom.listAllCheckpoints, flags)]

    @reconnecting
    def drop_checkpoints(self, name: str, keep: Collection[str] = (), metadata_only: bool = False) -> None:
        """Delete the domain's checkpoints but those in `keep`: each one costs QEMU a bitmap to
        update on every write. `metadata_only` when the disk holding the bitmaps was replaced."""
        lv = self._libvirt
        dom = self._domain(name)
        if dom is None:
            return
        flags = lv.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY if metadata_only else 0
        for cp in self._call("checkpoints", dom.listAllCheckpoints, 0):
            if cp.getName() not in keep:
                try:
                    cp.delete(flags)
                except lv.libvirtError as exc:
                    if is_connection_error(exc):
                        raise
                    cp.delete(lv.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY)

    def read_volume(self, pool: str, name: str) -> Iterator[bytes]:
        """The volume's bytes, in chunks, over libvirt's stream."""
        vol = self._call("volume", self._pool(pool).storageVolLookupByName, name)
        stream = self.conn.newStream(0)
        self._call("download", vol.download, stream, 0, 0, 0)
        try:
            while True:
                chunk = self._call("download", stream.recv, RECV_BYTES)
                if not chunk:
                    break
                yield chunk
            self._call("download", stream.finish)
        except BaseException:
            try:
                stream.abort()
            except self._libvirt.libvirtError:
                pass
            raise

    def write_volume(self, pool: str, name: str, chunks: Iterable[bytes], size: int) -> str:
        """A volume of exactly `size` bytes from `chunks` (replacing one of that name)."""
        self.delete_volume(pool, name)
        vol = self._call("create volume", self._pool(pool).createXML,
                         volume_xml(name, 0, fmt="raw", capacity_bytes=size), 0)
        stream = self.conn.newStream(0)
        self._call("upload", vol.upload, stream, 0, size, 0)
        sent = 0
        try:
            for chunk in chunks:
                sent += len(chunk)
                if sent > size:
                    raise DriverError(f"{name}: more data than the {size} bytes announced")
                view = memoryview(chunk)
                while view:
                    n = self._call("upload", stream.send, bytes(view[:CHUNK]))
                    view = view[n:]
            if sent != size:
                raise DriverError(f"{name}: {sent} bytes received, {size} expected (a truncated file?)")
            self._call("upload", stream.finish)
        except BaseException:
            try:
                stream.abort()
            except self._libvirt.libvirtError:
                pass
            self.delete_volume(pool, name)
            raise
        return vol.path()

    @reconnecting
    def volume_size(self, pool: str, name: str) -> int | None:
        """The bytes the volume's file holds (None when it does not exist)."""
        vol = self._volume(pool, name)
        if vol is None:
            return None
        # PHYSICAL: the file's length (plain info() gives a qcow2 image's virtual size)
        return self._call("volume info", vol.infoFlags, self._libvirt.VIR_STORAGE_VOL_GET_PHYSICAL)[2]

    @reconnecting
    def pool_free_bytes(self, pool: str) -> int:
        """The pool's free space as of its last refresh (ensure_pool refreshes it)."""
        return self._call("pool info", self._pool(pool).info)[3]

    @reconnecting
    def checksum_volume(self, pool: str, name: str) -> str:
        """The checksum of the volume's file, computed on the node where it lies."""
        out = self._run_on_node(["sh", "-c", CHECKSUM_SCRIPT, "sh", f"{self._pool_path(pool)}/{name}"])
        return out.strip()

    @reconnecting
    def assemble_disk(self, pool: str, chain: list[str], dest: str) -> None:
        root = self._pool_path(pool)
        self._run_on_node(["sh", "-c", ASSEMBLE_SCRIPT, "sh", f"{root}/{dest}", *[f"{root}/{c}" for c in chain]])
        self._call("refresh pool", self._pool(pool).refresh, 0)

    @reconnecting
    def copy_volume(self, source_pool: str, source: str, pool: str, dest: str) -> None:
        """Copy a file between two pools of the node, on the node (sparse; a reflink where the
        filesystem can), replacing `dest`."""
        into = f"{self._pool_path(pool)}/{dest}"
        self._run_on_node(["sh", "-c", COPY_SCRIPT, "sh", f"{self._pool_path(source_pool)}/{source}", into])
        self._call("refresh pool", self._pool(pool).refresh, 0)

    @reconnecting
    def move_volume(self, pool: str, source: str, dest: str) -> None:
        """Rename `source` to `dest` in the pool, replacing `dest` (whose domain must be off)."""
        root = self._pool_path(pool)
        self._run_on_node(["mv", "-f", f"{root}/{source}", f"{root}/{dest}"])
        self._call("refresh pool", self._pool(pool).refresh, 0)

    def _run_on_node(self, argv: list[str], timeout: float = 3600) -> str:
        """Run a command on the node: here for qemu:///system, else over the same ssh (wrapper,
        pinned host key) libvirt's qemu+ssh connection uses. Every argument is quoted."""
        url = urlsplit(self.uri)
        if url.hostname:
            wrapper = parse_qs(url.query).get("command", ["ssh"])[0]
            command = [wrapper, "-p", str(url.port or 22), f"{url.username or 'root'}@{url.hostname}",
                       "--", shlex.join(argv)]
        else:
            command = argv
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DriverError(f"{argv[0]} on the node: {exc}", retryable=True) from exc
        if done.returncode != 0:
            detail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-3:]
            raise DriverError(f"{' / '.join(detail) or argv[0] + ' failed'} (exit {done.returncode})",
                              retryable=done.returncode == 255)  # 255: ssh itself failed
        return done.stdout

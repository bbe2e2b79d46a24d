"""A folder on the server's node: the same path on every node (a local backup disk, or a share
mounted on all of them), seen through libvirt as a storage pool (`backups-<target id>-<path hash>`).

It is the fast target. libvirt's backup job writes the image straight into it: one pass, no
staging copy, nothing crosses the network; the node checksums the file where it lies
(`Driver.checksum_volume`: BLAKE3 with b3sum). Images stay uncompressed qcow2, restorable by
hand with qemu-img. The panel reaches the folder over libvirt (small files such as manifests
go up through a volume upload). A restore on the same node copies the chain there and the
node checksums the copies; onto another node it streams the chain like any target.
Libvirt pools are flat: "<uuid>/000012-full.qcow2" is stored as "<uuid>.000012-full.qcow2".
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from backup.targets import Readable, Target, TargetError, Writable, check_name
from nodes.driver import Driver, DriverError

if TYPE_CHECKING:
    from backup.models import BackupTarget
    from nodes.models import Node

# What the panel itself writes here: manifests and the check's probe, never disk images.
MAX_UPLOAD = 16 * 2**20


def pool_name(target_id: int, path: str) -> str:
    # The path is in the name: an edited path is a new pool, never the old folder.
    return f"backups-{target_id}-{hashlib.sha256(path.encode()).hexdigest()[:8]}"


class _Buffer(io.BytesIO):
    def write(self, data: bytes) -> int:
        if self.tell() + len(data) > MAX_UPLOAD:
            raise TargetError("a node folder takes only small files from the panel (disk images are "
                              "written there by the node's backup job)", permanent=True)
        return super().write(data)


class _VolumeReader:
    def __init__(self, chunks: Iterator[bytes], on_error):
        self._chunks, self._on_error, self._rest = chunks, on_error, b""

    def read(self, n: int = -1) -> bytes:
        try:
            while n < 0 or len(self._rest) < n:
                chunk = next(self._chunks, b"")
                if not chunk:
                    break
                self._rest += chunk
        except DriverError as exc:
            raise self._on_error(exc, "cannot read") from exc
        n = len(self._rest) if n < 0 else n
        data, self._rest = self._rest[:n], self._rest[n:]
        return data


class NodeFolderTarget(Target):
    """The folder `path` on `node`, through that node's driver."""

    def __init__(self, target_id: int, path: str, node: Node, driver: Driver | None = None):
        self.pool, self.path, self.node = pool_name(target_id, path), path, node
        self._driver, self._ready = driver, False

    def __repr__(self) -> str:
        return f"NodeFolderTarget({self.path!r} on {self.node.name})"

    @property
    def driver(self) -> Driver:
        """The node's driver, with the folder's pool defined and started (made once)."""
        if self._driver is None:
            from nodes.connection import driver_for

            self._driver = driver_for(self.node.uri)
        if not self._ready:
            try:
                self._driver.ensure_pool(self.pool, self.path)
            except DriverError as exc:
                raise self._error(exc, f"cannot use the folder {self.path}") from exc
            self._ready = True
        return self._driver

    def _error(self, exc: DriverError, action: str) -> TargetError:
        return TargetError(f"node {self.node.name}: {action}: {exc}", permanent=not exc.retryable)

    @staticmethod
    def volume(name: str) -> str:
        """The pool's volume name for a file name on the target."""
        return check_name(name).replace("/", ".")

    def free_bytes(self) -> int | None:
        try:
            return self.driver.pool_free_bytes(self.pool)
        except DriverError as exc:
            raise self._error(exc, "cannot read the free space") from exc

    @contextmanager
    def writer(self, name: str) -> Iterator[Writable]:
        volume = self.volume(name)
        buffer = _Buffer()
        yield buffer
        data = buffer.getvalue()
        try:
            self.driver.write_volume(self.pool, volume + ".part", [data], len(data))
            self.driver.move_volume(self.pool, volume + ".part", volume)
        except DriverError as exc:
            self.driver.delete_volume(self.pool, volume + ".part")
            raise self._error(exc, f"cannot write {name}") from exc

    @contextmanager
    def reader(self, name: str) -> Iterator[Readable]:
        volume = self.volume(name)
        if self.size(name) is None:
            raise TargetError(f"{name} is missing in {self.path} on node {self.node.name}", permanent=True)
        chunks = self.driver.read_volume(self.pool, volume)
        try:
            yield _VolumeReader(chunks, self._error)
        finally:
            chunks.close()

    def size(self, name: str) -> int | None:
        try:
            return self.driver.volume_size(self.pool, self.volume(name))
        except DriverError as exc:
            raise self._error(exc, f"cannot read the size of {name}") from exc

    def delete(self, name: str) -> None:
        volume = self.volume(name)
        try:
            self.driver.delete_volume(self.pool, volume)
        except DriverError as exc:
            raise self._error(exc, f"cannot delete {name}") from exc


def check_on_nodes(target: BackupTarget) -> tuple[str, int | None]:
    """Check the folder on every node that takes servers: (the errors, "" when none; the least
    free space)."""
    from nodes.models import Node

    errors, free = [], []
    nodes = Node.objects.exclude(state__in=[Node.State.INSTALLING, Node.State.OFFLINE]).order_by("name")
    for node in nodes:
        try:
            free.append(NodeFolderTarget(target.id, target.path, node).check().free_bytes)
        except TargetError as exc:
            errors.append(str(exc))
    if not nodes:
        errors.append("no node to check the folder on")
    return "; ".join(errors), min((f for f in free if f is not None), default=None)

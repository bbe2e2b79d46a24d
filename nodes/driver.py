"""The hypervisor driver: the one place in the panel that talks to libvirt.

`Driver` is the abstract contract: every primitive is an `abc.abstractmethod` (a driver that
lacks one cannot be instantiated), the composed operations (`state`, `stop`) are written once
here. tests/test_driver_contract.py runs the same cases against both drivers, the in-memory
`nodes.fake.FakeDriver` and (marked e2e) `LibvirtDriver` on qemu:///system. The contract:

- Domains are addressed by name. Every method raises `DriverError` on failure (never returns
  an error value); `DriverError.retryable` says whether trying again may help (the node is
  unreachable) or not (libvirt refused the request).
- Removal is idempotent: `destroy`, `undefine` and `delete_volume` of something that does not
  exist succeed, so a retried delete after a crash finishes cleanly.
- `define` of a name that exists replaces the definition; `start` of a running domain and
  `request_shutdown` of a stopped one do nothing. A domain's UUID is fixed by its first
  definition: `define` with another domain's UUID, or of a name with another UUID, fails.
- `create_volume` keeps an existing volume of that name (a retried create must not wipe a
  disk); `define` that fails leaves nothing defined; `write_volume` replaces a volume, and
  one that fails (more or fewer bytes than announced) leaves none.
- `stop` asks the guest to power off, waits up to `timeout` seconds, then forces it off.
"""

import abc
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Callable, Collection, Iterable, Iterator

from nodes.domain_xml import Disk, DomainSpec, Nic, anti_spoofing_filter_xml, dir_pool_xml, read_metadata, volume_xml
from nodes.libvirt_errors import DriverError, is_connection_error, is_missing, reconnecting
from nodes.libvirt_backups import LibvirtBackups
from nodes.libvirt_snapshots import LibvirtSnapshots
from nodes.libvirt_disks import LibvirtDiskBackups, LibvirtDisks
from nodes.libvirt_ovf import LibvirtOvf
from nodes.libvirt_stats import LibvirtStats
from nodes.node_stats import DomainStats, NodeSample


class DomainState(StrEnum):
    RUNNING = "running"
    SHUTOFF = "shutoff"
    PAUSED = "paused"
    OTHER = "other"


@dataclass(frozen=True)
class DomainInfo:
    name: str
    uuid: str
    state: DomainState
    # libvirt's domain id: a new one on every boot, -1 when shut off.
    boot_id: int = -1
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class HostInfo:
    hostname: str
    cpus: int
    ram_mib: int
    virt_type: str  # "kvm" when hardware virtualization works, else "qemu"
    libvirt_version: str


class Driver(abc.ABC):
    """The contract of a driver: its primitives, and the operations composed of them."""

    uri: str

    # One round trip to the node: DriverError (retryable) when it does not answer.
    @abc.abstractmethod
    def ping(self) -> None: ...
    # Let go of the node's connection; the next call opens a new one.
    @abc.abstractmethod
    def close(self) -> None: ...
    @abc.abstractmethod
    def host_info(self) -> HostInfo: ...
    @abc.abstractmethod
    def ensure_pool(self, name: str, path: str) -> None: ...
    def ensure_filters(self) -> None:
        """Make the network filters the panel's domains reference (the in-memory driver has none)."""
    @abc.abstractmethod
    def create_volume(self, pool: str, name: str, capacity_gib: int, backing: str | None = None) -> str: ...
    @abc.abstractmethod
    def upload_volume(self, pool: str, name: str, data: bytes) -> str: ...
    @abc.abstractmethod
    def delete_volume(self, pool: str, name: str) -> None: ...
    @abc.abstractmethod
    def volume_exists(self, pool: str, name: str) -> bool: ...
    @abc.abstractmethod
    def define(self, spec: DomainSpec) -> None: ...
    @abc.abstractmethod
    def start(self, name: str) -> None: ...
    @abc.abstractmethod
    def request_shutdown(self, name: str) -> None: ...
    @abc.abstractmethod
    def destroy(self, name: str) -> None: ...
    @abc.abstractmethod
    def undefine(self, name: str) -> None: ...
    @abc.abstractmethod
    def update_nic(self, name: str, nic: "Nic") -> None: ...
    @abc.abstractmethod
    def set_resources(self, name: str, vcpus: int, ram_mib: int, live: bool) -> bool: ...
    @abc.abstractmethod
    def grow_volume(self, pool: str, name: str, gib: int, domain_name: str | None = None) -> bool: ...
    @abc.abstractmethod
    def set_user_password(self, name: str, user: str, password: str) -> bool: ...
    @abc.abstractmethod
    def vnc_port(self, name: str) -> int: ...
    @abc.abstractmethod
    def migrate(self, name: str, dest: "Driver", dest_address: str, dest_xml: str, unsafe: bool = False) -> None: ...
    @abc.abstractmethod
    def info(self, name: str) -> DomainInfo | None: ...
    @abc.abstractmethod
    def list_domains(self) -> list[DomainInfo]: ...
    @abc.abstractmethod
    def stats(self, name: str) -> DomainStats | None: ...
    # Monitoring (nodes/libvirt_stats.py states the contract).
    @abc.abstractmethod
    def node_stats(self, names: list[str] | None = None) -> NodeSample: ...
    @abc.abstractmethod
    def guest_filesystems(self, name: str, timeout: int = 5) -> dict[str, tuple[int, int]]: ...
    # Data disks (nodes/libvirt_disks.py states the contract).
    @abc.abstractmethod
    def attach_disk(self, name: str, disk: "Disk") -> bool: ...
    @abc.abstractmethod
    def detach_disk(self, name: str, disk: "Disk", timeout: float,
                    tick: Callable[[float], None] | None = None) -> None: ...
    @abc.abstractmethod
    def backup_disks(self, name: str, pool: str, disks: list[tuple[str, str, str]], checkpoint: str,
                     since: str | None = None, tick: Callable[[float], None] | None = None,
                     staging_pool: str | None = None) -> tuple[str, bool]: ...
    # Backups (nodes/libvirt_backups.py states the contract).
    @abc.abstractmethod
    def backup_disk(self, name: str, pool: str, disk_volume: str, staging: str, checkpoint: str,
                    since: str | None = None, tick: Callable[[float], None] | None = None,
                    staging_pool: str | None = None) -> tuple[str, bool]: ...
    @abc.abstractmethod
    def disk_stamp(self, pool: str, name: str) -> str: ...
    @abc.abstractmethod
    def empty_increment(self, pool: str, disk_volume: str, staging: str, staging_pool: str) -> None: ...
    @abc.abstractmethod
    def checkpoints(self, name: str) -> list[str]: ...
    @abc.abstractmethod
    def drop_checkpoints(self, name: str, keep: Collection[str] = (), metadata_only: bool = False) -> None: ...
    @abc.abstractmethod
    def read_volume(self, pool: str, name: str) -> "Iterator[bytes]": ...
    @abc.abstractmethod
    def write_volume(self, pool: str, name: str, chunks: "Iterable[bytes]", size: int) -> str: ...
    @abc.abstractmethod
    def assemble_disk(self, pool: str, chain: list[str], dest: str) -> None: ...
    @abc.abstractmethod
    def volume_size(self, pool: str, name: str) -> int | None: ...
    @abc.abstractmethod
    def pool_free_bytes(self, pool: str) -> int: ...
    @abc.abstractmethod
    def checksum_volume(self, pool: str, name: str) -> str: ...
    @abc.abstractmethod
    def copy_volume(self, source_pool: str, source: str, pool: str, dest: str) -> None: ...
    @abc.abstractmethod
    def move_volume(self, pool: str, source: str, dest: str) -> None: ...
    @abc.abstractmethod
    def export_disk(self, pool: str, source: str, dest: str, fmt: str, source_format: str = "qcow2") -> None: ...
    # Snapshots (nodes/libvirt_snapshots.py states the contract).
    @abc.abstractmethod
    def snapshot_disk(self, name: str, pool: str, top: str, overlay: str, memory: str | None = None,
                      quiesce: bool = True) -> bool: ...
    @abc.abstractmethod
    def revert_disk(self, pool: str, image: str, overlay: str) -> None: ...
    @abc.abstractmethod
    def restore_memory(self, name: str, pool: str, memory: str, xml: str) -> None: ...
    @abc.abstractmethod
    def merge_snapshot(self, name: str, pool: str, image: str, overlay: str, above: str | None,
                       tick: Callable[[float], None] | None = None) -> None: ...

    def state(self, name: str) -> DomainState | None:
        """The domain's state, or None when no such domain is defined."""
        info = self.info(name)
        return info.state if info else None

    def stop(self, name: str, timeout: float, tick: Callable[[float], None] | None = None) -> bool:
        """Power the domain off: gracefully within `timeout` seconds, else by force.

        Returns True when it had to be forced. `tick(elapsed)` is called about once a second
        while waiting, so the caller can report progress and keep its heartbeat.
        """
        if self.state(name) in (None, DomainState.SHUTOFF):
            return False
        if timeout > 0:
            self.request_shutdown(name)
            started = time.monotonic()
            while (elapsed := time.monotonic() - started) < timeout:
                if self.state(name) in (None, DomainState.SHUTOFF):
                    return False
                if tick:
                    tick(elapsed)
                time.sleep(0.25)
        self.destroy(name)
        return True


class LibvirtDriver(LibvirtStats, LibvirtDisks, LibvirtDiskBackups, LibvirtSnapshots, LibvirtBackups, LibvirtOvf,
                    Driver):
    """The driver over libvirt-python for one node URI (qemu:///system, qemu+ssh://…)."""

    def __init__(self, uri: str):
        import libvirt

        self._libvirt = libvirt
        # libvirt prints every error to stderr by default; we raise them instead.
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        self.uri = uri
        self._conn = None
        self._lock = threading.Lock()
        self._filters_defined = False

    # -- connection --------------------------------------------------------------------------
    @property
    def conn(self):
        with self._lock:
            if self._conn is not None:
                try:
                    if self._conn.isAlive():
                        return self._conn
                except self._libvirt.libvirtError:
                    pass
                self._conn = None
            try:
                self._conn = self._libvirt.open(self.uri)
            except self._libvirt.libvirtError as exc:
                raise DriverError(f"cannot connect to {self.uri}: {exc}", retryable=True) from exc
            return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.close()
                except self._libvirt.libvirtError:
                    pass
                self._conn = None

    def _call(self, what: str, fn, *args):
        try:
            return fn(*args)
        except self._libvirt.libvirtError as exc:
            raise DriverError(f"{what}: {exc}", retryable=is_connection_error(exc)) from exc

    def _domain(self, name: str):
        """The virDomain, or None when it does not exist."""
        try:
            return self.conn.lookupByName(name)
        except self._libvirt.libvirtError as exc:
            if is_missing(exc):
                return None
            raise DriverError(f"lookup of {name}: {exc}", retryable=is_connection_error(exc)) from exc

    # -- host --------------------------------------------------------------------------------
    @reconnecting
    def ping(self) -> None:
        """One round trip to libvirtd (reconnecting once if the kept connection is dead)."""
        self._call("ping", self.conn.getLibVersion)

    @reconnecting
    def host_info(self) -> HostInfo:
        conn = self.conn
        model, ram_mib, cpus, *_ = self._call("node info", conn.getInfo)
        caps = ET.fromstring(self._call("capabilities", conn.getCapabilities))
        version = self._call("libvirt version", conn.getLibVersion)
        return HostInfo(
            hostname=self._call("hostname", conn.getHostname),
            cpus=cpus,
            ram_mib=ram_mib,
            virt_type=choose_virt_type(caps),
            libvirt_version=f"{version // 1000000}.{version // 1000 % 1000}.{version % 1000}",
        )

    # -- storage -----------------------------------------------------------------------------
    @reconnecting
    def ensure_pool(self, name: str, path: str) -> None:
        conn = self.conn
        try:
            pool = conn.storagePoolLookupByName(name)
        except self._libvirt.libvirtError:
            pool = self._call("define pool", conn.storagePoolDefineXML, dir_pool_xml(name, path), 0)
            self._call("build pool", pool.build, 0)
            self._call("autostart pool", pool.setAutostart, 1)
        if not pool.isActive():
            self._call("start pool", pool.create, 0)
        self._call("refresh pool", pool.refresh, 0)

    def _pool(self, name: str):
        return self._call(f"pool {name}", self.conn.storagePoolLookupByName, name)

    def _volume(self, pool: str, name: str):
        """The volume `name` in `pool`, or None when there is none."""
        try:
            return self._pool(pool).storageVolLookupByName(name)
        except self._libvirt.libvirtError as exc:
            if is_missing(exc):
                return None
            raise DriverError(f"volume {name}: {exc}") from exc

    @reconnecting
    def volume_exists(self, pool: str, name: str) -> bool:
        return self._volume(pool, name) is not None

    @reconnecting
    def create_volume(self, pool: str, name: str, capacity_gib: int, backing: str | None = None) -> str:
        """A qcow2 volume (an existing one is kept); with `backing`, a thin overlay on that image."""
        p = self._pool(pool)
        try:
            return p.storageVolLookupByName(name).path()
        except self._libvirt.libvirtError:
            pass
        vol = self._call("create volume", p.createXML, volume_xml(name, capacity_gib, backing=backing), 0)
        return vol.path()

    @reconnecting
    def upload_volume(self, pool: str, name: str, data: bytes) -> str:
        """A raw volume holding `data` (replacing one of that name), sent over libvirt's stream."""
        self.delete_volume(pool, name)
        p = self._pool(pool)
        vol = self._call("create volume", p.createXML,
                         volume_xml(name, 0, fmt="raw", capacity_bytes=len(data)), 0)
        stream = self.conn.newStream(0)
        self._call("upload volume", vol.upload, stream, 0, len(data), 0)
        try:
            self._call("upload volume", stream.send, data)
            self._call("upload volume", stream.finish)
        except DriverError:
            stream.abort()
            raise
        return vol.path()

    @reconnecting
    def delete_volume(self, pool: str, name: str) -> None:
        vol = self._volume(pool, name)
        if vol is not None:
            self._call("delete volume", vol.delete, 0)

    # -- domains -----------------------------------------------------------------------------
    def ensure_filters(self) -> None:
        """Define the panel's anti-spoofing nwfilter on this node (idempotent: the same name and
        UUID replace it), so every domain that references it can start or arrive by migration,
        also on a node installed before the filter existed."""
        self._call("define the network filter", self.conn.nwfilterDefineXML, anti_spoofing_filter_xml())
        self._filters_defined = True

    @reconnecting
    def define(self, spec: DomainSpec) -> None:
        if spec.nics and not self._filters_defined:
            self.ensure_filters()
        self._call("define", self.conn.defineXML, spec.to_xml())

    @reconnecting
    def start(self, name: str) -> None:
        dom = self._require(name)
        if not dom.isActive():
            self._call("start", dom.create)

    @reconnecting
    def request_shutdown(self, name: str) -> None:
        dom = self._domain(name)
        if dom is not None and dom.isActive():
            self._call("shutdown", dom.shutdown)

    @reconnecting
    def destroy(self, name: str) -> None:
        dom = self._domain(name)
        if dom is None:
            return
        try:
            dom.destroy()
        except self._libvirt.libvirtError as exc:
            if exc.get_error_code() != self._libvirt.VIR_ERR_OPERATION_INVALID and not is_missing(exc):
                raise DriverError(f"destroy: {exc}", retryable=is_connection_error(exc)) from exc

    @reconnecting
    def undefine(self, name: str) -> None:
        self.destroy(name)
        dom = self._domain(name)
        if dom is None:
            return
        lv = self._libvirt
        # Checkpoints (backups) are only bookkeeping for this domain: they go with it.
        flags = lv.VIR_DOMAIN_UNDEFINE_NVRAM | lv.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | \
            lv.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
        self._call("undefine", dom.undefineFlags, flags)

    @reconnecting
    def update_nic(self, name: str, nic: Nic) -> None:
        """Change a running domain's NIC (matched by MAC): its filter parameters, its bandwidth."""
        dom = self._require(name)
        if not self._filters_defined:
            self.ensure_filters()
        self._call("update interface", dom.updateDeviceFlags, nic.to_xml(), self._libvirt.VIR_DOMAIN_AFFECT_LIVE)

    @reconnecting
    def set_resources(self, name: str, vcpus: int, ram_mib: int, live: bool) -> bool:
        """Apply new vCPUs and RAM to the running domain, if `live` and its boot-time maximums
        allow both; returns whether they now apply live. The persistent definition (the next
        boot) is the caller's `define`; nothing is changed live unless both fit."""
        lv = self._libvirt
        dom = self._require(name)
        if not live or not self._call("state", dom.isActive):
            return False
        max_vcpus = self._call("maximum vCPUs", dom.vcpusFlags, lv.VIR_DOMAIN_VCPU_MAXIMUM | lv.VIR_DOMAIN_AFFECT_LIVE)
        max_kib = self._call("maximum memory", dom.maxMemory)
        if vcpus > max_vcpus or ram_mib * 1024 > max_kib:
            return False
        try:
            dom.setVcpusFlags(vcpus, lv.VIR_DOMAIN_AFFECT_LIVE)
            dom.setMemoryFlags(ram_mib * 1024, lv.VIR_DOMAIN_AFFECT_LIVE)
        except lv.libvirtError as exc:
            if is_connection_error(exc):
                raise
            return False  # the guest refused the hot-plug; the next boot applies the definition
        return True

    @reconnecting
    def grow_volume(self, pool: str, name: str, gib: int, domain_name: str | None = None) -> bool:
        """Grow a volume to `gib` (never shrinks; a volume already that big is left alone).
        With the running domain `domain_name` using it, QEMU grows it (blockResize) so the guest
        sees the new size now; returns whether it did. A stopped domain's volume is resized on
        the node and the guest sees it at its next boot."""
        lv = self._libvirt
        size = gib * 1024 ** 3
        try:
            vol = self._pool(pool).storageVolLookupByName(name)
        except lv.libvirtError as exc:
            raise DriverError(f"volume {name}: {exc}", retryable=is_connection_error(exc)) from exc
        dom = self._domain(domain_name) if domain_name else None
        if dom is not None and self._call("state", dom.isActive):
            path = self._call("volume path", vol.path)
            # QEMU holds the image open (and locked): it must do the resize itself.
            if self._call("block info", dom.blockInfo, path, 0)[0] < size:
                self._call("block resize", dom.blockResize, path, size, lv.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
            return True
        if self._call("volume info", vol.info)[1] < size:
            self._call("resize volume", vol.resize, size, 0)
        return False

    @reconnecting
    def set_user_password(self, name: str, user: str, password: str) -> bool:
        """Set a guest user's password through the QEMU guest agent. False when the domain is
        not running or has no (answering) agent; DriverError when the agent tried and failed."""
        lv = self._libvirt
        dom = self._require(name)
        if not self._call("state", dom.isActive):
            return False
        try:
            dom.setUserPassword(user, password, 0)
        except lv.libvirtError as exc:
            if is_connection_error(exc):
                raise
            code = exc.get_error_code()
            message = str(exc).lower()
            if code in (lv.VIR_ERR_AGENT_UNRESPONSIVE, lv.VIR_ERR_OPERATION_INVALID) or "not configured" in message \
                    or ("agent" in message and "not" in message):
                return False
            raise DriverError(f"set password: {exc}") from exc
        return True

    @reconnecting
    def vnc_port(self, name: str) -> int:
        """The TCP port of a running domain's VNC server."""
        dom = self._require(name)
        root = ET.fromstring(self._call("domain XML", dom.XMLDesc, 0))
        graphics = root.find("devices/graphics[@type='vnc']")
        port = int(graphics.get("port", "-1")) if graphics is not None else -1
        if port <= 0:
            raise DriverError(f"domain {name} has no VNC port (not running?)")
        return port

    @reconnecting
    def migrate(self, name: str, dest: "LibvirtDriver", dest_address: str, dest_xml: str, unsafe: bool = False) -> None:
        """Live-migrate a running domain to `dest` (shared storage): QEMU streams memory straight
        to the destination node's address; the destination gets `dest_xml` (its own VNC
        listen address) and keeps the definition, the source forgets it. `unsafe` is needed
        where libvirt cannot tell that a directory storage is shared."""
        lv = self._libvirt
        dest.ping()  # the destination's kept connection may be stale too
        dest.ensure_filters()  # the domain's NICs reference it: the destination refuses without it
        dom = self._require(name)
        flags = lv.VIR_MIGRATE_LIVE | lv.VIR_MIGRATE_PERSIST_DEST | lv.VIR_MIGRATE_UNDEFINE_SOURCE
        if unsafe:
            flags |= lv.VIR_MIGRATE_UNSAFE
        host = f"[{dest_address}]" if ":" in dest_address else dest_address
        params = {lv.VIR_MIGRATE_PARAM_URI: f"tcp://{host}", lv.VIR_MIGRATE_PARAM_DEST_XML: dest_xml}
        self._call("migrate", dom.migrate3, dest.conn, params, flags)

    def _require(self, name: str):
        dom = self._domain(name)
        if dom is None:
            raise DriverError(f"domain {name} does not exist on {self.uri}")
        return dom

    def _info_of(self, dom) -> DomainInfo:
        state = self._call("state", dom.state)[0]
        lv = self._libvirt
        mapped = {
            lv.VIR_DOMAIN_RUNNING: DomainState.RUNNING,
            lv.VIR_DOMAIN_BLOCKED: DomainState.RUNNING,
            lv.VIR_DOMAIN_SHUTOFF: DomainState.SHUTOFF,
            lv.VIR_DOMAIN_CRASHED: DomainState.SHUTOFF,
            lv.VIR_DOMAIN_PAUSED: DomainState.PAUSED,
            lv.VIR_DOMAIN_PMSUSPENDED: DomainState.PAUSED,
        }.get(state, DomainState.OTHER)
        try:
            metadata = read_metadata(dom.XMLDesc(0))
        except lv.libvirtError:
            metadata = {}
        return DomainInfo(dom.name(), dom.UUIDString(), mapped, dom.ID(), metadata)

    @reconnecting
    def info(self, name: str) -> DomainInfo | None:
        dom = self._domain(name)
        if dom is None:
            return None
        try:
            return self._info_of(dom)
        except DriverError:
            # Undefined between lookup and read.
            if self._domain(name) is None:
                return None
            raise

    @reconnecting
    def list_domains(self) -> list[DomainInfo]:
        return [self._info_of(dom) for dom in self._call("list domains", self.conn.listAllDomains, 0)]

    @reconnecting
    def stats(self, name: str) -> DomainStats | None:
        """The counters of a running domain; None when it does not exist or is not running."""
        dom = self._domain(name)
        if dom is None:
            return None
        try:
            if not dom.isActive():
                return None
            boot_id = dom.ID()
            root = ET.fromstring(dom.XMLDesc(0))
            rx = tx = 0
            for target in root.findall("devices/interface/target"):
                if target.get("dev"):
                    # (rx_bytes, rx_packets, rx_errs, rx_drop, tx_bytes, …), the guest's view
                    counters = dom.interfaceStats(target.get("dev"))
                    rx, tx = rx + counters[0], tx + counters[4]
            cpu_ns = dom.info()[4]
            try:
                # (rd_req, rd_bytes, wr_req, wr_bytes, errs)
                block = dom.blockStats("vda")
                read, write = block[1], block[3]
            except self._libvirt.libvirtError:
                read = write = 0  # no vda (a diskless domain)
        except self._libvirt.libvirtError as exc:
            if is_missing(exc):
                return None  # undefined between lookup and read
            raise  # (stopped between the checks: an error now, None on the next call)
        return DomainStats(boot_id=boot_id, rx_bytes=rx, tx_bytes=tx, cpu_ns=cpu_ns, read_bytes=read,
                           write_bytes=write)


def choose_virt_type(capabilities: ET.Element) -> str:
    """kvm when the host offers it AND its CPU has hardware virtualization; else qemu (TCG).

    /dev/kvm can exist where KVM does not work (broken nested virtualization): libvirt then
    lists the kvm domain type but the host CPU lacks vmx/svm, and a kvm domain would hang.
    """
    kvm_offered = capabilities.find("guest/arch[@name='x86_64']/domain[@type='kvm']") is not None
    features = {f.get("name") for f in capabilities.findall("host/cpu/feature")}
    return "kvm" if kvm_offered and features & {"vmx", "svm"} else "qemu"

"""A complete in-memory driver for fast unit tests (`fake://NAME` node URIs).

It keeps the same contract as `LibvirtDriver` (tests/test_driver_contract.py runs the same
cases against both). Nothing is kept on the class: a driver's hosts live in its `FakeWorld`,
one `_Host` per URI, like machines that outlive connections (drivers of one world can migrate
domains between their hosts); `nodes.connection` keeps one world and one driver per URI per
process. Inject failures by subclassing and overriding, or on the node's driver:
`driver_for(uri).fail_next["start"] = DriverError(...)` fails its next `start` once.
"""

import threading
from dataclasses import dataclass, field, replace
from itertools import count

import blake3

from nodes.domain_xml import DomainSpec
from nodes.driver import DomainInfo, DomainState, DomainStats, Driver, DriverError, HostInfo
from nodes.node_stats import DiskSample, DomainSample, HostSample, NicSample, NodeSample, PoolSample


@dataclass
class _Host:
    domains: dict[str, dict] = field(default_factory=dict)
    pools: dict[str, dict[str, int]] = field(default_factory=dict)
    # Guests that ignore the ACPI power button (like one without acpid).
    deaf_to_acpi: set[str] = field(default_factory=set)
    backing: dict[str, str] = field(default_factory=dict)  # overlay volume -> its base image
    uploads: dict[str, bytes] = field(default_factory=dict)  # uploaded volumes' contents
    # Guests running the QEMU guest agent (set_user_password works only for these).
    agent: set[str] = field(default_factory=set)
    passwords: dict[tuple[str, str], str] = field(default_factory=dict)  # (domain, user) -> password
    checkpoints: dict[str, list[str]] = field(default_factory=dict)  # domain -> its checkpoints, oldest first
    writes: dict[str, int] = field(default_factory=dict)  # volume -> times written, for disk_stamp
    saved_boot: dict[str, int] = field(default_factory=dict)  # memory snapshot volume -> the boot it saved
    # Guests that never release a hot-plugged disk (no PCI hot-unplug): detach_disk times out.
    holds_disks: set[str] = field(default_factory=set)
    # What node_stats reports of the host (HostSample's fields); tests move it on.
    usage: dict[str, int] = field(default_factory=lambda: {
        "cpu_busy_ns": 0, "cpu_idle_ns": 0, "cpu_iowait_ns": 0, "mem_total": 16 * 2**30, "mem_available": 12 * 2**30})
    # Guests whose QEMU monitor is held by a job: node_stats (NOWAIT) reports them incomplete.
    busy: set[str] = field(default_factory=set)
    # Filesystems the guest agent reports: domain -> {mount point: (used, total)}.
    filesystems: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)


class FakeWorld:
    """The fake nodes' hosts by URI, and the boot ids they hand out."""

    def __init__(self):
        self.hosts: dict[str, _Host] = {}
        # One lock for the world: a migration changes two hosts at once.
        self.lock = threading.RLock()
        self.boot_ids = count(1)

    def host(self, uri: str) -> _Host:
        with self.lock:
            return self.hosts.setdefault(uri, _Host())


class FakeDriver(Driver):
    def __init__(self, uri: str, world: FakeWorld | None = None):
        self.uri = uri
        self.world = world or FakeWorld()
        self.host = self.world.host(uri)
        # method -> the exception its next call raises (once).
        self.fail_next: dict[str, Exception] = {}
        # Every call as (method, name), for tests that check what was asked of the hypervisor.
        self.calls: list[tuple[str, str]] = []

    def _enter(self, method: str, name: str = "") -> None:
        self.calls.append((method, name))
        failure = self.fail_next.pop(method, None)
        if failure is not None:
            raise failure

    def ping(self) -> None:
        self._enter("ping")

    def close(self) -> None:
        pass

    def host_info(self) -> HostInfo:
        self._enter("host_info")
        return HostInfo(hostname=self.uri.split("://", 1)[-1] or "fake", cpus=8, ram_mib=16384,
                        virt_type="qemu", libvirt_version="0.0.0")

    def ensure_pool(self, name: str, path: str) -> None:
        self._enter("ensure_pool", name)
        with self.world.lock:
            self.host.pools.setdefault(name, {})

    def _pool(self, name: str) -> dict[str, int]:
        try:
            return self.host.pools[name]
        except KeyError:
            raise DriverError(f"pool {name} does not exist") from None

    def volume_exists(self, pool: str, name: str) -> bool:
        with self.world.lock:
            return name in self._pool(pool)

    def create_volume(self, pool: str, name: str, capacity_gib: int, backing: str | None = None) -> str:
        self._enter("create_volume", name)
        with self.world.lock:
            self._pool(pool).setdefault(name, capacity_gib)
            if backing:
                self.host.backing[name] = backing
        return f"/fake/{pool}/{name}"

    def upload_volume(self, pool: str, name: str, data: bytes) -> str:
        self._enter("upload_volume", name)
        with self.world.lock:
            self._pool(pool)[name] = len(data)
            self.host.uploads[name] = data
            self._written(name)
        return f"/fake/{pool}/{name}"

    def delete_volume(self, pool: str, name: str) -> None:
        self._enter("delete_volume", name)
        with self.world.lock:
            self._pool(pool).pop(name, None)
            self.host.uploads.pop(name, None)

    def content(self, name: str) -> bytes:
        """Tests: a volume's bytes (a disk nobody wrote to reads as its name)."""
        with self.world.lock:
            return self.host.uploads.get(name, f"fake disk {name}".encode())

    def set_content(self, name: str, data: bytes) -> None:
        """Tests: what the guest wrote to its disk."""
        with self.world.lock:
            self.host.uploads[name] = data
            self._written(name)

    # -- backups: the whole disk's bytes stand for both full and incremental images ---------
    def backup_disk(self, name, pool, disk_volume, staging, checkpoint, since=None, tick=None,
                    staging_pool=None) -> tuple[str, bool]:
        self._enter("backup_disk", name)
        with self.world.lock:
            dom = self._get(name)
            self._pool(pool)
            self._pool(staging_pool or pool)[staging] = 1
            self.host.uploads[staging] = self.content(disk_volume)
            if dom["state"] != DomainState.RUNNING:
                return "full", False
            known = self.host.checkpoints.setdefault(name, [])
            kind = "incremental" if since and since in known else "full"
            known.append(checkpoint)
        if tick:
            tick(1.0)
        return kind, True

    def disk_stamp(self, pool: str, name: str) -> str:
        # Moves when the disk is written (set_content), replaced (move_volume) or booted from.
        with self.world.lock:
            if name not in self._pool(pool):
                raise DriverError(f"volume {name} does not exist")
            return f"{len(self.content(name))}:{self.host.writes.get(name, 0)}"

    def _written(self, name: str) -> None:
        self.host.writes[name] = self.host.writes.get(name, 0) + 1

    def empty_increment(self, pool: str, disk_volume: str, staging: str, staging_pool: str) -> None:
        self._enter("empty_increment", staging)
        with self.world.lock:
            self._pool(staging_pool)[staging] = 1
            self.host.uploads[staging] = self.content(disk_volume)  # the whole disk stands for every image

    def checkpoints(self, name: str) -> list[str]:
        with self.world.lock:
            return list(self.host.checkpoints.get(name, []))

    def drop_checkpoints(self, name: str, keep=(), metadata_only: bool = False) -> None:
        self._enter("drop_checkpoints", name)
        with self.world.lock:
            self.host.checkpoints[name] = [cp for cp in self.host.checkpoints.get(name, []) if cp in keep]

    def read_volume(self, pool: str, name: str):
        self._enter("read_volume", name)
        with self.world.lock:
            if name not in self._pool(pool):
                raise DriverError(f"volume {name} does not exist")
            data = self.content(name)
        for start in range(0, len(data), 65536):
            yield data[start:start + 65536]

    def write_volume(self, pool: str, name: str, chunks, size: int) -> str:
        self._enter("write_volume", name)
        # Like libvirt: the old volume goes first, and a failed write leaves none.
        self.delete_volume(pool, name)
        data = b"".join(chunks)
        if len(data) != size:
            raise DriverError(f"{name}: {len(data)} bytes received, {size} expected (a truncated file?)")
        with self.world.lock:
            self._pool(pool)[name] = 1
            self.host.uploads[name] = data
            self._written(name)
        return f"/fake/{pool}/{name}"

    def assemble_disk(self, pool: str, chain: list[str], dest: str) -> None:
        self._enter("assemble_disk", dest)
        with self.world.lock:
            volumes = self._pool(pool)
            for image in chain:
                if image not in volumes:
                    raise DriverError(f"volume {image} does not exist")
            volumes[dest] = 1
            self.host.uploads[dest] = self.content(chain[-1])
            self._written(dest)

    def volume_size(self, pool: str, name: str) -> int | None:
        with self.world.lock:
            return len(self.content(name)) if name in self._pool(pool) else None

    def pool_free_bytes(self, pool: str) -> int:
        with self.world.lock:
            self._pool(pool)
        return 100 * 2**30

    def checksum_volume(self, pool: str, name: str) -> str:
        self._enter("checksum_volume", name)
        with self.world.lock:
            if name not in self._pool(pool):
                raise DriverError(f"volume {name} does not exist")
            return f"blake3:{blake3.blake3(self.content(name)).hexdigest()}"

    def copy_volume(self, source_pool: str, source: str, pool: str, dest: str) -> None:
        self._enter("copy_volume", dest)
        with self.world.lock:
            if source not in self._pool(source_pool):
                raise DriverError(f"volume {source} does not exist")
            self._pool(pool)[dest] = 1
            self.host.uploads[dest] = self.content(source)
            self._written(dest)

    def export_disk(self, pool: str, source: str, dest: str, fmt: str, source_format: str = "qcow2") -> None:
        """A real image of the volume's bytes (qemu-img here), so an export can be re-imported; a
        disk nobody wrote a qcow2 image to holds its bytes raw."""
        import subprocess
        import tempfile

        from nodes.libvirt_ovf import EXPORT_FORMATS

        self._enter("export_disk", dest)
        if fmt not in EXPORT_FORMATS or source_format not in ("qcow2", "raw"):
            raise DriverError(f"unknown export format {fmt!r} (from {source_format!r})")
        with self.world.lock:
            if source not in self._pool(pool):
                raise DriverError(f"volume {source} does not exist")
            data = self.content(source)
        with tempfile.TemporaryDirectory() as tmp:
            with open(f"{tmp}/src", "wb") as f:
                f.write(data)
            given = "qcow2" if data.startswith(b"QFI\xfb") else "raw"
            subprocess.run(["qemu-img", "convert", "-q", "-f", given, f"{tmp}/src", *EXPORT_FORMATS[fmt],
                            f"{tmp}/out"], check=True)
            with open(f"{tmp}/out", "rb") as f:
                image = f.read()
        with self.world.lock:
            self._pool(pool)[dest] = 1
            self.host.uploads[dest] = image
            self._written(dest)

    def move_volume(self, pool: str, source: str, dest: str) -> None:
        self._enter("move_volume", dest)
        with self.world.lock:
            volumes = self._pool(pool)
            if source not in volumes:
                raise DriverError(f"volume {source} does not exist")
            volumes[dest] = max(volumes.pop(source), volumes.get(dest, 0))
            self.host.uploads[dest] = self.host.uploads.pop(source, b"")
            self._written(dest)

    # -- snapshots: an overlay starts as its image's bytes (the guest's view of the chain) ------
    def snapshot_disk(self, name: str, pool: str, top: str, overlay: str, memory: str | None = None,
                      quiesce: bool = True) -> bool:
        self._enter("snapshot_disk", name)
        with self.world.lock:
            dom = self._get(name)
            volumes = self._pool(pool)
            if top not in volumes:
                raise DriverError(f"volume {top} does not exist")
            running = dom["state"] == DomainState.RUNNING
            if memory and not running:
                raise DriverError("a snapshot with memory needs a running domain")
            volumes[overlay] = volumes[top]
            self.host.backing[overlay] = top
            self.host.uploads[overlay] = self.content(top)
            if memory:
                volumes[memory] = 1
                self.host.uploads[memory] = f"memory of boot {dom['boot_id']}".encode()
                self.host.saved_boot[memory] = dom["boot_id"]
            return bool(quiesce and not memory and running and name in self.host.agent)

    def revert_disk(self, pool: str, image: str, overlay: str) -> None:
        self._enter("revert_disk", overlay)
        with self.world.lock:
            volumes = self._pool(pool)
            if image not in volumes:
                raise DriverError(f"volume {image} does not exist")
            volumes[overlay] = volumes[image]
            self.host.backing[overlay] = image
            self.host.uploads[overlay] = self.content(image)
            self._written(overlay)

    def restore_memory(self, name: str, pool: str, memory: str, xml: str) -> None:
        self._enter("restore_memory", name)
        with self.world.lock:
            dom = self._get(name)
            if memory not in self._pool(pool):
                raise DriverError(f"volume {memory} does not exist")
            if dom["state"] == DomainState.RUNNING:
                raise DriverError(f"domain {name} is already running")
            # The guest resumes: the same boot as when the memory was saved.
            dom["state"], dom["boot_id"] = DomainState.RUNNING, self.host.saved_boot[memory]

    def merge_snapshot(self, name: str, pool: str, image: str, overlay: str, above: str | None,
                       tick=None) -> None:
        self._enter("merge_snapshot", overlay)
        with self.world.lock:
            volumes = self._pool(pool)
            for volume in (image, overlay):
                if volume not in volumes:
                    raise DriverError(f"volume {volume} does not exist")
            self.host.uploads[image] = self.content(overlay)
            volumes[image] = max(volumes[image], volumes.pop(overlay))
            self.host.uploads.pop(overlay, None)
            self._written(image)
            if above:
                self.host.backing[above] = image

    def define(self, spec: DomainSpec) -> None:
        self._enter("define", spec.name)
        spec.to_xml()  # the same validation the real driver's XML goes through
        with self.world.lock:
            existing = self.host.domains.get(spec.name)
            # Like libvirt: a domain's UUID is its identity, fixed by its first definition.
            if existing and existing["spec"].uuid != spec.uuid:
                raise DriverError(f"domain {spec.name} is already defined with uuid {existing['spec'].uuid}")
            for other, dom in self.host.domains.items():
                if other != spec.name and dom["spec"].uuid == spec.uuid:
                    raise DriverError(f"domain {other} already exists with uuid {spec.uuid}")
            self.host.domains[spec.name] = {
                # What the running domain booted with stays until its next boot.
                **{k: existing[k] for k in ("max", "live", "live_disks") if existing and k in existing},
                "spec": spec,
                "state": existing["state"] if existing else DomainState.SHUTOFF,
                "boot_id": existing["boot_id"] if existing else -1,
            }

    def _get(self, name: str) -> dict:
        try:
            return self.host.domains[name]
        except KeyError:
            raise DriverError(f"domain {name} does not exist on {self.uri}") from None

    def start(self, name: str) -> None:
        self._enter("start", name)
        with self.world.lock:
            dom = self._get(name)
            if dom["state"] != DomainState.RUNNING:
                dom["state"] = DomainState.RUNNING
                dom["boot_id"] = next(self.world.boot_ids)
                # What the domain booted with: its maximums, and what it runs with now.
                spec = dom["spec"]
                dom["max"] = dom["live"] = (spec.vcpus, spec.ram_mib)
                dom.pop("live_disks", None)  # a boot brings up what the definition has
                dom["counters"] = {}  # a new QEMU process counts from zero
                for disk in spec.disks:  # a boot writes to its disks
                    self._written(disk.path.rsplit("/", 1)[-1])

    def request_shutdown(self, name: str) -> None:
        self._enter("request_shutdown", name)
        with self.world.lock:
            dom = self.host.domains.get(name)
            if dom and dom["state"] == DomainState.RUNNING and name not in self.host.deaf_to_acpi:
                dom["state"] = DomainState.SHUTOFF
                dom["boot_id"] = -1

    def destroy(self, name: str) -> None:
        self._enter("destroy", name)
        with self.world.lock:
            dom = self.host.domains.get(name)
            if dom:
                dom["state"] = DomainState.SHUTOFF
                dom["boot_id"] = -1

    def undefine(self, name: str) -> None:
        self._enter("undefine", name)
        with self.world.lock:
            self.host.domains.pop(name, None)

    def update_nic(self, name: str, nic) -> None:
        self._enter("update_nic", name)
        with self.world.lock:
            dom = self._get(name)
            spec: DomainSpec = dom["spec"]
            if not any(n.mac == nic.mac for n in spec.nics):
                raise DriverError(f"domain {name} has no NIC {nic.mac}")
            dom.setdefault("live_nics", {})[nic.mac] = nic

    def set_resources(self, name: str, vcpus: int, ram_mib: int, live: bool) -> bool:
        """Like libvirt: live only for a running domain and within what it booted with
        (tests may raise dom["max"])."""
        self._enter("set_resources", name)
        with self.world.lock:
            dom = self._get(name)
            if not live or dom["state"] != DomainState.RUNNING:
                return False
            max_vcpus, max_ram = dom.get("max", (0, 0))
            if vcpus > max_vcpus or ram_mib > max_ram:
                return False
            dom["live"] = (vcpus, ram_mib)
            return True

    def grow_volume(self, pool: str, name: str, gib: int, domain_name: str | None = None) -> bool:
        self._enter("grow_volume", name)
        with self.world.lock:
            volumes = self._pool(pool)
            if name not in volumes:
                raise DriverError(f"volume {name} does not exist")
            volumes[name] = max(volumes[name], gib)
            dom = self.host.domains.get(domain_name) if domain_name else None
            return bool(dom and dom["state"] == DomainState.RUNNING)

    def set_user_password(self, name: str, user: str, password: str) -> bool:
        self._enter("set_user_password", name)
        with self.world.lock:
            dom = self._get(name)
            if dom["state"] != DomainState.RUNNING or name not in self.host.agent:
                return False
            self.host.passwords[(name, user)] = password
            return True

    def migrate(self, name: str, dest, dest_address: str, dest_xml: str, unsafe: bool = False) -> None:
        self._enter("migrate", name)
        with self.world.lock:
            dom = self._get(name)
            if dom["state"] != DomainState.RUNNING:
                raise DriverError(f"domain {name} is not running")
            dest.host.domains[name] = self.host.domains.pop(name)
            dest.host.domains[name]["counters"] = {}  # the destination's QEMU counts from zero

    def vnc_port(self, name: str) -> int:
        with self.world.lock:
            dom = self._get(name)
            if dom["state"] != DomainState.RUNNING:
                raise DriverError(f"domain {name} has no VNC port (not running?)")
            return 5900 + dom["boot_id"] % 100

    def info(self, name: str) -> DomainInfo | None:
        with self.world.lock:
            dom = self.host.domains.get(name)
            if dom is None:
                return None
            spec: DomainSpec = dom["spec"]
            return DomainInfo(name, spec.uuid, dom["state"], dom["boot_id"],
                              {"instance": spec.panel_instance, "id": str(spec.server_id or "")})

    def stats(self, name: str) -> DomainStats | None:
        # Not recorded in `calls` (the usage collector reads it around power actions), but
        # `fail_next["stats"]` still injects a failure.
        failure = self.fail_next.pop("stats", None)
        if failure is not None:
            raise failure
        with self.world.lock:
            dom = self.host.domains.get(name)
            if dom is None or dom["state"] != DomainState.RUNNING:
                return None
            return DomainStats(boot_id=dom["boot_id"], **dom.get("counters", {}))

    def set_counters(self, name: str, **counters: int) -> None:
        """Tests: what the running guest has done since it started (DomainStats' rx_bytes=,
        cpu_ns=, …; for node_stats also rx_packets=, tx_packets=, read_ops=, write_ops=,
        vcpu_wait_ns=, allocation= (vda's), and mem_used= — without it the guest's memory is unknown)."""
        with self.world.lock:
            self._get(name).setdefault("counters", {}).update(counters)

    def node_stats(self, names: list[str] | None = None) -> NodeSample:
        self._enter("node_stats")
        with self.world.lock:
            domains = {}
            for name, dom in self.host.domains.items():
                if dom["state"] != DomainState.RUNNING or (names is not None and name not in names):
                    continue
                spec: DomainSpec = dom["spec"]
                c = dom.get("counters", {})
                nics = tuple(NicSample(f"vnet{i}", c.get("rx_bytes", 0) if i == 0 else 0,
                                       c.get("tx_bytes", 0) if i == 0 else 0, c.get("rx_packets", 0) if i == 0 else 0,
                                       c.get("tx_packets", 0) if i == 0 else 0)
                             for i in range(max(1, len(spec.nics))))  # (like stats(): a NIC-less fake counts too)
                vda = lambda d, key: c.get(key, 0) if d.target == "vda" else 0  # noqa: E731
                disks = tuple(DiskSample(d.target, vda(d, "read_bytes"), vda(d, "write_bytes"), vda(d, "read_ops"),
                                         vda(d, "write_ops"), c.get("allocation") if d.target == "vda" else None)
                              for d in spec.disks if d.target.startswith("vd"))
                domains[name] = DomainSample(
                    name=name, boot_id=dom["boot_id"], vcpus=spec.vcpus, cpu_ns=c.get("cpu_ns", 0),
                    vcpu_wait_ns=c.get("vcpu_wait_ns", 0), mem_total=spec.ram_mib * 2**20,
                    mem_used=c.get("mem_used"), nics=nics,
                    disks=tuple(replace(d, rd_bytes=0, wr_bytes=0, rd_ops=0, wr_ops=0) for d in disks)
                    if name in self.host.busy else disks, complete=name not in self.host.busy)
            pools = {name: PoolSample(name, 100 * 2**30, sum(volumes.values()), 100 * 2**30 - sum(volumes.values()))
                     for name, volumes in self.host.pools.items()}
            return NodeSample(host=HostSample(cpus=8, **self.host.usage), domains=domains, pools=pools)

    def guest_filesystems(self, name: str, timeout: int = 5) -> dict[str, tuple[int, int]]:
        self._enter("guest_filesystems", name)
        with self.world.lock:
            dom = self.host.domains.get(name)
            if dom is None or dom["state"] != DomainState.RUNNING or name not in self.host.agent:
                return {}
            return dict(self.host.filesystems.get(name, {}))

    def list_domains(self) -> list[DomainInfo]:
        self._enter("list_domains")
        with self.world.lock:
            names = list(self.host.domains)
        return [info for name in names if (info := self.info(name))]

    def backup_disks(self, name, pool, disks, checkpoint, since=None, tick=None, staging_pool=None):
        self._enter("backup_disks", name)
        with self.world.lock:
            dom = self._get(name)
            for _target, volume, staging in disks:
                self._pool(staging_pool or pool)[staging] = 1
                self.host.uploads[staging] = self.content(volume)
            if dom["state"] != DomainState.RUNNING:
                return "full", False
            known = self.host.checkpoints.setdefault(name, [])
            # Like QEMU: an incremental needs the checkpoint's bitmap on every disk.
            covered = dom.setdefault("bitmaps", {}).get(since, set())
            whole = since in known and all(target in covered for target, _v, _s in disks)
            kind = "incremental" if since and whole else "full"
            known.append(checkpoint)
            dom["bitmaps"][checkpoint] = {target for target, _v, _s in disks}
        if tick:
            tick(1.0)
        return kind, True

    # -- data disks: the definition is the spec's disks; the live guest's are dom["live_disks"] ---
    def live_disks(self, name: str) -> set[str]:
        """Tests: the targets the running guest has now."""
        with self.world.lock:
            dom = self._get(name)
            if dom["state"] != DomainState.RUNNING:
                return set()
            return set(dom.get("live_disks", {d.target for d in dom["spec"].disks}))

    def attach_disk(self, name: str, disk) -> bool:
        self._enter("attach_disk", name)
        with self.world.lock:
            dom = self._get(name)
            spec: DomainSpec = dom["spec"]
            live = self.live_disks(name)
            if all(d.target != disk.target for d in spec.disks):
                dom["spec"] = replace(spec, disks=(*spec.disks, disk))
            running = dom["state"] == DomainState.RUNNING
            if running:
                dom["live_disks"] = live | {disk.target}
            return running

    def detach_disk(self, name: str, disk, timeout: float, tick=None) -> None:
        self._enter("detach_disk", name)
        with self.world.lock:
            dom = self.host.domains.get(name)
            if dom is None:
                return
            live = self.live_disks(name)
            if disk.target in live:
                if name in self.host.holds_disks:
                    raise DriverError(f"the guest did not release {disk.target} within {timeout:.0f} s; "
                                      "the disk stays attached")
                dom["live_disks"] = live - {disk.target}
            spec: DomainSpec = dom["spec"]
            dom["spec"] = replace(spec, disks=tuple(d for d in spec.disks if d.target != disk.target))

"""What one read of a node's statistics returns (`Driver.node_stats`), and how libvirt's flat
`getAllDomainStats` records become it.

Every counter is cumulative since its origin (a domain's QEMU process, the host's boot): the
monitoring collector (panel/metrics/collector.py) turns them into deltas against the last read.
A value the hypervisor did not report is None, never 0: a guest without the balloon driver has
unknown memory use, not none.
"""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DomainStats:
    """A running domain's cumulative counters since it (its QEMU process) started: they restart
    at zero on every boot and after a migration (a new QEMU on the destination)."""

    boot_id: int  # libvirt's domain id: a new one on every boot
    rx_bytes: int = 0  # all NICs, from the guest's point of view
    tx_bytes: int = 0
    cpu_ns: int = 0
    read_bytes: int = 0  # the system disk (vda)
    write_bytes: int = 0


@dataclass(frozen=True)
class NicSample:
    device: str
    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int


@dataclass(frozen=True)
class DiskSample:
    device: str  # the target: vda, vdb, …
    rd_bytes: int
    wr_bytes: int
    rd_ops: int
    wr_ops: int
    allocation: int | None  # bytes the disk takes on the host


@dataclass(frozen=True)
class DomainSample:
    name: str
    boot_id: int  # libvirt's domain id: a new one on every boot and after a migration
    vcpus: int
    cpu_ns: int
    vcpu_wait_ns: int | None  # time its vCPUs were ready but the host ran something else
    mem_total: int | None  # bytes the guest has (balloon), None when not reported
    mem_used: int | None  # bytes the guest uses (its own view), None when not reported
    nics: tuple[NicSample, ...] = ()
    disks: tuple[DiskSample, ...] = ()
    # False when the domain was busy (its QEMU monitor held by a job: NOWAIT skipped it) and
    # the disks' counters are missing: counters read as zero now would look like a restart.
    complete: bool = True

    def usage(self) -> DomainStats:
        """The billing counters of this read (panel/usage): all NICs, the system disk."""
        vda = next((d for d in self.disks if d.device == "vda"), None)
        return DomainStats(boot_id=self.boot_id, rx_bytes=sum(n.rx_bytes for n in self.nics),
                           tx_bytes=sum(n.tx_bytes for n in self.nics), cpu_ns=self.cpu_ns,
                           read_bytes=vda.rd_bytes if vda else 0, write_bytes=vda.wr_bytes if vda else 0)


@dataclass(frozen=True)
class HostSample:
    cpus: int
    cpu_busy_ns: int  # all CPUs, kernel + user, since the host booted
    cpu_idle_ns: int
    cpu_iowait_ns: int
    mem_total: int  # bytes
    mem_available: int  # free + buffers + page cache


@dataclass(frozen=True)
class PoolSample:
    name: str
    capacity: int  # bytes
    allocation: int
    available: int


@dataclass(frozen=True)
class NodeSample:
    """One read of a node: its running domains by name, its CPU and memory, its active pools."""

    host: HostSample
    domains: dict[str, DomainSample] = field(default_factory=dict)
    pools: dict[str, PoolSample] = field(default_factory=dict)


def _int(record: dict, key: str) -> int | None:
    value = record.get(key)
    return int(value) if value is not None else None


def domain_sample(name: str, boot_id: int, record: dict) -> DomainSample:
    """A DomainSample from one `getAllDomainStats` record (keys such as `net.0.rx.bytes`)."""
    vcpus = _int(record, "vcpu.current") or 0
    # Steal: `delay` (libvirt ≥ 7.x, the time the vCPU thread waited in the host's run queue,
    # what the guest sees as steal); older libvirt has only `wait`.
    waits = [_int(record, f"vcpu.{i}.delay") if f"vcpu.{i}.delay" in record else _int(record, f"vcpu.{i}.wait")
             for i in range(vcpus)]
    nics = tuple(
        NicSample(record.get(f"net.{i}.name", ""), _int(record, f"net.{i}.rx.bytes") or 0,
                  _int(record, f"net.{i}.tx.bytes") or 0, _int(record, f"net.{i}.rx.pkts") or 0,
                  _int(record, f"net.{i}.tx.pkts") or 0)
        for i in range(_int(record, "net.count") or 0))
    disks = tuple(
        DiskSample(record.get(f"block.{i}.name", ""), _int(record, f"block.{i}.rd.bytes") or 0,
                   _int(record, f"block.{i}.wr.bytes") or 0, _int(record, f"block.{i}.rd.reqs") or 0,
                   _int(record, f"block.{i}.wr.reqs") or 0,
                   _int(record, f"block.{i}.physical") or _int(record, f"block.{i}.allocation"))
        for i in range(_int(record, "block.count") or 0)
        if record.get(f"block.{i}.name", "").startswith("vd"))  # not the CD-ROM (sda/hda)
    # The guest's own view (KiB): `available` is what it can use, `unused` what it leaves free.
    available, unused = _int(record, "balloon.available"), _int(record, "balloon.unused")
    mem_used = (available - unused) * 1024 if available is not None and unused is not None else None
    current = _int(record, "balloon.current")
    complete = all(f"block.{i}.rd.bytes" in record for i in range(_int(record, "block.count") or 0)
                   if record.get(f"block.{i}.name", "").startswith("vd"))
    return DomainSample(
        name=name, boot_id=boot_id, vcpus=vcpus, cpu_ns=_int(record, "cpu.time") or 0,
        vcpu_wait_ns=sum(waits) if waits and None not in waits else None,
        mem_total=(available or current or 0) * 1024 or None,
        mem_used=mem_used, nics=nics, disks=disks, complete=complete)

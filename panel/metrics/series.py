"""The series each kind of target has: counters (summed per bucket) and gauges (averaged).

Per-device series are named `<prefix>.<device>.<name>` (`disk.vda.rd_bytes`,
`fs./home.used`); the catalogue lists them by their last part.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Series:
    name: str
    counter: bool  # True: per-bucket sums of deltas, read as a rate per second
    unit: str
    label: str


def _catalogue(*entries: Series) -> dict[str, Series]:
    return {entry.name: entry for entry in entries}


SERVER = _catalogue(
    Series("cpu", False, "%", "CPU (of its vCPUs)"),
    Series("steal", False, "%", "vCPU wait on the host"),
    Series("cpu_ns", True, "ns", "CPU time"),
    Series("mem_used", False, "B", "Memory used"),
    Series("mem_total", False, "B", "Memory"),
    Series("net_rx", True, "B", "Network in"),
    Series("net_tx", True, "B", "Network out"),
    Series("net_rx_pkts", True, "pkt", "Packets in"),
    Series("net_tx_pkts", True, "pkt", "Packets out"),
    Series("rd_bytes", True, "B", "Disk read"),
    Series("wr_bytes", True, "B", "Disk write"),
    Series("rd_ops", True, "op", "Disk read IOPS"),
    Series("wr_ops", True, "op", "Disk write IOPS"),
    Series("alloc", False, "B", "Disk allocation"),
    Series("used", False, "B", "Filesystem used"),
    Series("size", False, "B", "Filesystem size"),
)
NODE = _catalogue(
    Series("cpu", False, "%", "CPU"),
    Series("iowait", False, "%", "I/O wait"),
    Series("mem_avail", False, "B", "Memory available"),
    Series("mem_total", False, "B", "Memory"),
    Series("running", False, "", "Running servers"),
    Series("vcpus_committed", False, "", "vCPUs committed"),
    Series("vcpus_physical", False, "", "CPUs"),
    Series("ram_committed", False, "B", "RAM committed"),
    Series("ram_physical", False, "B", "RAM"),
)
STORAGE = _catalogue(
    Series("capacity", False, "B", "Capacity"),
    Series("used", False, "B", "Used"),
    Series("committed", False, "B", "Committed (thin)"),
)
NETWORK = _catalogue(
    Series("net_rx", True, "B", "Traffic in"),
    Series("net_tx", True, "B", "Traffic out"),
)
POOL = _catalogue(
    Series("used", False, "", "Addresses used"),
    Series("free", False, "", "Addresses free"),
)
BY_KIND = {"server": SERVER, "node": NODE, "storage": STORAGE, "network": NETWORK, "pool": POOL}


def lookup(kind: str, name: str) -> Series | None:
    """The catalogue entry of a series name (`disk.vdb.wr_bytes` → `wr_bytes`), or None."""
    return BY_KIND[kind].get(name.rsplit(".", 1)[-1])

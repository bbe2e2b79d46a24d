"""Statistics of a node through libvirt, for monitoring: one bulk call for every running domain.

Contract (the fake driver keeps it too):

- `node_stats(names=None)` returns a NodeSample (nodes/node_stats.py): the running domains
  (all of them, or those of `names` that run), the host's CPU and memory, the active pools.
  One `getAllDomainStats` call reads every domain with NOWAIT: a domain whose monitor is busy
  (a migration, a backup job) answers with what libvirt has without waiting, so it never
  stalls the others. A domain that stopped between calls is simply absent.
- `guest_filesystems(name, timeout)` asks the guest agent for its mounted filesystems:
  {mount point: (used bytes, total bytes)}; {} when the domain has no agent that answers.
"""

from nodes.libvirt_errors import DriverError, is_missing, reconnecting
from nodes.node_stats import HostSample, NodeSample, PoolSample, domain_sample


class LibvirtStats:
    @reconnecting
    def node_stats(self, names: list[str] | None = None) -> NodeSample:
        lv, conn = self._libvirt, self.conn
        groups = (lv.VIR_DOMAIN_STATS_STATE | lv.VIR_DOMAIN_STATS_CPU_TOTAL | lv.VIR_DOMAIN_STATS_VCPU
                  | lv.VIR_DOMAIN_STATS_BALLOON | lv.VIR_DOMAIN_STATS_INTERFACE | lv.VIR_DOMAIN_STATS_BLOCK)
        flags = lv.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE | lv.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT
        if names is None:
            records = self._call("domain stats", conn.getAllDomainStats, groups, flags)
        else:
            domains = [d for d in (self._domain(n) for n in names) if d is not None]
            # domainListGetStats takes no ACTIVE filter: a stopped domain comes back with its
            # state alone, and is dropped below.
            records = self._call("domain stats", conn.domainListGetStats, domains, groups,
                                 lv.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT) if domains else []
        samples = {}
        for dom, record in records:
            if record.get("state.state") not in (lv.VIR_DOMAIN_RUNNING, lv.VIR_DOMAIN_PAUSED):
                continue
            samples[dom.name()] = domain_sample(dom.name(), dom.ID(), record)
        return NodeSample(host=self._host_sample(), domains=samples, pools=self._pool_samples())

    def _host_sample(self) -> HostSample:
        lv, conn = self._libvirt, self.conn
        cpu = self._call("host CPU", conn.getCPUStats, lv.VIR_NODE_CPU_STATS_ALL_CPUS, 0)
        memory = self._call("host memory", conn.getMemoryStats, lv.VIR_NODE_MEMORY_STATS_ALL_CELLS, 0)
        cpus = self._call("node info", conn.getInfo)[2]
        available = memory.get("free", 0) + memory.get("buffers", 0) + memory.get("cached", 0)
        return HostSample(cpus=cpus, cpu_busy_ns=cpu.get("kernel", 0) + cpu.get("user", 0),
                          cpu_idle_ns=cpu.get("idle", 0), cpu_iowait_ns=cpu.get("iowait", 0),
                          mem_total=memory.get("total", 0) * 1024, mem_available=available * 1024)

    def _pool_samples(self) -> dict[str, PoolSample]:
        lv = self._libvirt
        out = {}
        for pool in self._call("pools", self.conn.listAllStoragePools, lv.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
            try:
                pool.refresh(0)  # a dir pool's figures are as of its last refresh
            except lv.libvirtError:
                pass  # busy (a volume being built): its last figures will do
            try:
                _state, capacity, allocation, available = pool.info()
            except lv.libvirtError as exc:
                if is_missing(exc):
                    continue  # stopped or undefined since the listing
                raise DriverError(f"pool {pool.name()}: {exc}") from exc
            out[pool.name()] = PoolSample(pool.name(), capacity, allocation, available)
        return out

    @reconnecting
    def guest_filesystems(self, name: str, timeout: int = 5) -> dict[str, tuple[int, int]]:
        lv = self._libvirt
        dom = self._domain(name)
        if dom is None:
            return {}
        try:
            dom.agentSetResponseTimeout(timeout, 0)
            info = dom.guestInfo(lv.VIR_DOMAIN_GUEST_INFO_FILESYSTEM, 0)
        except lv.libvirtError:
            return {}  # no agent in the guest, or it did not answer in time
        out = {}
        for i in range(int(info.get("fs.count", 0))):
            mount, total = info.get(f"fs.{i}.mountpoint"), info.get(f"fs.{i}.total-bytes")
            if mount and total:
                out[mount] = (int(info.get(f"fs.{i}.used-bytes", 0)), int(total))
        return out

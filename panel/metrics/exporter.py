"""What a /metrics scrape reads from the database: a prometheus-client collector.

A few queries per scrape whatever the number of servers (one per kind of row, one per kind of
target's newest buckets, one for the usage totals; never one per server):

- gauges from each target's newest finest-tier bucket (panel/metrics/store.py `latest`): a
  gauge series is its bucket's average, a counter series its rate over the bucket. A target
  whose newest bucket is a gap (stopped, node offline) or older than a few minutes has none:
  Prometheus sees "absent", never a stale or a made-up 0 (memory the guest does not report is
  absent too);
- counters that only grow: a server's traffic, CPU time, disk bytes and uptime are the panel's
  own totals (panel/usage/models.py `UsageTotal`), which add each sample's delta and take a
  reset (a reboot, a migration: a new QEMU) as a new start, so they never go down while the
  server exists. No counter carries the node as a label: a migration must not start a series;
  where a server runs is `panel_server_info`;
- operations by kind and status (finished ones as counters: operations are never deleted),
  the queue's depth and the collector's freshness per node.

Labels: servers by `server_id`, `server` (hostname) and `uuid`; nodes by `node` (name);
storages and networks by `cluster` and their name; IP pools by `pool`. Nothing of a customer
(no names, addresses or secrets) is exported.
"""

import datetime as dt
import math

from django.conf import settings
from django.db.models import Count, Max, Min, Q
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from panel.metrics import store
from panel.metrics.models import MetricBucket

SERVER_LABELS = ["server_id", "server", "uuid"]
# Newest-bucket gauges: (series, metric, help, scale) per kind; a counter series is read as its
# rate per second over the bucket.
SERVER_GAUGES = [
    ("cpu", "panel_server_cpu_percent", "CPU use of the server's vCPUs, average of the last minute (%).", 1),
    ("steal", "panel_server_vcpu_wait_percent", "Time the vCPUs waited for the host's CPUs (steal, %).", 1),
    ("mem_used", "panel_server_memory_used_bytes", "Guest memory in use (absent when the guest reports none).", 1),
    ("mem_total", "panel_server_memory_total_bytes", "Guest memory as the guest sees it (absent when unknown).", 1),
    ("net_rx", "panel_server_network_receive_bytes_per_second", "Network in, last minute.", 1),
    ("net_tx", "panel_server_network_transmit_bytes_per_second", "Network out, last minute.", 1),
    ("net_rx_pkts", "panel_server_network_receive_packets_per_second", "Packets in, last minute.", 1),
    ("net_tx_pkts", "panel_server_network_transmit_packets_per_second", "Packets out, last minute.", 1),
]
SERVER_PEAKS = [("cpu", "panel_server_cpu_peak_percent", "Highest CPU sample of the last minute (%).")]
DISK_GAUGES = {
    "rd_bytes": ("panel_server_disk_read_bytes_per_second", "Disk read, last minute."),
    "wr_bytes": ("panel_server_disk_write_bytes_per_second", "Disk write, last minute."),
    "rd_ops": ("panel_server_disk_read_ops_per_second", "Disk read operations (IOPS), last minute."),
    "wr_ops": ("panel_server_disk_write_ops_per_second", "Disk write operations (IOPS), last minute."),
    "alloc": ("panel_server_disk_allocation_bytes", "Bytes the disk takes on its storage."),
}
FS_GAUGES = {
    "used": ("panel_server_filesystem_used_bytes", "Guest filesystem used (from the guest agent)."),
    "size": ("panel_server_filesystem_size_bytes", "Guest filesystem size (from the guest agent)."),
}
# UsageTotal field → (counter, help, divisor)
SERVER_COUNTERS = [
    ("rx_bytes", "panel_server_network_receive_bytes", "Network in since the server was created.", 1),
    ("tx_bytes", "panel_server_network_transmit_bytes", "Network out since the server was created.", 1),
    ("cpu_ns", "panel_server_cpu_seconds", "CPU time of all its vCPUs since the server was created.", 10**9),
    ("read_bytes", "panel_server_disk_read_bytes", "System disk read since the server was created.", 1),
    ("write_bytes", "panel_server_disk_written_bytes", "System disk written since the server was created.", 1),
    ("uptime_seconds", "panel_server_uptime_seconds", "Time the server ran since it was created.", 1),
]
NODE_GAUGES = [
    ("cpu", "panel_node_cpu_percent", "Host CPU use, last minute (%).", 1),
    ("iowait", "panel_node_iowait_percent", "Host CPU time waiting for I/O, last minute (%).", 1),
    ("mem_avail", "panel_node_memory_available_bytes", "Host memory available.", 1),
    ("mem_total", "panel_node_memory_total_bytes", "Host memory.", 1),
    ("running", "panel_node_running_servers", "Servers running on the node.", 1),
    ("vcpus_committed", "panel_node_vcpus_committed", "vCPUs of the servers placed on the node.", 1),
    ("vcpus_physical", "panel_node_cpus", "The node's CPUs.", 1),
    ("ram_committed", "panel_node_ram_committed_bytes", "RAM of the servers placed on the node.", 1),
    ("ram_physical", "panel_node_ram_bytes", "The node's RAM.", 1),
]
STORAGE_GAUGES = [
    ("capacity", "panel_storage_capacity_bytes", "Storage capacity.", 1),
    ("used", "panel_storage_used_bytes", "Storage used.", 1),
    ("committed", "panel_storage_committed_bytes", "Bytes promised to disks (thin provisioning can exceed capacity).", 1),
]
NETWORK_GAUGES = [
    ("net_rx", "panel_network_receive_bytes_per_second", "Traffic in of the network's servers, last minute.", 1),
    ("net_tx", "panel_network_transmit_bytes_per_second", "Traffic out of the network's servers, last minute.", 1),
]
POOL_GAUGES = [
    ("used", "panel_ip_pool_addresses_used", "Addresses of the pool in use.", 1),
    ("free", "panel_ip_pool_addresses_free", "Addresses of the pool free to hand out.", 1),
]
NODE_STATES = ("installing", "online", "degraded", "offline", "maintenance")


def _value(kind: str, name: str, triple, step: int) -> float | None:
    total, count, _peak = triple
    series = store.lookup(kind, name)
    if series is not None and series.counter:
        return total / step
    return total / count if count else None


def newest(kind: str, now: dt.datetime) -> dict[int, dict]:
    """target id → its newest finest-tier bucket's data, for buckets of the last few minutes with
    data (a newest bucket that is a gap gives nothing)."""
    within = dt.timedelta(seconds=3 * store.finest_step() + 30)
    return {target: data for target, (_start, data, _gap) in store.latest(kind, None, within, now).items() if data}


def freshness(now: dt.datetime) -> dict[int, dt.datetime]:
    """node id → when the collector last read it: the collector's own record
    (`panel.metrics.collector.freshness()`), else the start of the node's newest bucket with data."""
    try:
        from panel.metrics.collector import freshness as collector_freshness

        return {int(node): when for node, when in collector_freshness().items() if when is not None}
    except (ImportError, AttributeError):
        pass
    rows = (MetricBucket.objects.filter(kind="node", step=store.finest_step(), gap="",
                                        start__gte=now - dt.timedelta(seconds=store.tiers()[0][1]))
            .values("target_id").annotate(newest=Max("start")).values_list("target_id", "newest"))
    return dict(rows)


class PanelCollector:
    """The database's part of a scrape (see the module's docstring)."""

    def collect(self):
        now = store.clock()
        yield from self.servers(now)
        yield from self.nodes(now)
        yield from self.storages(now)
        yield from self.networks(now)
        yield from self.pools(now)
        yield from self.operations(now)
        yield from self.queue(now)

    # -- servers ------------------------------------------------------------------------------
    def servers(self, now):
        from panel.usage.models import UsageTotal
        from panel.vps.models import VirtualServer

        step = store.finest_step()
        rows = VirtualServer.objects.values_list("id", "hostname", "uuid", "state", "node__name", "vcpus", "ram_mib")
        info = GaugeMetricFamily("panel_server_info", "A server: where it runs and its state (always 1).",
                                 labels=[*SERVER_LABELS, "node", "state"])
        vcpus = GaugeMetricFamily("panel_server_vcpus", "The server's vCPUs.", labels=SERVER_LABELS)
        ram = GaugeMetricFamily("panel_server_ram_bytes", "The server's RAM (its plan's).", labels=SERVER_LABELS)
        gauges = {series: GaugeMetricFamily(metric, text, labels=SERVER_LABELS) for series, metric, text, _ in SERVER_GAUGES}
        peaks = {series: GaugeMetricFamily(metric, text, labels=SERVER_LABELS) for series, metric, text in SERVER_PEAKS}
        disks = {name: GaugeMetricFamily(metric, text, labels=[*SERVER_LABELS, "device"])
                 for name, (metric, text) in DISK_GAUGES.items()}
        filesystems = {name: GaugeMetricFamily(metric, text, labels=[*SERVER_LABELS, "mountpoint"])
                       for name, (metric, text) in FS_GAUGES.items()}
        counters = {field: (CounterMetricFamily(metric, text, labels=SERVER_LABELS), divisor)
                    for field, metric, text, divisor in SERVER_COUNTERS}
        fields = [field for field, *_ in SERVER_COUNTERS]
        totals = {row[0]: row[1:] for row in UsageTotal.objects.values_list("server_id", *fields)}
        buckets = newest("server", now)
        for server_id, hostname, uuid, state, node, cpus, ram_mib in rows:
            labels = [str(server_id), hostname, str(uuid)]
            info.add_metric([*labels, node or "", state], 1)
            vcpus.add_metric(labels, cpus)
            ram.add_metric(labels, ram_mib * 1024 * 1024)
            total = totals.get(server_id)
            for index, field in enumerate(fields):
                family, divisor = counters[field]
                family.add_metric(labels, (total[index] if total else 0) / divisor)
            data = buckets.get(server_id)
            if not data:
                continue
            for name, triple in data.items():
                if name in gauges:
                    value = _value("server", name, triple, step)
                    if value is not None:
                        gauges[name].add_metric(labels, value)
                    if name in peaks:
                        peaks[name].add_metric(labels, triple[2])
                elif "." in name:
                    prefix, rest = name.split(".", 1)
                    device, _, series = rest.rpartition(".")
                    family = (disks if prefix == "disk" else filesystems if prefix == "fs" else {}).get(series)
                    value = _value("server", name, triple, step) if family is not None else None
                    if value is not None:
                        family.add_metric([*labels, device], value)
        yield info
        yield vcpus
        yield ram
        yield from gauges.values()
        yield from peaks.values()
        yield from disks.values()
        yield from filesystems.values()
        for family, _divisor in counters.values():
            yield family

    # -- nodes --------------------------------------------------------------------------------
    def nodes(self, now):
        from nodes.models import Node

        rows = list(Node.objects.values_list("id", "name", "state", "cluster__name", "virt_type"))
        info = GaugeMetricFamily("panel_node_info", "A node (always 1).", labels=["node", "cluster", "virt_type"])
        state = GaugeMetricFamily("panel_node_state", "1 for the node's state (online, offline…), 0 for the others.",
                                  labels=["node", "state"])
        seen = freshness(now)
        age = GaugeMetricFamily("panel_collector_last_read_age_seconds",
                                "Seconds since the collector last read the node (+Inf: never).", labels=["node"])
        stamp = GaugeMetricFamily("panel_collector_last_read_timestamp_seconds",
                                  "When the collector last read the node (Unix time).", labels=["node"])
        for node_id, name, current, cluster, virt_type in rows:
            info.add_metric([name, cluster or "", virt_type or ""], 1)
            for option in NODE_STATES:
                state.add_metric([name, option], 1 if current == option else 0)
            when = seen.get(node_id)
            age.add_metric([name], max((now - when).total_seconds(), 0) if when else math.inf)
            if when:
                stamp.add_metric([name], when.timestamp())
        yield info
        yield state
        yield age
        yield stamp
        yield from self._gauges("node", NODE_GAUGES, {node_id: [name] for node_id, name, *_ in rows}, ["node"], now)

    # -- storages, networks, pools --------------------------------------------------------------
    def storages(self, now):
        from nodes.models import Storage

        labels = {pk: [cluster or "", name] for pk, name, cluster in
                  Storage.objects.values_list("id", "name", "cluster__name")}
        yield from self._gauges("storage", STORAGE_GAUGES, labels, ["cluster", "storage"], now)

    def networks(self, now):
        from nodes.models import Network

        labels = {pk: [cluster or "", name] for pk, name, cluster in
                  Network.objects.values_list("id", "name", "cluster__name")}
        yield from self._gauges("network", NETWORK_GAUGES, labels, ["cluster", "network"], now)

    def pools(self, now):
        from panel.ipam.models import IpPool

        labels = {pk: [name] for pk, name in IpPool.objects.values_list("id", "name")}
        yield from self._gauges("pool", POOL_GAUGES, labels, ["pool"], now)

    def _gauges(self, kind, catalogue, labels_of, label_names, now):
        step = store.finest_step()
        families = {series: (GaugeMetricFamily(metric, text, labels=label_names), scale)
                    for series, metric, text, scale in catalogue}
        for target, data in newest(kind, now).items():
            labels = labels_of.get(target)
            if labels is None:
                continue  # deleted since: its history is pruned by age
            for name, (family, scale) in families.items():
                value = _value(kind, name, data[name], step) if name in data else None
                if value is not None:
                    family.add_metric(labels, value * scale)
        for family, _scale in families.values():
            yield family

    # -- the panel's own work ------------------------------------------------------------------
    def operations(self, now):
        from panel.vps.models import Operation

        done = CounterMetricFamily("panel_operations", "Operations finished, by kind and status.",
                                   labels=["kind", "status"])
        active = GaugeMetricFamily("panel_operations_active", "Operations queued or running, by kind.",
                                   labels=["kind", "status"])
        counts = {(kind, status): n for kind, status, n in
                  Operation.objects.values_list("kind", "status").annotate(n=Count("id")).order_by()}
        for kind in Operation.Kind.values:
            for status in Operation.ACTIVE:
                active.add_metric([kind, status], counts.get((kind, status), 0))
        for (kind, status), n in sorted(counts.items()):
            if status not in Operation.ACTIVE:
                done.add_metric([kind, status], n)
        oldest = Operation.objects.filter(status=Operation.Status.QUEUED).aggregate(oldest=Min("created_at"))["oldest"]
        waiting = GaugeMetricFamily("panel_operations_oldest_queued_age_seconds",
                                    "Age of the oldest operation still queued (0: none).")
        waiting.add_metric([], max((now - oldest).total_seconds(), 0) if oldest else 0)
        yield done
        yield active
        yield waiting

    def queue(self, now):
        depth = GaugeMetricFamily("panel_queue_tasks", "Tasks in the worker's queue: waiting, or taken by a worker.",
                                  labels=["state"])
        age = GaugeMetricFamily("panel_queue_oldest_task_age_seconds", "Age of the oldest waiting task (0: none).")
        if "orm" in settings.Q_CLUSTER:
            from django_q.models import OrmQ

            figures = OrmQ.objects.filter(key=settings.Q_CLUSTER["name"]).aggregate(
                waiting=Count("id", filter=Q(lock__lte=now)), taken=Count("id", filter=Q(lock__gt=now)),
                oldest=Min("lock", filter=Q(lock__lte=now)))
            depth.add_metric(["waiting"], figures["waiting"])
            depth.add_metric(["taken"], figures["taken"])
            age.add_metric([], max((now - figures["oldest"]).total_seconds(), 0) if figures["oldest"] else 0)
        else:
            depth.add_metric(["waiting"], _broker().queue_size())
        yield depth
        yield age


_BROKER = []


def _broker():
    """django-q2's broker (Redis), made once per process."""
    if not _BROKER:
        from django_q.brokers import get_broker

        _BROKER.append(get_broker())
    return _BROKER[0]

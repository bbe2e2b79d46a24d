"""The minute's collection: every node read at once, into the monitoring store and billing.

`collect()` (the worker, every minute) reads each node with one `Driver.node_stats()` call, all
nodes in parallel, each within `METRICS_NODE_DEADLINE_SECONDS`; a node that fails or does not
answer in time gets a gap row with the reason, for itself and each of its servers, never
silence. From the same reads it writes one Point per server, node, storage, network and IP
pool (panel/metrics/store.py), feeds billing (`panel.usage.collector.sample_many()`, so the
counters of both come from one read and their sums agree), then rolls up and prunes.

Counters become deltas against each target's `Baseline`. A server's counters count since its
QEMU process started ("<node>:<boot id>"): another origin, or a counter that went down, counts
the new value whole (the same rule as billing): never negative, nothing lost across a reboot
or a migration. The counters billing has (traffic, CPU time, the system disk's bytes) are taken
from billing's own deltas, so every tier's sums equal the billing usage by construction.

`collect_server()` is the power actions' last sample before a stop or a migration;
`collect_filesystems()` (every 15 minutes) asks guest agents for their filesystems' usage.
"""

import contextlib
import datetime as dt
import logging
import threading
import time
from collections import defaultdict

from django.conf import settings
from django.db import transaction
from django.db.models import Count
from django.utils import timezone

from nodes.connection import driver_for
from nodes.driver import Driver, DriverError
from nodes.models import Node, Storage
from nodes.node_stats import DomainSample, NodeSample
from panel.images.models import DataDisk
from panel.ipam.models import IpAddress, IpPool
from panel.metrics import store
from panel.metrics.models import Baseline, CollectorLease, GapReason, NodeReading, TargetKind
from panel.metrics.store import Point
from panel.upsert import upsert
from panel.usage import collector as usage
from panel.vps.models import ServerNic, ServerState, VirtualServer

log = logging.getLogger(__name__)

GIB = 2**30
# Reads still running from an earlier collection (a node that hangs): not started again.
_in_flight: set[int] = set()
_in_flight_lock = threading.Lock()


def clock() -> dt.datetime:
    """Now: billing's clock, so that a sample has one time in both (tests replace it)."""
    return usage.clock()


# -- reading the nodes -------------------------------------------------------------------------

def read_nodes(nodes: list[Node], deadline: float) -> dict[int, NodeSample | str]:
    """Each node's NodeSample, read in parallel; a node that failed or did not answer within
    `deadline` seconds maps to the reason (a GapReason). A read that hangs goes on in its
    thread and is not started again until it ends."""
    results: dict[int, NodeSample | str] = {}
    threads = []

    def read(node: Node) -> None:
        try:
            results[node.pk] = driver_for(node.uri).node_stats()
        except DriverError as exc:
            log.warning("metrics: cannot read node %s: %s", node, exc)
            results[node.pk] = GapReason.NODE_OFFLINE if exc.retryable else GapReason.COLLECTOR_FAILED
        except Exception:  # noqa: BLE001
            log.exception("metrics: cannot read node %s", node)
            results[node.pk] = GapReason.COLLECTOR_FAILED
        finally:
            with _in_flight_lock:
                _in_flight.discard(node.pk)

    for node in nodes:
        with _in_flight_lock:
            if node.pk in _in_flight:
                results[node.pk] = GapReason.COLLECTOR_FAILED  # the last read of it still hangs
                continue
            _in_flight.add(node.pk)
        thread = threading.Thread(target=read, args=(node,), name=f"metrics-{node.pk}", daemon=True)
        thread.start()
        threads.append((node, thread))
    ends = time.monotonic() + deadline
    for node, thread in threads:
        thread.join(max(0.0, ends - time.monotonic()))
        if thread.is_alive():
            log.warning("metrics: node %s did not answer within %s s", node, deadline)
    # A read that ends after the deadline is dropped: the node's gap is written already.
    return {node.pk: results.get(node.pk, GapReason.NODE_OFFLINE) for node in nodes}


# -- deltas ------------------------------------------------------------------------------------

class Baselines:
    """The baselines of one collection, read in one query and written back in one."""

    def __init__(self, kind: str, ids):
        self.kind = kind
        self.rows = {b.target_id: b for b in Baseline.objects.filter(kind=kind, target_id__in=list(ids))}
        self.changed: dict[int, Baseline] = {}

    def deltas(self, target_id: int, origin: str, raw: dict[str, int], now: dt.datetime
               ) -> tuple[dict[str, int], float | None]:
        """The counters' deltas since the last read of the same origin, and the seconds between
        the reads (None after a restart: no rate). With no earlier read there is no delta."""
        last = self.rows.get(target_id)
        if last is None:
            last = Baseline(kind=self.kind, target_id=target_id)
            out, seconds = {}, None
        elif now <= last.at:
            return {}, None  # an earlier collection that ran late: what it read is counted
        else:
            same = last.origin == origin and all(raw[k] >= last.raw.get(k, 0) for k in raw if k in last.raw)
            seconds = (now - last.at).total_seconds() if same else None
            if seconds is not None and seconds < 1:
                seconds = None  # a power action's sample just after the minute's: no rate from it
            out = {k: v - last.raw[k] if same and k in last.raw else v for k, v in raw.items()}
        last.origin, last.at, last.raw = origin, now, raw
        self.rows[target_id] = self.changed[target_id] = last
        return out, seconds

    def save(self) -> None:
        upsert(list(self.changed.values()), ["origin", "at", "raw"], ["kind", "target_id"])


def _counter(point: Point, name: str, delta: int, seconds: float | None) -> None:
    point.values[name] = delta
    if seconds:
        point.rates[name] = delta / seconds


# Billing's counter → the series it is in.
BILLED = {"rx_bytes": "net_rx", "tx_bytes": "net_tx", "cpu_ns": "cpu_ns",
          "read_bytes": "disk.vda.rd_bytes", "write_bytes": "disk.vda.wr_bytes"}


def server_point(server: VirtualServer, sample: DomainSample, billed: dict | None, baselines: Baselines | None,
                 now: dt.datetime) -> Point:
    """A running server's point: billing's deltas of this read (`billed`) are the billed series;
    then the counters only monitoring keeps (not without `baselines`), the gauges."""
    point = Point(TargetKind.SERVER, server.pk)
    raw = {"cpu_ns": sample.cpu_ns, "net_rx_pkts": sum(n.rx_packets for n in sample.nics),
           "net_tx_pkts": sum(n.tx_packets for n in sample.nics)}
    if sample.vcpu_wait_ns is not None:
        raw["vcpu_wait_ns"] = sample.vcpu_wait_ns
    for disk in sample.disks:
        raw |= {f"disk.{disk.device}.rd_ops": disk.rd_ops, f"disk.{disk.device}.wr_ops": disk.wr_ops}
        if disk.device != "vda":
            raw |= {f"disk.{disk.device}.rd_bytes": disk.rd_bytes, f"disk.{disk.device}.wr_bytes": disk.wr_bytes}
    deltas, seconds = baselines.deltas(server.pk, f"{server.node_id}:{sample.boot_id}", raw, now) if baselines \
        else ({}, None)
    for counter, name in BILLED.items():
        if billed is not None:
            _counter(point, name, billed[counter], seconds)
    for name, delta in deltas.items():
        if name not in ("cpu_ns", "vcpu_wait_ns"):
            _counter(point, name, delta, seconds)
    if seconds and sample.vcpus:
        capacity = seconds * 1e9 * sample.vcpus
        point.values["cpu"] = min(100.0, 100 * deltas["cpu_ns"] / capacity)
        if "vcpu_wait_ns" in deltas:
            point.values["steal"] = min(100.0, 100 * deltas["vcpu_wait_ns"] / capacity)
    if sample.mem_used is not None and sample.mem_total:
        point.values |= {"mem_used": sample.mem_used, "mem_total": sample.mem_total}
    for disk in sample.disks:
        if disk.allocation is not None:
            point.values[f"disk.{disk.device}.alloc"] = disk.allocation
    return point


def node_point(node: Node, sample: NodeSample, baselines: Baselines, now: dt.datetime) -> Point:
    host = sample.host
    point = Point(TargetKind.NODE, node.pk)
    raw = {"busy": host.cpu_busy_ns, "idle": host.cpu_idle_ns, "iowait": host.cpu_iowait_ns}
    deltas, seconds = baselines.deltas(node.pk, "host", raw, now)
    total = sum(deltas.values())
    if seconds and total:
        point.values |= {"cpu": 100 * deltas["busy"] / total, "iowait": 100 * deltas["iowait"] / total}
    point.values |= {
        "mem_avail": host.mem_available, "mem_total": host.mem_total, "running": len(sample.domains),
        "vcpus_committed": node.alloc_vcpus, "vcpus_physical": host.cpus,
        "ram_committed": node.alloc_ram_mib * 2**20, "ram_physical": host.mem_total}
    return point


# -- the collection ----------------------------------------------------------------------------

def _storage_points(samples: dict[int, NodeSample], nodes: list[Node]) -> list[Point]:
    """Each storage's capacity and use over the nodes that answered (a node-local directory or
    LVM group adds up; a shared NFS share counts once), and what its servers' disks may grow to."""
    committed = defaultdict(int)
    for storage_id, gib in VirtualServer.objects.exclude(storage=None).values_list("storage_id", "disk_gib"):
        committed[storage_id] += gib * GIB
    for storage_id, gib in DataDisk.objects.values_list("storage_id", "size_gib"):
        committed[storage_id] += gib * GIB
    by_cluster = defaultdict(list)
    for node in nodes:
        if node.pk in samples:
            by_cluster[node.cluster_id].append(samples[node.pk])
    points = []
    for storage in Storage.objects.all():
        pools = [s.pools[storage.pool_name] for s in by_cluster.get(storage.cluster_id, ())
                 if storage.pool_name in s.pools]
        if not pools:
            continue
        if storage.kind == Storage.Kind.NFS:
            pools = pools[:1]
        points.append(Point(TargetKind.STORAGE, storage.pk, values={
            "capacity": sum(p.capacity for p in pools), "used": sum(p.allocation for p in pools),
            "committed": committed.get(storage.pk, 0)}))
    return points


def _network_points(server_points: list[Point]) -> list[Point]:
    """Each network's traffic: its servers' (a server with NICs on several networks counts on
    its first NIC's: the bulk read gives traffic per tap device, not per network)."""
    first_network = {}
    for server_id, network_id in ServerNic.objects.order_by("id").values_list("server_id", "network_id"):
        first_network.setdefault(server_id, network_id)
    sums: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for point in server_points:
        network = first_network.get(point.target_id)
        for name in ("net_rx", "net_tx"):
            if network is not None and name in point.values:
                sums[network][name] += point.values[name]
                sums[network][f"{name}/s"] += point.rates.get(name, 0.0)
    return [Point(TargetKind.NETWORK, network, values={k: v for k, v in totals.items() if "/" not in k},
                  rates={k[:-2]: v for k, v in totals.items() if k.endswith("/s")})
            for network, totals in sums.items()]


def _pool_points() -> list[Point]:
    used = dict(IpAddress.objects.filter(server__isnull=False).values("pool_id").annotate(n=Count("id"))
                .values_list("pool_id", "n"))
    return [Point(TargetKind.POOL, pool.pk, values={"used": used.get(pool.pk, 0),
                                                    "free": max(0, pool.size() - used.get(pool.pk, 0))})
            for pool in IpPool.objects.all()]


@contextlib.contextmanager
def lease(seconds: float, wait: float = 0.0):
    """Hold the collector's lease for up to `seconds` (yields True), or yield False when another
    collection holds it for longer than `wait` seconds. Real time: the lease is between processes."""
    ends = time.monotonic() + wait
    CollectorLease.objects.get_or_create(id=1, defaults={"until": timezone.now() - dt.timedelta(seconds=1)})
    while not CollectorLease.objects.filter(id=1, until__lt=timezone.now()).update(
            until=timezone.now() + dt.timedelta(seconds=seconds)):
        if time.monotonic() >= ends:
            yield False
            return
        time.sleep(0.25)
    try:
        yield True
    finally:
        CollectorLease.objects.filter(id=1).update(until=timezone.now() - dt.timedelta(seconds=1))


def collect(now: dt.datetime | None = None, deadline: float | None = None, wait: float = 0.0) -> dict:
    """One minute's collection of every node; returns what it did (for the job's log). Skipped
    when another collection still runs after `wait` seconds."""
    deadline = settings.METRICS_NODE_DEADLINE_SECONDS if deadline is None else deadline
    with lease(deadline * 2 + 60, wait) as held:
        if not held:
            log.warning("metrics: another collection is still running; this one is skipped")
            return {"skipped": True, "nodes": 0, "failed_nodes": [], "servers": 0, "seconds": 0.0}
        return _collect(now or clock(), deadline)


def _collect(now: dt.datetime, deadline: float) -> dict:
    nodes = list(Node.objects.exclude(state=Node.State.INSTALLING))
    started = time.monotonic()
    results = read_nodes(nodes, deadline)
    seconds = time.monotonic() - started
    servers = list(VirtualServer.objects.filter(node__in=[n.pk for n in nodes]).exclude(
        state=ServerState.DELETING).select_related("plan", "node"))
    server_baselines = Baselines(TargetKind.SERVER, [s.pk for s in servers])
    node_baselines = Baselines(TargetKind.NODE, [n.pk for n in nodes])
    points, server_points, failed = [], [], []
    for node in nodes:
        result = results[node.pk]
        if isinstance(result, str):
            failed.append(node.name)
            points.append(Point(TargetKind.NODE, node.pk, gap=result))
        else:
            points.append(node_point(node, result, node_baselines, now))
    running = []
    for server in servers:
        result = results[server.node_id]
        sample = None if isinstance(result, str) else result.domains.get(server.domain_name)
        if sample is None or not sample.complete:
            # A busy domain's counters are left for the next read, which counts them whole.
            reason = result if isinstance(result, str) else GapReason.STOPPED if sample is None else GapReason.BUSY
            points.append(Point(TargetKind.SERVER, server.pk, gap=reason))
        else:
            running.append((server, sample))
    billed = usage.sample_many([(server, sample.usage()) for server, sample in running], now)
    for server, sample in running:
        point = server_point(server, sample, billed.get(server.pk), server_baselines, now)
        server_points.append(point)
        points.append(point)
    samples = {pk: r for pk, r in results.items() if not isinstance(r, str)}
    points += _storage_points(samples, nodes) + _network_points(server_points) + _pool_points()
    store.record(points, now)
    server_baselines.save()
    node_baselines.save()
    _note_readings(nodes, results, now, seconds)
    settled = usage.settle(now)
    rolled = store.rollup(now)
    pruned = store.prune(now)
    return {"nodes": len(nodes), "failed_nodes": failed, "servers": len(server_points), "points": len(points),
            "seconds": round(seconds, 3), "rolled_up": rolled, "pruned": pruned, **settled}


def _note_readings(nodes: list[Node], results: dict, at: dt.datetime, seconds: float) -> None:
    existing = {r.node_id: r for r in NodeReading.objects.filter(node_id__in=[n.pk for n in nodes])}
    for node in nodes:
        result = results[node.pk]
        reading = existing.get(node.pk) or NodeReading(node_id=node.pk)
        reading.tried_at, reading.seconds = at, seconds
        if isinstance(result, str):
            reading.error = GapReason(result).label
        else:
            reading.ok_at, reading.error = at, ""
        reading.save()


def freshness() -> dict[int, dt.datetime | None]:
    """Node id → when the collector last read it (None: never)."""
    return dict(NodeReading.objects.values_list("node_id", "ok_at"))


def collect_server(server: VirtualServer, driver: Driver | None = None) -> None:
    """One sample of `server` now, before it stops, reboots or moves: what it did since the last
    minute goes into billing and its graphs' billed series. Read while billing's row is locked, so it is newer
    than any sample recorded before it. Never raises: a failure must not break the power action."""
    try:
        if server.node_id is None:
            return
        with transaction.atomic():
            total = usage.lock(server)
            sample = (driver or driver_for(server.node.uri)).node_stats([server.domain_name]).domains.get(
                server.domain_name)
            if sample is None or not sample.complete:
                return  # the next minute's read counts it
            now = max(clock(), total.last_at or clock())  # time does not go back
            billed = usage.sample(server, None, now, stats=sample.usage(), newest=True)
            # Billing's counters only: the baselines are the minute's collection's, which may
            # be running now (what only monitoring counts waits for the next boot's read).
            store.record([server_point(server, sample, billed, None, now)], now)
    except Exception:  # noqa: BLE001
        log.exception("metrics: cannot sample %s before its power action", server)


def collect_filesystems(timeout: int = 3) -> int:
    """The guest agents' filesystem usage of every running server (`fs.<mount>.used`/`.size`),
    node by node in parallel; servers whose agent does not answer are left out. Returns how
    many servers answered."""
    now = clock()
    servers = list(VirtualServer.objects.filter(state=ServerState.RUNNING, node__isnull=False).select_related("node"))
    by_node = defaultdict(list)
    for server in servers:
        by_node[server.node].append(server)
    answers: dict[int, dict] = {}

    def ask(node: Node, node_servers: list[VirtualServer]) -> None:
        driver = driver_for(node.uri)
        for server in node_servers:
            try:
                answers[server.pk] = driver.guest_filesystems(server.domain_name, timeout)
            except DriverError as exc:
                log.info("metrics: no filesystems of %s: %s", server, exc)

    threads = [threading.Thread(target=ask, args=item, daemon=True) for item in by_node.items()]
    for thread in threads:
        thread.start()
    ends = time.monotonic() + settings.METRICS_NODE_DEADLINE_SECONDS * 3
    for thread in threads:
        thread.join(max(0.0, ends - time.monotonic()))
    points = []
    for server_id, filesystems in list(answers.items()):
        values = {}
        for mount, (used, size) in filesystems.items():
            values |= {f"fs.{mount}.used": used, f"fs.{mount}.size": size}
        if values:
            points.append(Point(TargetKind.SERVER, server_id, values=values))
    store.record(points, now)
    return len(points)

"""Placement: which node gets a new server.

Filters drop nodes that cannot take the server (not online, in maintenance, lacking a
capability the server needs — traffic shaping for a plan with a bandwidth limit —, not enough
RAM, vCPU or disk after the cluster's over-commit), each with the reason an admin reads; the weigher
ranks the rest (spread by default: the most free RAM share wins). `reserve()` takes the
capacity on the chosen node in the caller's transaction, under that node's row lock, so
concurrent creates never over-fill a node.
"""

from dataclasses import dataclass, field
import json

from django.conf import settings
from django.db.models import DecimalField, ExpressionWrapper, F, FloatField
from django.db.models.functions import Cast

from nodes.capabilities import lacking
from nodes.models import Node, Storage


class NoCapacity(Exception):
    def __init__(self, decision: "Decision"):
        super().__init__(decision.explain())
        self.decision = decision


@dataclass(frozen=True)
class Request:
    vcpus: int
    ram_mib: int
    disk_gib: int
    cluster_id: int | None = None
    # Capabilities the node must have (nodes.capabilities.needs_of(plan)), e.g. {"shaping"}.
    needs: frozenset[str] = frozenset()


@dataclass
class Decision:
    node: Node | None = None
    storage: Storage | None = None
    rejected: dict[str, str] = field(default_factory=dict)  # node name → why not

    def explain(self) -> str:
        lines = [f"chose {self.node}" if self.node else "no node can take this server"]
        lines += [f"{name}: {why}" for name, why in sorted(self.rejected.items())]
        return "; ".join(lines)

    def reasons(self) -> str:
        """Why each node was filtered out: "node a: …; node b: …"."""
        return "; ".join(f"node {name}: {why}" for name, why in sorted(self.rejected.items()))


def disk_storage(node: Node) -> Storage | None:
    """The storage new disks go to: the cluster's first storage that is not only for templates."""
    storages = [s for s in node.cluster.storages.all() if not s.holds_templates] if node.cluster_id else []
    return storages[0] if storages else None


def why_not(node: Node, want: Request) -> str:
    """'' when `node` can take `want`, else the reason."""
    if node.state != Node.State.ONLINE:
        return f"{node.get_state_display().lower()}" + (f" ({node.last_error[:120]})" if node.last_error else "")
    cluster = node.cluster
    if cluster is None:
        return "not in a cluster"
    missing = lacking(node.capabilities, want.needs)
    if missing:
        return missing
    free_vcpus = int(node.cpus * cluster.cpu_overcommit) - node.alloc_vcpus
    if free_vcpus < want.vcpus:
        return f"not enough vCPUs: {max(free_vcpus, 0)} free (×{cluster.cpu_overcommit} over-commit), needs {want.vcpus}"
    free_ram = int(node.ram_mib * cluster.ram_overcommit) - node.alloc_ram_mib
    if free_ram < want.ram_mib:
        return f"not enough RAM: {max(free_ram, 0)} MiB free, needs {want.ram_mib} MiB"
    storage = disk_storage(node)
    if storage is None:
        return "its cluster has no storage for disks"
    total = node.storage_capacity.get(str(storage.id), {}).get("total_gib", 0)
    if total - node.alloc_disk_gib < want.disk_gib:
        return f"not enough disk on {storage.name}: {max(total - node.alloc_disk_gib, 0)} GiB free, needs {want.disk_gib}"
    return ""


def score(node: Node) -> float:
    """Higher is better. spread: the most free RAM share; pack: the least."""
    ram = node.ram_mib * node.cluster.ram_overcommit or 1
    free_share = float((ram - node.alloc_ram_mib) / ram)
    return free_share if settings.PLACEMENT_WEIGHER == "spread" else -free_share


def _explained(want: Request, nodes) -> Decision:
    """Every node checked in Python, with the reason for each one that does not fit."""
    decision = Decision()
    fitting = []
    for node in nodes:
        reason = why_not(node, want)
        if reason:
            decision.rejected[node.name] = reason
        else:
            fitting.append(node)
    if fitting:
        decision.node = max(fitting, key=lambda n: (score(n), -n.id))
        decision.storage = disk_storage(decision.node)
    return decision


def _scope(want: Request, only: Node | None):
    nodes = Node.objects.select_related("cluster").prefetch_related("cluster__storages")
    if only is not None:
        return nodes.filter(pk=only.pk)
    return nodes.filter(cluster_id=want.cluster_id) if want.cluster_id else nodes


def decide(want: Request, only: Node | None = None, explain: bool = False) -> Decision:
    """Choose a node for `want`. With `explain` (the admin's preview), every node's reason is
    given; otherwise the database filters and ranks, and reasons are worked out only when no
    node fits, so one decision stays fast with a thousand nodes."""
    if explain or only is not None:
        return _explained(want, _scope(want, only))
    cap_vcpus = ExpressionWrapper(F("cpus") * F("cluster__cpu_overcommit"), output_field=DecimalField())
    cap_ram = ExpressionWrapper(F("ram_mib") * F("cluster__ram_overcommit"), output_field=DecimalField())
    # Written as alloc + want <= capacity: the counters are unsigned, a difference could underflow.
    candidates = (
        Node.objects.filter(state=Node.State.ONLINE, cluster__isnull=False)
        .annotate(cap_vcpus=cap_vcpus, cap_ram=cap_ram)
        .filter(alloc_vcpus__lte=F("cap_vcpus") - want.vcpus, alloc_ram_mib__lte=F("cap_ram") - want.ram_mib)
        .annotate(used_share=Cast("alloc_ram_mib", FloatField()) / Cast("cap_ram", FloatField()))
        .order_by("used_share" if settings.PLACEMENT_WEIGHER == "spread" else "-used_share", "id")
        .values_list("id", "cluster_id", "alloc_disk_gib", "storage_capacity", "capabilities")
    )
    if want.cluster_id:
        candidates = candidates.filter(cluster_id=want.cluster_id)
    disk_storages = {}
    for storage in Storage.objects.filter(holds_templates=False).order_by("cluster_id", "id"):
        disk_storages.setdefault(storage.cluster_id, storage)
    for node_id, cluster_id, alloc_disk, capacity, capabilities in candidates:
        storage = disk_storages.get(cluster_id)
        if storage is None:
            continue
        if isinstance(capacity, str):  # some backends hand JSON back undecoded in values_list
            capacity = json.loads(capacity)
        if want.needs:
            if isinstance(capabilities, str):
                capabilities = json.loads(capabilities)
            if lacking(capabilities, want.needs):
                continue
        total = (capacity or {}).get(str(storage.id), {}).get("total_gib", 0)
        if total - alloc_disk >= want.disk_gib:
            node = _scope(want, None).get(pk=node_id)
            return Decision(node=node, storage=disk_storage(node))
    return _explained(want, _scope(want, None))


def reserve(want: Request, only: Node | None = None) -> Decision:
    """Pick a node and take the capacity on it. Call inside transaction.atomic().

    The choice is made without locks, then only the chosen node's row is locked and re-read
    (not its cluster's: creates in one cluster must not queue behind each other). If a
    concurrent create took the room meanwhile, the choice is made again.
    """
    for _attempt in range(5):
        decision = decide(want, only)
        if decision.node is None:
            raise NoCapacity(decision)
        locked = Node.objects.select_for_update().get(pk=decision.node.pk)
        locked.cluster = decision.node.cluster  # already read, with its storages
        if why_not(locked, want):
            continue  # someone else was faster; look again
        Node.objects.filter(pk=locked.pk).update(alloc_vcpus=F("alloc_vcpus") + want.vcpus,
                                                 alloc_ram_mib=F("alloc_ram_mib") + want.ram_mib,
                                                 alloc_disk_gib=F("alloc_disk_gib") + want.disk_gib)
        decision.node = locked
        return decision
    raise NoCapacity(decide(want, only, explain=True))


def release(node_id: int, vcpus: int, ram_mib: int, disk_gib: int) -> None:
    """Give a deleted server's capacity back (never below zero: the columns are unsigned)."""
    from django.db.models import Case, When

    def minus(field: str, amount: int):
        return Case(When(**{f"{field}__gte": amount}, then=F(field) - amount), default=0)

    Node.objects.filter(pk=node_id).update(alloc_vcpus=minus("alloc_vcpus", vcpus),
                                           alloc_ram_mib=minus("alloc_ram_mib", ram_mib),
                                           alloc_disk_gib=minus("alloc_disk_gib", disk_gib))


def adjust(node_id: int, vcpus: int, ram_mib: int, disk_gib: int) -> None:
    """Add the (signed) differences to a node's capacity counters; call under its row lock."""
    grow = {f: max(d, 0) for f, d in (("alloc_vcpus", vcpus), ("alloc_ram_mib", ram_mib), ("alloc_disk_gib", disk_gib))}
    if any(grow.values()):
        Node.objects.filter(pk=node_id).update(**{f: F(f) + d for f, d in grow.items() if d})
    if min(vcpus, ram_mib, disk_gib) < 0:
        release(node_id, max(-vcpus, 0), max(-ram_mib, 0), max(-disk_gib, 0))

"""Compare every node's domains with the database; repair what is safe, record the rest.

Runs periodically in the worker (a django-q2 schedule made by runpanel). Safe repairs:
settling operations whose worker died, following a guest that powered itself off or was
started outside the panel, keeping suspended servers off, finishing interrupted deletes.
Everything else (a domain the panel does not know, a server whose domain vanished) is
recorded as drift for an admin to decide.
"""

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from nodes.connection import driver_for
from nodes.driver import DomainState, DriverError
from nodes.models import Drift, Node
from panel.images.models import Snapshot
from panel.runner import log_line
from panel.vps.models import Operation, ServerState, VirtualServer
from panel.vps.server_jobs import delete_record

log = logging.getLogger(__name__)


def _drift(node: Node, kind: str, detail: str, *, server=None, domain: str = "", repaired: bool = False) -> None:
    if repaired:
        Drift.objects.create(node=node, server=server, domain_name=domain, kind=kind, detail=detail, repaired=True)
        log.info("reconciler repaired %s on %s: %s", kind, node, detail)
        return
    # An unrepaired drift is recorded once and refreshed, not added again on every run.
    existing = Drift.objects.filter(node=node, domain_name=domain, kind=kind, repaired=False).first()
    if existing:
        Drift.objects.filter(pk=existing.pk).update(detail=detail, seen_at=timezone.now(), server=server)
    else:
        Drift.objects.create(node=node, server=server, domain_name=domain, kind=kind, detail=detail)
        log.warning("reconciler found %s on %s: %s", kind, node, detail)


def settle_stale_operations() -> int:
    """Fail running operations whose worker stopped sending heartbeats."""
    cutoff = timezone.now() - timedelta(seconds=settings.OPERATION_STALE_SECONDS)
    settled = 0
    for op_id in Operation.objects.filter(status=Operation.Status.RUNNING, heartbeat_at__lt=cutoff).values_list("id", flat=True):
        with transaction.atomic():
            op = Operation.objects.select_for_update().get(pk=op_id)
            if op.status != Operation.Status.RUNNING or op.heartbeat_at >= cutoff:
                continue
            op.status = Operation.Status.FAILED
            op.error = f"the worker stopped during the operation (last heartbeat {op.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC)"
            op.customer_error = "the operation was interrupted; request it again"
            op.log += log_line(f"reconciler: {op.error}")
            op.customer_log += log_line(f"failed: {op.customer_error}")
            op.finished_at = timezone.now()
            op.save(update_fields=["status", "error", "customer_error", "log", "customer_log", "finished_at"])
            server = op.server
            if server is not None and server.node_id:
                _drift(server.node, Drift.Kind.STALE_OPERATION, f"operation {op.id} ({op.kind}): {op.error}",
                       server=server, domain=server.domain_name, repaired=True)
        settled += 1
    return settled


def reconcile_node(node: Node) -> None:
    try:
        domains = {d.name: d for d in driver_for(node.uri).list_domains()}
    except DriverError as exc:
        _drift(node, Drift.Kind.NODE_UNREACHABLE, str(exc))
        return
    busy = set(Operation.objects.filter(status__in=Operation.ACTIVE, server__node=node).values_list("server_id", flat=True))
    known = set()
    for server in VirtualServer.objects.filter(node=node).select_related("node", "storage"):
        known.add(server.domain_name)
        if server.id in busy:
            continue  # an operation is changing it right now
        _reconcile_server(node, server, domains.get(server.domain_name))
    for name, dom in domains.items():
        if name in known:
            continue
        instance = dom.metadata.get("instance")
        if instance and instance != settings.PANEL_INSTANCE_ID:
            continue  # another panel's domain on a shared host
        who = f"server id {dom.metadata.get('id')} of this panel, not in the database" if instance else "not made by this panel"
        _drift(node, Drift.Kind.UNKNOWN_DOMAIN, f"domain {name} ({dom.state}): {who}", domain=name)


def _reconcile_server(node: Node, server: VirtualServer, dom) -> None:
    name = server.domain_name
    if server.state == ServerState.DELETING:
        # The delete operation was interrupted: finish it (idempotent removal).
        driver = driver_for(node.uri)
        driver.undefine(name)
        driver.delete_volume(server.storage.pool_name, server.disk_volume)
        Snapshot.discard_all(server, driver)
        _drift(node, Drift.Kind.STATE_MISMATCH, f"{server}: finished an interrupted delete", domain=name, repaired=True)
        delete_record(server)
        return
    if dom is None:
        if server.state != ServerState.ERROR:
            detail = f"{server}: domain {name} is missing (was {server.state})"
            # The server's customer reads its error: the node's name stays in the drift record.
            VirtualServer.objects.filter(pk=server.pk).update(
                state=ServerState.ERROR, error="the server's virtual machine is missing on its node")
            _drift(node, Drift.Kind.MISSING_DOMAIN, detail, server=server, domain=name)
        return
    running = dom.state == DomainState.RUNNING
    if server.state == ServerState.SUSPENDED:
        if running:
            driver_for(node.uri).destroy(name)
            _drift(node, Drift.Kind.STATE_MISMATCH, f"{server}: suspended but running; powered off", server=server,
                   domain=name, repaired=True)
        return
    actual = ServerState.RUNNING if running else ServerState.STOPPED if dom.state == DomainState.SHUTOFF else None
    if actual and server.state != actual:
        was = server.state
        VirtualServer.objects.filter(pk=server.pk).update(state=actual, updated_at=timezone.now())
        _drift(node, Drift.Kind.STATE_MISMATCH, f"{server}: database said {was}, the node says {actual}; followed the node",
               server=server, domain=name, repaired=True)


def recount_allocations() -> None:
    """Make every node's allocation counters equal the sum of its servers (they drift only
    through a crash between two writes, but placement trusts them)."""
    sums = {row["node"]: row for row in VirtualServer.objects.exclude(node=None).values("node").annotate(
        vcpus=Sum("vcpus"), ram=Sum("ram_mib"), disk=Sum("disk_gib"))}
    for node in Node.objects.all():
        row = sums.get(node.id, {"vcpus": 0, "ram": 0, "disk": 0})
        if (node.alloc_vcpus, node.alloc_ram_mib, node.alloc_disk_gib) != (row["vcpus"], row["ram"], row["disk"]):
            with transaction.atomic():
                locked = Node.objects.select_for_update().get(pk=node.pk)
                fresh = VirtualServer.objects.filter(node=node).aggregate(
                    vcpus=Sum("vcpus"), ram=Sum("ram_mib"), disk=Sum("disk_gib"))
                locked.alloc_vcpus = fresh["vcpus"] or 0
                locked.alloc_ram_mib = fresh["ram"] or 0
                locked.alloc_disk_gib = fresh["disk"] or 0
                locked.save(update_fields=["alloc_vcpus", "alloc_ram_mib", "alloc_disk_gib"])


def reconcile_all() -> str:
    """The periodic task: settle stale operations, then compare every node."""
    settled = settle_stale_operations()
    recount_allocations()
    nodes = list(Node.objects.exclude(state__in=[Node.State.MAINTENANCE, Node.State.INSTALLING, Node.State.OFFLINE]))
    for node in nodes:
        reconcile_node(node)
    return f"{len(nodes)} nodes, {settled} stale operations settled"

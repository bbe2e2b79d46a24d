"""Requests on snapshots (the API and the UI call these): take, revert to, delete.

Each validates everything before any side effect, under the server's row lock, and starts one
operation (panel/operations.py: refused while another one runs on the server); the work is in
snapshot_jobs.py. How many snapshots a server may keep, and whether with memory, is its plan's
(Plan.snapshots, Plan.snapshot_memory) for everyone who asks: the plan is what was sold.
"""

import re

from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from nodes.models import Storage
from panel.accounts import audit
from panel.accounts.tenancy import Actor
from panel.images.models import Snapshot
from panel.operations import hand_over, new_operation
from panel.refusals import Refused
from panel.vps.models import Operation, ServerState, VirtualServer

CREATE, REVERT, DELETE = Operation.Kind.SNAPSHOT_CREATE, Operation.Kind.SNAPSHOT_REVERT, Operation.Kind.SNAPSHOT_DELETE

TAKEABLE = frozenset({ServerState.RUNNING, ServerState.STOPPED})
CHANGEABLE = frozenset({ServerState.RUNNING, ServerState.STOPPED, ServerState.ERROR})
_NAME = re.compile(r"^[^\x00-\x1f\x7f]{1,100}$")


def _refuse_state(server: VirtualServer, allowed) -> None:
    if server.state == ServerState.SUSPENDED:
        raise Refused(_("The server is suspended: %(reason)s") % {"reason": server.suspend_reason or
                      _("no reason given")}, "server_suspended")
    if server.state not in allowed:
        raise Refused(_("Not possible while the server is %(state)s.") % {"state": server.get_state_display().lower()},
                      "invalid_state")


def request_snapshot(actor: Actor, server_id: int, *, name: str = "", memory: bool = False) -> tuple[Snapshot, Operation]:
    """Take a snapshot of a running or stopped server (with its memory: a running one)."""
    name = (name or "").strip() or timezone.now().strftime("snapshot %Y-%m-%d %H:%M:%S")
    if not _NAME.match(name):
        raise Refused(_("A snapshot's name is 1 to 100 characters, without control characters."), "invalid", 400,
                      field="name")
    with transaction.atomic():
        server = actor.get_or_404(VirtualServer.objects.select_for_update().select_related("plan", "storage"),
                                  pk=server_id)
        # First: while another operation runs, that is the reason (and the row is undone below).
        op = new_operation(actor, CREATE, server=server, params={"memory": bool(memory)})
        _refuse_state(server, TAKEABLE)
        if server.storage is None or server.storage.kind == Storage.Kind.LVM:
            raise Refused(_("Snapshots need a server on file storage (qcow2), not LVM."), "unsupported")
        plan = server.plan
        if memory and not plan.snapshot_memory:
            raise Refused(_("The server's plan does not include snapshots with memory."), "plan_limit", field="memory")
        if memory and server.state != ServerState.RUNNING:
            raise Refused(_("A snapshot with memory needs a running server."), "invalid", 400, field="memory")
        kept = Snapshot.objects.filter(server=server).count()
        if kept >= plan.snapshots:
            raise Refused(_("The server's plan allows %(count)s snapshot(s) and it has %(kept)s: delete one first.")
                          % {"count": plan.snapshots, "kept": kept}, "snapshot_limit")
        base = f"{server.domain_name}-snap{op.id}"
        snapshot = Snapshot.objects.create(server=server, name=name, memory=bool(memory),
                                           image=Snapshot.top_volume(server), overlay=f"{base}.qcow2",
                                           memory_volume=f"{base}.mem" if memory else "")
        op.params["snapshot"] = snapshot.id
        op.save(update_fields=["params"])
        audit.record(actor, "server.snapshot", server, operation=op.id, snapshot=snapshot.id, memory=bool(memory))
        hand_over(op)
    return snapshot, op


def _snapshot_request(actor: Actor, server_id: int, snapshot_id: int, kind: str, action: str) -> Operation:
    with transaction.atomic():
        snapshot = actor.get_or_404(Snapshot.objects.all(), pk=snapshot_id, server_id=server_id)
        server = VirtualServer.objects.select_for_update().get(pk=snapshot.server_id)
        op = new_operation(actor, kind, server=server, params={"snapshot": snapshot.id, "state": server.state})
        _refuse_state(server, CHANGEABLE)
        if snapshot.status != Snapshot.Status.READY:
            raise Refused(_("The snapshot is still being taken."), "snapshot_not_ready")
        if kind == REVERT and not snapshot.is_newest:
            raise Refused(_("Only the newest snapshot can be reverted to: delete the newer ones first."),
                          "not_newest_snapshot")
        audit.record(actor, action, server, operation=op.id, snapshot=snapshot.id)
        hand_over(op)
    return op


def request_revert(actor: Actor, server_id: int, snapshot_id: int) -> Operation:
    """Bring the server back to the snapshot: what it wrote since is discarded."""
    return _snapshot_request(actor, server_id, snapshot_id, REVERT, "server.snapshot_revert")


def request_delete(actor: Actor, server_id: int, snapshot_id: int) -> Operation:
    """Delete the snapshot, merging what was written since into the disk below it."""
    return _snapshot_request(actor, server_id, snapshot_id, DELETE, "server.snapshot_delete")

"""The server page's snapshot card: take (disk-only or with memory), revert to the newest,
delete. Every request goes through panel.images.snapshot_actions and the Actor."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from panel.accounts.tenancy import Actor
from panel.images import snapshot_actions
from panel.images.models import Snapshot
from panel.refusals import Refused
from panel.ui.views.common import actor
from panel.vps.models import ServerState, VirtualServer


def server_snapshots(server: VirtualServer, act: Actor) -> dict:
    """The server page's context for ui/_server_snapshots.html."""
    rows = list(Snapshot.objects.filter(server=server))
    return {"snapshots": rows, "snapshots_allowed": server.plan.snapshots,
            "snapshot_memory_allowed": server.plan.snapshot_memory and server.state == ServerState.RUNNING,
            "snapshot_room": len(rows) < server.plan.snapshots,
            "newest_snapshot": rows[0].pk if rows else None}


def _back(server_id: int):
    return redirect(reverse("ui:server", args=[server_id]) + "#snapshots")


@require_POST
@login_required
def snapshot_take(request, server_id: int):
    act = actor(request)
    server = act.get_or_404(VirtualServer.objects.all(), pk=server_id)
    try:
        snapshot_actions.request_snapshot(act, server.pk, name=request.POST.get("name", ""),
                                          memory=bool(request.POST.get("memory")))
    except Refused as refused:
        messages.error(request, refused.message)
    else:
        messages.success(request, _("Snapshot requested."))
    return _back(server.pk)


@require_POST
@login_required
def snapshot_change(request, server_id: int, snapshot_id: int, action: str):
    act = actor(request)
    server = act.get_or_404(VirtualServer.objects.all(), pk=server_id)
    requests = {"revert": (snapshot_actions.request_revert, _("Revert requested.")),
                "delete": (snapshot_actions.request_delete, _("Snapshot deletion requested."))}
    if action not in requests:
        return _back(server.pk)
    request_fn, said = requests[action]
    try:
        request_fn(act, server.pk, snapshot_id)
    except Refused as refused:
        messages.error(request, refused.message)
    else:
        messages.success(request, said)
    return _back(server.pk)

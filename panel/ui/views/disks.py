"""The server page's data disks card: add, grow and delete a data disk. Every request goes
through panel.images.disk_jobs and the Actor, like the API's /servers/{id}/disks/."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from panel.images import disk_jobs
from panel.refusals import Refused
from panel.ui.views.common import actor
from panel.vps.models import VirtualServer


def _back(server_id: int):
    return redirect(reverse("ui:server", args=[server_id]) + "#disks")


@require_POST
@login_required
def disk_add(request, server_id: int):
    act = actor(request)
    server = act.get_or_404(VirtualServer.objects.all(), pk=server_id)
    try:
        disk_jobs.request_add(act, server.pk, request.POST.get("name", ""), request.POST.get("size_gib", ""))
    except Refused as refused:
        messages.error(request, refused.message)
    else:
        messages.success(request, _("Data disk requested."))
    return _back(server.pk)


@require_POST
@login_required
def disk_change(request, server_id: int, disk_id: int):
    """Grow (size_gib) or, with delete, detach and delete the disk."""
    act = actor(request)
    server = act.get_or_404(VirtualServer.objects.all(), pk=server_id)
    try:
        if "delete" in request.POST:
            disk_jobs.request_delete(act, server.pk, disk_id)
            messages.success(request, _("Disk deletion requested."))
        else:
            disk_jobs.request_grow(act, server.pk, disk_id, request.POST.get("size_gib", ""))
            messages.success(request, _("Disk growth requested."))
    except Refused as refused:
        messages.error(request, refused.message)
    return _back(server.pk)

"""The ISO library in the UI (a customer's own ISOs and the provider's public ones; upload,
delete) and the server page's ISO card (boot from an ISO, rescue mode). Every request goes
through panel.images.isos and the Actor."""

import re

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.files.uploadhandler import FileUploadHandler, StopFutureHandlers
from django.http import HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_POST

from panel.accounts.tenancy import Actor
from panel.images import isos
from panel.images.isos import ServerMedia
from panel.refusals import Refused
from panel.ui.views.common import actor
from panel.vps.models import ServerState, VirtualServer


class IsoUploadHandler(FileUploadHandler):
    """Streams the form's `file` straight into an IsoWriter on the share (never in memory nor
    in the web host's temporary folder); the name and public fields apply once it is in."""

    def __init__(self, request, act: Actor):
        super().__init__(request)
        self.act, self.writer, self.refused = act, None, None

    def new_file(self, field_name, file_name, *args, **kwargs):
        super().new_file(field_name, file_name, *args, **kwargs)
        if field_name != "file":
            return
        # The form's other fields are not parsed yet: the file's own name until they are.
        name = re.sub(r"[^\w .+()\-]", "_", file_name or "").lstrip(" .+()-")[:100] or "upload.iso"
        try:
            self.writer = isos.IsoWriter(self.act, name)
        except Refused as refused:
            self.refused = refused
        raise StopFutureHandlers

    def receive_data_chunk(self, raw_data, start):
        if self.writer is not None and self.refused is None:
            try:
                self.writer.write(raw_data)
            except Refused as refused:  # over quota: the rest of the body is read and dropped
                self.refused, self.writer = refused, None
        return None

    def file_complete(self, file_size):
        return None


def library_context(act: Actor) -> dict:
    return {"isos": list(isos.visible_isos(act).select_related("customer")), "is_admin": act.is_admin,
            "quota_gib": None if act.acts_for_all_customers else isos.settings.LIMIT_ISO_GIB_PER_CUSTOMER}


@login_required
def iso_list(request):
    return render(request, "ui/isos.html", library_context(actor(request)))


@csrf_exempt  # the handler must be set before anything reads the body; the check is below
@login_required
@require_POST
def iso_upload(request):
    act = actor(request)
    handler = IsoUploadHandler(request, act)
    request.upload_handlers = [handler]
    try:
        return _iso_upload(request, handler)
    finally:  # refused (CSRF, a bad name…) or failed: the partial file goes
        if handler.writer is not None and handler.writer.partial.exists():
            handler.writer.abort()


@csrf_protect
def _iso_upload(request, handler: IsoUploadHandler):
    if not request.POST and handler.writer is None and handler.refused is None:
        return HttpResponseBadRequest()
    refused = handler.refused
    if refused is None and handler.writer is None:
        refused = Refused(_("Choose an ISO file to upload."), "invalid", 400)
    if refused is None:
        try:
            writer = handler.writer
            if request.POST.get("name", "").strip():
                writer.name = isos.check_name(request.POST["name"])
            if handler.act.acts_for_all_customers and writer.customer is None:
                writer.public = bool(request.POST.get("public"))
            iso = writer.finish()
        except Refused as exc:
            refused = exc
    if refused is not None:
        if handler.writer is not None:
            handler.writer.abort()
        messages.error(request, refused.message)
    else:
        messages.success(request, _("ISO %(name)s uploaded.") % {"name": iso.name})
    return redirect("ui:isos")


@require_POST
@login_required
def iso_delete(request, iso_id: int):
    try:
        isos.delete_iso(actor(request), iso_id)
    except Refused as refused:
        messages.error(request, refused.message)
    else:
        messages.success(request, _("ISO deleted."))
    return redirect("ui:isos")


def server_isos(server: VirtualServer, act: Actor) -> dict:
    """The server page's context for ui/_server_isos.html."""
    media = ServerMedia.objects.select_related("iso").filter(server=server).first()
    owner = Actor(user=None, api_key=None, customer_id=server.customer_id, is_admin=False)
    return {"media": media, "media_stopped": server.state == ServerState.STOPPED,
            "attachable_isos": list(isos.visible_isos(owner))}


@require_POST
@login_required
def server_boot(request, server_id: int, action: str):
    act = actor(request)
    server = act.get_or_404(VirtualServer.objects.all(), pk=server_id)
    if action not in isos.MEDIA_ACTIONS:
        return HttpResponseBadRequest()
    try:
        isos.request_boot(act, server.pk, action, request.POST.get("iso") or None)
    except Refused as refused:
        messages.error(request, refused.message)
    else:
        messages.success(request, str(isos.MEDIA_ACTIONS[action][1]))
    return redirect(reverse("ui:server", args=[server.pk]) + "#boot-media")

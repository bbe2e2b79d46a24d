"""OVA export and import in the UI (admins): the server page's export card, the download of a
finished export, and the admin area's import form. Every request goes through
panel.images.ovf_jobs, as the API's do."""

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import FileResponse, Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from nodes.models import Node
from panel.accounts.models import Customer
from panel.images import ovf_jobs
from panel.refusals import Refused
from panel.ui.views.common import actor, admin_only
from panel.vps.models import Operation, Plan, VirtualServer, hostname_validator
from templates_os.models import OsTemplate


@require_POST
@admin_only
def server_export(request, server_id: int):
    act = actor(request)
    server = act.get_or_404(VirtualServer.objects.all(), pk=server_id)
    try:
        op = ovf_jobs.request_export(act, server.pk, request.POST.get("format", "vmdk"))
    except Refused as refused:
        messages.error(request, refused.message)
        return redirect(reverse("ui:server", args=[server.pk]) + "#ova")
    messages.success(request, _("Export requested."))
    return redirect("ui:operation", op.pk)


@admin_only
def export_download(request, op_id: int):
    op = Operation.objects.filter(pk=op_id).first()
    path = ovf_jobs.export_path(op) if op else None
    if path is None:
        raise Http404
    return FileResponse(open(path, "rb"), as_attachment=True, filename=path.name, content_type="application/x-tar")


def _pick(model, value):
    return model.objects.filter(pk=value).first() if (value or "").isdigit() else None


@admin_only
def import_form(request):
    choices = {"customers": Customer.objects.order_by("name"), "plans": Plan.objects.order_by("vcpus", "ram_mib"),
               "templates": OsTemplate.objects.order_by("name"), "nodes": Node.objects.order_by("name")}
    if request.method != "POST":
        return render(request, "ui/admin/ova_import.html", choices)
    act = actor(request)
    try:
        customer = _pick(Customer, request.POST.get("customer"))
        if customer is None:
            raise Refused(_("Choose a customer."), "invalid", 400, field="customer")
        hostname = request.POST.get("hostname", "").strip()
        try:
            hostname_validator(hostname)
        except ValidationError:
            raise Refused(_("A hostname is letters, digits, hyphens and dots (RFC 1123)."), "invalid", 400,
                          field="hostname") from None
        upload = request.FILES.get("file")
        if upload is None:
            raise Refused(_("Choose an OVA file."), "invalid", 400, field="file")
        # Django has streamed a large upload to a temporary file; it is copied in chunks.
        path = ovf_jobs.receive_upload(upload.chunks())
        server, op, _appliance = ovf_jobs.request_import(
            act, path, customer=customer, hostname=hostname, os_template=_pick(OsTemplate, request.POST.get("os_template")),
            plan=_pick(Plan, request.POST.get("plan")), node=_pick(Node, request.POST.get("node")))
    except Refused as refused:
        messages.error(request, refused.message)
        return render(request, "ui/admin/ova_import.html", {**choices, "posted": request.POST}, status=400)
    messages.success(request, _("Import requested."))
    return redirect("ui:operation", op.pk)

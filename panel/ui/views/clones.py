"""Clones and golden templates in the UI: the server page's clone card (clone a stopped server,
make it a golden template) and the admin area's golden templates page (edit, publish, delete,
create a server from one). Every request goes through panel.images.cloning and the Actor."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from panel.accounts.models import Customer
from panel.images import cloning
from panel.images.golden import CloneOrigin
from panel.refusals import Refused
from panel.ui.views.common import actor, admin_only
from panel.vps.models import Plan, VirtualServer, hostname_validator


def _hostname(request) -> str:
    hostname = request.POST.get("hostname", "").strip()
    try:
        hostname_validator(hostname)
    except ValidationError:
        raise Refused(_("A hostname is letters, digits, hyphens and dots (RFC 1123)."), "invalid", 400,
                      field="hostname") from None
    return hostname


@require_POST
@login_required
def server_clone(request, server_id: int):
    act = actor(request)
    source = act.get_or_404(VirtualServer.objects.all(), pk=server_id)
    try:
        server, op = cloning.request_clone(act, source.pk, hostname=_hostname(request),
                                           mode=request.POST.get("mode", CloneOrigin.Mode.THIN))
    except Refused as refused:
        messages.error(request, refused.message)
        return redirect(reverse("ui:server", args=[source.pk]) + "#clone")
    messages.success(request, _("Clone requested."))
    return redirect("ui:server", server.pk)


@require_POST
@admin_only
def server_make_template(request, server_id: int):
    act = actor(request)
    server = act.get_or_404(VirtualServer.objects.all(), pk=server_id)
    name = request.POST.get("name", "").strip()[:100]
    try:
        if not name:
            raise Refused(_("A golden template needs a name."), "invalid", 400, field="name")
        cloning.make_template(act, server.pk, name=name, offered=request.POST.get("offered") == "on")
    except Refused as refused:
        messages.error(request, refused.message)
        return redirect(reverse("ui:server", args=[server.pk]) + "#clone")
    messages.success(request, _("The server is a golden template now."))
    return redirect("ui:admin-golden-templates")


@admin_only
def template_list(request):
    templates = cloning.offered_templates(actor(request)).select_related("server")
    return render(request, "ui/admin/golden_templates.html", {
        "templates": templates, "plans": Plan.objects.all(), "customers": Customer.objects.order_by("name"),
    })


def _template_action(request, template_id: int, do, done: str):
    try:
        do(actor(request), template_id)
    except Refused as refused:
        messages.error(request, refused.message)
    else:
        messages.success(request, done)
    return redirect("ui:admin-golden-templates")


@require_POST
@admin_only
def template_edit(request, template_id: int):
    return _template_action(request, template_id, cloning.edit_template,
                            _("The template's server may be started and changed; publish it when it is ready."))


@require_POST
@admin_only
def template_publish(request, template_id: int):
    return _template_action(request, template_id, cloning.publish_template, _("A new version is published."))


@require_POST
@admin_only
def template_delete(request, template_id: int):
    return _template_action(request, template_id, cloning.delete_template,
                            _("The golden template is deleted; its server is an ordinary server again."))


@require_POST
@admin_only
def template_create_server(request, template_id: int):
    act = actor(request)
    customer = Customer.objects.filter(pk=request.POST.get("customer") or None).first() \
        if str(request.POST.get("customer", "")).isdigit() else None
    plan = Plan.objects.filter(pk=request.POST.get("plan")).first() \
        if str(request.POST.get("plan", "")).isdigit() else None
    try:
        if customer is None or plan is None:
            raise Refused(_("Choose a customer and a plan."), "invalid", 400)
        server, _op = cloning.create_from_template(act, template_id, customer=customer, plan=plan,
                                                   hostname=_hostname(request))
    except Refused as refused:
        messages.error(request, refused.message)
        return redirect("ui:admin-golden-templates")
    messages.success(request, _("Server creation requested."))
    return redirect("ui:server", server.pk)

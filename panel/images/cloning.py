"""Requests for clones and golden templates: each validated before anything is made, under the
source server's row lock, in one transaction; the disk work is the clone job's (clone_jobs.py).

A clone is a new server (new UUID, MACs, hostname and addresses from the pool) whose `create`
operation copies a stopped source's disk instead of running an installer. While it runs, the
source takes no operation (panel/operations.py refuses them: the job reads its disk). A golden
template is a stopped server locked against start and change (panel/vps/lifecycle.py refuses
them); "edit" unlocks it and "publish" locks it again as the next version.
"""

from django.db import transaction
from django.utils.translation import gettext as _

from panel import limits
from panel.accounts import audit
from panel.accounts.models import Customer
from panel.accounts.tenancy import Actor
from panel.events import emit
from panel.images.golden import CloneOrigin, GoldenTemplate
from panel.operations import hand_over, new_operation
from panel.refusals import Refused
from panel.vps.lifecycle import place_new_server
from panel.vps.models import Operation, Plan, ServerState, VirtualServer

MODES = tuple(CloneOrigin.Mode.values)


def reading(server_id: int) -> bool:
    """Whether an active clone job is reading this server's disk."""
    return Operation.objects.filter(status__in=Operation.ACTIVE, params__clone_of=server_id).exists()


def _check_source_idle(source: VirtualServer) -> None:
    if source.state != ServerState.STOPPED:
        raise Refused(_("Only a stopped server can be cloned or made a template; it is %(state)s.")
                      % {"state": source.get_state_display().lower()}, "invalid_state")
    if source.operations.filter(status__in=Operation.ACTIVE).exists():
        raise Refused(_("Another operation is in progress on this server; wait for it to finish."),
                      "operation_in_progress")


def _new_clone(actor: Actor, source: VirtualServer, *, customer: Customer, plan: Plan, hostname: str, mode: str,
               template: GoldenTemplate | None = None) -> tuple[VirtualServer, Operation]:
    """The clone's record, its addresses and its create operation (inside the caller's transaction)."""
    if mode not in MODES:
        raise Refused(_("A clone is %(modes)s.") % {"modes": " or ".join(MODES)}, "invalid", 400, field="mode")
    limits.check_new_server(actor, customer)
    # On the source's node: the disk is copied there, node-locally.
    server = place_new_server(actor, customer=customer, plan=plan, hostname=hostname, os_template=source.os_template,
                              node=source.node, disk_gib=source.disk_gib)
    CloneOrigin.objects.create(server=server, mode=mode, source=source, source_hostname=source.hostname,
                               template=template, version=template.version if template else None)
    params = {"clone_of": source.pk, "mode": mode, **({"template": template.pk, "version": template.version}
                                                      if template else {})}
    op = new_operation(actor, Operation.Kind.CREATE, server=server, params=params)
    audit.record(actor, "server.clone", server, operation=op.id, source=source.hostname, mode=mode,
                 template=template.name if template else "")
    emit("server.created", customer_id=customer.pk, server=server.pk, hostname=hostname, operation=op.id,
         plan=plan.pk, os_template=source.os_template.slug if source.os_template else None)
    hand_over(op)
    return server, op


def request_clone(actor: Actor, server_id: int, *, hostname: str, mode: str = "thin") -> tuple[VirtualServer, Operation]:
    """Clone a stopped server the actor can see (else Http404) into a new server of its customer
    and plan: admins and billing keys always, a customer when the plan allows clones."""
    with transaction.atomic():
        source = actor.get_or_404(VirtualServer.objects.select_for_update().select_related("plan", "node", "customer",
                                                                                          "os_template"), pk=server_id)
        if not actor.acts_for_all_customers and not source.plan.clones:
            raise Refused(_("The server's plan does not include clones."), "permission_denied", 403)
        template = getattr(source, "golden_template", None)
        if template is not None:
            raise Refused(_("This server is the golden template %(name)s: create servers from the template.")
                          % {"name": template.name}, "golden_template")
        _check_source_idle(source)
        return _new_clone(actor, source, customer=source.customer, plan=source.plan, hostname=hostname, mode=mode)


def offered_templates(actor: Actor):
    """The golden templates `actor` may create servers from: all for the provider, offered ones for customers."""
    rows = GoldenTemplate.objects.select_related("server").order_by("name")
    return rows if actor.acts_for_all_customers else rows.filter(offered=True)


def create_from_template(actor: Actor, template_id, *, customer: Customer, plan: Plan,
                         hostname: str) -> tuple[VirtualServer, Operation]:
    """A new server, a thin clone of the golden template's current version."""
    if not actor.acts_for_all_customers and customer.pk != actor.customer_id:
        raise Refused(_("Unknown customer."), "invalid", 400, field="customer")
    with transaction.atomic():
        template = offered_templates(actor).select_for_update().filter(
            pk=template_id if str(template_id).isdigit() else None).first()
        if template is None:
            raise Refused(_("Unknown or unavailable golden template."), "invalid", 400, field="golden_template")
        if template.editing:
            raise Refused(_("The golden template %(name)s is being edited; servers are made from it once it is "
                            "published.") % {"name": template.name}, "golden_template_editing")
        source = VirtualServer.objects.select_for_update().select_related("node", "os_template").get(
            pk=template.server_id)
        if plan.disk_gib < source.disk_gib:
            raise Refused(_("%(template)s needs a disk of at least %(min)s GiB; the plan has %(disk)s GiB.")
                          % {"template": template.name, "min": source.disk_gib, "disk": plan.disk_gib},
                          "disk_too_small", 400, field="golden_template")
        return _new_clone(actor, source, customer=customer, plan=plan, hostname=hostname, mode="thin",
                          template=template)


def _provider(actor: Actor) -> None:
    if not actor.is_admin:
        raise Refused(_("Only admins manage golden templates."), "permission_denied", 403)


def make_template(actor: Actor, server_id: int, *, name: str, offered: bool = False) -> GoldenTemplate:
    """Turn a prepared, stopped server into a golden template (admins)."""
    _provider(actor)
    with transaction.atomic():
        server = actor.get_or_404(VirtualServer.objects.select_for_update(), pk=server_id)
        if getattr(server, "golden_template", None) is not None:
            raise Refused(_("This server is a golden template already."), "golden_template")
        if GoldenTemplate.objects.filter(name=name).exists():
            raise Refused(_("A golden template of that name exists."), "invalid", 400, field="name")
        _check_source_idle(server)
        template = GoldenTemplate.objects.create(name=name, server=server, offered=offered)
        audit.record(actor, "golden_template.create", template, server=server.hostname, offered=offered)
    return template


def edit_template(actor: Actor, template_id: int) -> GoldenTemplate:
    """Unlock the template's server: it may be started and changed until it is published again.
    Servers made from earlier versions keep their own frozen base."""
    _provider(actor)
    with transaction.atomic():
        template = actor.get_or_404(GoldenTemplate.objects.select_for_update(), pk=template_id)
        if template.editing:
            raise Refused(_("The golden template is being edited already."), "golden_template_editing")
        if reading(template.server_id):
            raise Refused(_("Servers are being made from this template; wait for them to finish."),
                          "operation_in_progress")
        template.editing = True
        template.save(update_fields=["editing", "updated_at"])
        audit.record(actor, "golden_template.edit", template, version=template.version)
    return template


def publish_template(actor: Actor, template_id: int) -> GoldenTemplate:
    """Lock the edited server again as the template's next version (it must be stopped)."""
    _provider(actor)
    with transaction.atomic():
        template = actor.get_or_404(GoldenTemplate.objects.select_for_update(), pk=template_id)
        if not template.editing:
            raise Refused(_("The golden template is not being edited."), "invalid_state")
        server = VirtualServer.objects.select_for_update().get(pk=template.server_id)
        _check_source_idle(server)
        template.editing, template.version = False, template.version + 1
        template.save(update_fields=["editing", "version", "updated_at"])
        audit.record(actor, "golden_template.publish", template, version=template.version)
    return template


def delete_template(actor: Actor, template_id: int) -> None:
    """The template goes; its server stays, an ordinary server again. Servers made from it keep their bases."""
    _provider(actor)
    with transaction.atomic():
        template = actor.get_or_404(GoldenTemplate.objects.select_for_update(), pk=template_id)
        if reading(template.server_id):
            raise Refused(_("Servers are being made from this template; wait for them to finish."),
                          "operation_in_progress")
        audit.record(actor, "golden_template.delete", template, server=template.server.hostname)
        template.delete()


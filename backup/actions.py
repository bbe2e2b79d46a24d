"""Requests that start backup operations: checked before any side effect, like lifecycle.py.

A customer may back up and restore their own servers when their plan includes backups
(`Plan.backups` > 0); providers (admins, billing keys) always may. Backups, restores and the
panel's own backup are Operations the worker carries out (backup/taking.py, restoring.py).
"""

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils.translation import gettext as _

from backup.models import Backup, BackupPlan, BackupTarget
from panel import limits
from panel.accounts import audit
from panel.accounts.tenancy import Actor
from panel.operations import hand_over, new_operation
from panel.refusals import Refused
from panel.vps import lifecycle
from panel.vps.models import Operation, ServerState, VirtualServer, hostname_validator


# A backup copies a running server live (consistently) or a stopped one as it lies.
BACKUPABLE = frozenset({ServerState.RUNNING, ServerState.STOPPED})
RESTORABLE = frozenset({ServerState.RUNNING, ServerState.STOPPED, ServerState.ERROR})


def default_target(server: VirtualServer) -> BackupTarget | None:
    """Where a backup started by hand goes: the target of the first enabled plan that covers the
    server, else the first enabled target."""
    for plan in BackupPlan.objects.filter(enabled=True, target__enabled=True).exclude(
            scope=BackupPlan.Scope.PANEL).select_related("target"):
        if plan.servers_in_scope().filter(pk=server.pk).exists():
            return plan.target
    return BackupTarget.objects.filter(enabled=True).order_by("id").first()


def _check_allowance(actor: Actor, server: VirtualServer) -> None:
    if not actor.acts_for_all_customers and server.plan.backups < 1:
        raise Refused(_("Your plan includes no backups."), "backups_not_included", 403)


def request_backup(actor: Actor, server_id: int, *, target: BackupTarget | None = None,
                   plan: BackupPlan | None = None) -> Operation:
    """Back up a server now (or as part of a plan's run) to `target` (default: see above)."""
    with transaction.atomic():
        server = actor.get_or_404(VirtualServer.objects.select_for_update().select_related("plan"), pk=server_id)
        _check_allowance(actor, server)
        limits.check_new_backup(actor, server)
        if target is not None and not actor.is_admin and plan is None:
            raise Refused(_("Only admins choose the backup target."), "permission_denied", 403, field="target")
        target = target or default_target(server)
        if target is None:
            raise Refused(_("No backup target is configured; ask the provider."), "no_backup_target", 409)
        if not target.enabled:
            raise Refused(_("The backup target %(target)s is disabled.") % {"target": target.name},
                          "target_disabled", 409, field="target")
        if server.state not in BACKUPABLE:
            raise Refused(_("Cannot back up a server that is %(state)s.") % {"state": server.get_state_display().lower()},
                          "invalid_state")
        op = new_operation(actor, Operation.Kind.BACKUP, server=server,
                           params={"target": target.pk, "plan": plan.pk if plan else None})
        audit.record(actor, "server.backup", server, operation=op.id, target=target.name)
        hand_over(op)
    return op


def restorable_backup(actor: Actor, backup_id) -> Backup:
    """A finished backup the actor may restore, whose whole chain is there; else Refused."""
    backup = actor.restrict(Backup.objects.select_related("target", "parent")).exclude(kind=Backup.Kind.PANEL).filter(
        pk=backup_id if str(backup_id).isdigit() else -1).first()
    if backup is None:
        raise Refused(_("Unknown backup."), "invalid", 400, field="backup")
    for link in backup.chain():
        if link.status != Backup.Status.DONE:
            raise Refused(_("Backup #%(id)s cannot be restored: it needs backup #%(link)s, which is %(status)s.")
                          % {"id": backup.id, "link": link.id, "status": link.get_status_display().lower()},
                          "broken_chain", 409, field="backup")
    return backup


def request_restore(actor: Actor, server_id: int, backup_id) -> Operation:
    """Overwrite a server's disk with one of its own backups (the caller has confirmed)."""
    with transaction.atomic():
        server = actor.get_or_404(VirtualServer.objects.select_for_update().select_related("plan"), pk=server_id)
        lifecycle.refuse_golden_template(server)  # a restore would change what servers are cloned from
        _check_allowance(actor, server)
        backup = restorable_backup(actor, backup_id)
        if backup.server_uuid != server.uuid:
            raise Refused(_("Backup #%(id)s is not one of this server's.") % {"id": backup.id}, "invalid", 400,
                          field="backup")
        if server.state == ServerState.SUSPENDED:
            raise Refused(_("The server is suspended: %(reason)s") % {"reason": server.suspend_reason or
                          _("no reason given")}, "server_suspended")
        if server.state not in RESTORABLE:
            raise Refused(_("Cannot restore a server that is %(state)s.") % {"state": server.get_state_display().lower()},
                          "invalid_state")
        op = new_operation(actor, Operation.Kind.RESTORE, server=server,
                           params={"backup": backup.pk, "state": server.state})
        audit.record(actor, "server.restore", server, operation=op.id, backup=backup.pk)
        hand_over(op)
    return op


def restore_as_new_server(actor: Actor, backup_id, *, hostname: str = "", node=None) -> tuple[VirtualServer, Operation]:
    """A new server (same customer and plan, new addresses) whose disk is the backup's. Admins
    only: it places a server like a create does."""
    from panel.vps.models import Plan
    from templates_os.models import OsTemplate

    if not actor.is_admin:
        raise Refused(_("Only admins restore a backup as a new server."), "permission_denied", 403)
    backup = restorable_backup(actor, backup_id)
    hostname = hostname or backup.hostname
    try:
        # Checked here, for the UI and the API alike: the name reaches the cloud-init meta-data
        # of the server's next install.
        hostname_validator(hostname)
    except ValidationError as exc:
        raise Refused(str(exc.messages[0]), "invalid", 400, field="hostname") from None
    described = backup.manifest.get("server", {})
    plan = Plan.objects.filter(pk=described.get("plan_id")).first() or (backup.server.plan if backup.server else None)
    if plan is None or backup.customer is None:
        raise Refused(_("The backup's plan or customer no longer exists."), "invalid", 400, field="backup")
    with transaction.atomic():
        server = lifecycle.place_new_server(
            actor, customer=backup.customer, plan=plan, hostname=hostname,
            os_template=OsTemplate.objects.filter(slug=described.get("os_template", "")).first(), node=node,
            disk_gib=described.get("disk_gib"))
        op = new_operation(actor, Operation.Kind.RESTORE, server=server,
                           params={"backup": backup.pk, "new_server": True})
        audit.record(actor, "server.restore", server, operation=op.id, backup=backup.pk, new_server=True)
        hand_over(op)
    return server, op


def request_panel_backup(actor: Actor, target: BackupTarget, plan: BackupPlan | None = None) -> Operation:
    """Back up the panel itself (database, settings, keys; encrypted) to `target`."""
    if not actor.is_admin:
        raise Refused(_("Only admins back up the panel."), "permission_denied", 403)
    op = new_operation(actor, Operation.Kind.PANEL_BACKUP,
                       params={"target": target.pk, "plan": plan.pk if plan else None})
    audit.record(actor, "panel.backup", None, operation=op.id, target=target.name)
    hand_over(op)
    return op


def save_checked(save) -> BackupTarget:
    """Save a target with `save()` and check it; one that fails its check is not kept: the
    save is rolled back and Refused says why (the API and the UI's forms alike)."""
    from backup.connect import check_target

    with transaction.atomic():
        target = save()
        error = check_target(target)
        if error:
            raise Refused(_("The target failed its check: %(error)s") % {"error": error}, "target_check_failed", 400)
    return target


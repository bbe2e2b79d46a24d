"""Backups in the UI: the admin area's targets, plans and recent backups (and the panel's own
backup), and the server page's backups card (back up now, restore). Every request goes through
backup.actions and the Actor."""

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_POST

from backup import actions
from backup.models import Backup, BackupPlan, BackupTarget
from panel.accounts import audit
from panel.accounts.tenancy import Actor
from panel.crypto import encrypt
from panel.ui.views.common import actor, admin_only, form_changes, paginate
from panel.refusals import Refused
from panel.vps.models import VirtualServer


class BackupTargetForm(forms.ModelForm):
    password = forms.CharField(label=gettext_lazy("Password"), required=False, max_length=200, strip=False,
                               widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
                               help_text=gettext_lazy("SFTP and FTP only. Leave empty to keep the stored one; "
                                                      "SFTP without one logs in with the panel's SSH key."))

    forget_pin = forms.BooleanField(
        label=gettext_lazy("Accept a new host key or certificate"), required=False,
        help_text=gettext_lazy("SFTP and FTPS: forget the pinned one; the check on saving pins what the server "
                               "shows now. Only after making sure the server really changed it."))

    class Meta:
        model = BackupTarget
        fields = ["name", "kind", "path", "host", "port", "username", "enabled"]

    def save(self, commit=True):
        if self.cleaned_data.get("password"):
            self.instance.password = encrypt(self.cleaned_data["password"])
        if self.cleaned_data.get("forget_pin"):
            self.instance.host_key = ""
        return super().save(commit)


class BackupPlanForm(forms.ModelForm):
    class Meta:
        model = BackupPlan
        fields = ["name", "target", "schedule", "scope", "plans", "customers", "servers", "keep", "full_every",
                  "compression", "enabled"]
        help_texts = {"schedule": gettext_lazy("Cron: minute hour day-of-month month day-of-week, e.g. 0 3 * * *.")}


class PanelBackupForm(forms.Form):
    target = forms.ModelChoiceField(label=gettext_lazy("Target"), queryset=BackupTarget.objects.filter(enabled=True))


class RestoreForm(forms.Form):
    """A restore of `server` from one of its backups: the user types its hostname to confirm."""

    backup = forms.IntegerField(widget=forms.HiddenInput)
    confirm = forms.CharField(label=gettext_lazy("Type the server's hostname to confirm"), max_length=253)

    def __init__(self, *args, server: VirtualServer, **kwargs):
        self.server = server
        super().__init__(*args, **kwargs)

    def clean_confirm(self) -> str:
        value = self.cleaned_data["confirm"].strip()
        if value != self.server.hostname:
            raise ValidationError(_("Type the hostname %(hostname)s exactly, or nothing is restored.")
                                  % {"hostname": self.server.hostname})
        return value


# --- the admin area --------------------------------------------------------------------------

@admin_only
def backup_list(request):
    return render(request, "ui/admin/backups.html", {
        "targets": BackupTarget.objects.all(), "plans": BackupPlan.objects.select_related("target"),
        "page": paginate(request, Backup.objects.select_related("target", "server").order_by("-id"), 50),
        "panel_form": PanelBackupForm(),
    })


def _edit_target(request, target: BackupTarget | None):
    form = BackupTargetForm(request.POST or None, instance=target)
    if request.method == "POST" and form.is_valid():  # is_valid runs the model's clean()
        try:
            saved = actions.save_checked(form.save)
        except Refused as refused:
            form.add_error(None, refused.message)
        else:
            audit.record(actor(request), "backup_target.update" if target else "backup_target.create", saved,
                         fields=sorted(form.changed_data))
            messages.success(request, _("Target “%(name)s” saved and checked.") % {"name": saved.name})
            return redirect("ui:admin-backups")
    return render(request, "ui/admin/backups_form.html", {
        "form": form, "title": _("Edit target %(name)s") % {"name": target.name} if target else _("New backup target"),
        "back_href": reverse("ui:admin-backups"), "submit": _("Save and check"), "object": target,
        "delete_url": reverse("ui:admin-backup-target-delete", args=[target.pk]) if target else "",
    })


@admin_only
def target_create(request):
    return _edit_target(request, None)


@admin_only
def target_edit(request, target_id: int):
    return _edit_target(request, get_object_or_404(BackupTarget, pk=target_id))


@admin_only
@require_POST
def target_check(request, target_id: int):
    from backup.connect import check_target

    target = get_object_or_404(BackupTarget, pk=target_id)
    error = check_target(target)
    if error:
        messages.error(request, _("Target “%(name)s” failed its check: %(error)s")
                       % {"name": target.name, "error": error})
    else:
        messages.success(request, _("Target “%(name)s” is fine.") % {"name": target.name})
    return redirect("ui:admin-backups")


@admin_only
@require_POST
def target_delete(request, target_id: int):
    target = get_object_or_404(BackupTarget, pk=target_id)
    refused = target.delete_refusal()
    if refused is not None:
        messages.error(request, refused.message)
    else:
        target.delete()
        audit.record(actor(request), "backup_target.delete", None, name=target.name)
        messages.success(request, _("Target “%(name)s” deleted.") % {"name": target.name})
    return redirect("ui:admin-backups")


def _edit_plan(request, plan: BackupPlan | None):
    form = BackupPlanForm(request.POST or None, instance=plan)
    if request.method == "POST" and form.is_valid():
        saved = form.save()
        audit.record(actor(request), "backup_plan.update" if plan else "backup_plan.create", saved,
                     **form_changes(form))
        messages.success(request, _("Backup plan “%(name)s” saved.") % {"name": saved.name})
        return redirect("ui:admin-backups")
    return render(request, "ui/admin/backups_form.html", {
        "form": form, "title": _("Edit backup plan %(name)s") % {"name": plan.name} if plan else _("New backup plan"),
        "back_href": reverse("ui:admin-backups"), "submit": _("Save"), "object": plan,
        "delete_url": reverse("ui:admin-backup-plan-delete", args=[plan.pk]) if plan else "",
    })


@admin_only
def plan_create(request):
    return _edit_plan(request, None)


@admin_only
def plan_edit(request, plan_id: int):
    return _edit_plan(request, get_object_or_404(BackupPlan, pk=plan_id))


@admin_only
@require_POST
def plan_delete(request, plan_id: int):
    plan = get_object_or_404(BackupPlan, pk=plan_id)
    audit.record(actor(request), "backup_plan.delete", plan, name=plan.name)
    plan.delete()
    messages.success(request, _("Backup plan “%(name)s” deleted.") % {"name": plan.name})
    return redirect("ui:admin-backups")


@admin_only
@require_POST
def plan_run(request, plan_id: int):
    from backup.schedules import run_plan

    plan = get_object_or_404(BackupPlan, pk=plan_id)
    audit.record(actor(request), "backup_plan.run", plan)
    messages.success(request, _("Backup plan “%(name)s”: %(summary)s") % {"name": plan.name,
                                                                          "summary": run_plan(plan.pk)})
    return redirect("ui:admin-backups")


@admin_only
@require_POST
def panel_backup(request):
    form = PanelBackupForm(request.POST)
    if not form.is_valid():
        messages.error(request, _("Choose an enabled target."))
        return redirect("ui:admin-backups")
    try:
        actions.request_panel_backup(actor(request), form.cleaned_data["target"])
    except Refused as refused:
        messages.error(request, refused.message)
    else:
        messages.success(request, _("Panel backup requested."))
    return redirect("ui:admin-backups")


@admin_only
@require_POST
def restore_as_new(request, backup_id: int):
    backup = get_object_or_404(Backup, pk=backup_id)
    try:
        server, _op = actions.restore_as_new_server(actor(request), backup.pk,
                                                    hostname=request.POST.get("hostname", "").strip())
    except Refused as refused:
        messages.error(request, refused.message)
        return redirect(reverse("ui:server", args=[backup.server_id]) + "#backups" if backup.server_id
                        else reverse("ui:admin-backups"))
    messages.success(request, _("Restore of backup #%(id)s as “%(name)s” requested.") % {"id": backup.pk,
                                                                                       "name": server.hostname})
    return redirect("ui:server", server_id=server.pk)


# --- the server page's backups card ----------------------------------------------------------

def server_backups(server: VirtualServer, act: Actor) -> dict:
    """The server page's context for ui/_server_backups.html."""
    return {
        "backups": list(act.restrict(Backup.objects.select_related("target", "parent")).filter(
            server_uuid=server.uuid).order_by("-id")[:20]),
        "backups_included": act.acts_for_all_customers or server.plan.backups > 0,
        "backup_targets": list(BackupTarget.objects.filter(enabled=True)) if act.is_admin else [],
    }


@require_POST
@login_required
def server_backup(request, server_id: int):
    act = actor(request)
    server = act.get_or_404(VirtualServer.objects.all(), pk=server_id)
    target = None
    if act.is_admin and request.POST.get("target", "").isdigit():
        target = BackupTarget.objects.filter(pk=int(request.POST["target"])).first()
    try:
        actions.request_backup(act, server.pk, target=target)
    except Refused as refused:
        messages.error(request, refused.message)
    else:
        messages.success(request, _("Backup requested."))
    return redirect(reverse("ui:server", args=[server.pk]) + "#backups")


@require_POST
@login_required
def server_restore(request, server_id: int):
    """Overwrite the server's disk with one of its backups, once its hostname is typed."""
    act = actor(request)
    server = act.get_or_404(VirtualServer.objects.all(), pk=server_id)
    form = RestoreForm(request.POST, server=server)
    if not form.is_valid():
        for errors in form.errors.values():
            for error in errors:
                messages.error(request, error)
    else:
        try:
            actions.request_restore(act, server.pk, form.cleaned_data["backup"])
        except Refused as refused:
            messages.error(request, refused.message)
        else:
            messages.success(request, _("Restore of “%(name)s” requested.") % {"name": server.hostname})
    return redirect(reverse("ui:server", args=[server.pk]) + "#backups")

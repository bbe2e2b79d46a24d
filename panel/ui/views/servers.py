"""Server pages shared by customers and admins: every object through the Actor."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.cache import add_never_cache_headers
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from backup.models import Backup
from panel.crypto import decrypt, encrypt
from panel.refusals import Refused
from panel.ui import live
from panel.ui.forms import ReinstallForm, SuspendForm
from panel.ui.views.backups import server_backups
from panel.ui.views.isos import server_isos
from panel.ui.views.snapshots import server_snapshots
from panel.ui.views.common import actor, paginate
from panel.ui.views.address_card import server_addresses
from panel.vps import lifecycle
from recipes import sealing
from panel.vps.models import Operation, Plan, ServerState, VirtualServer

# A new root password waits in the session (encrypted) for the next load of the server's page,
# which takes it out: shown once, never in a URL, a message or the audit log.
PASSWORD_KEY = "ui-root-password-{}"
SECRET_PARAMETER = ("password", "secret", "token", "passphrase")


def remember_password(request, server_id: int, password: str) -> None:
    request.session[PASSWORD_KEY.format(server_id)] = encrypt(password)


def pop_password(request, server_id: int) -> str:
    stored = request.session.pop(PASSWORD_KEY.format(server_id), None)
    return decrypt(stored) if stored else ""


def deletable_backups_count(server: VirtualServer, act) -> int:
    """How many finished backups of `server` the actor sees: the delete form offers to keep them
    (they stay restorable as a new server), as the API's DELETE ?keep_backups=1 does."""
    return act.restrict(Backup.objects.all()).filter(server=server, status=Backup.Status.DONE).count()


def wants_kept_backups(request) -> bool:
    """The delete form's "keep backups" checkbox (also 1/true, like the API's query parameter)."""
    return request.POST.get("keep_backups", "").lower() in ("1", "true", "on")


def latest_installation(server: VirtualServer) -> dict | None:
    """The server's latest install for its page: a parameter the recipe declares secret only as
    set or not set; one that merely looks secret is masked too."""
    installation = server.installations.select_related("template", "recipe").first()
    if installation is None:
        return None
    values, secrets = sealing.shown(installation.recipe_params, installation.recipe)
    params = [(name, "••••••" if any(word in name.lower() for word in SECRET_PARAMETER) else value)
              for name, value in values.items()]
    params += [(name, _("(secret, set)") if is_set else _("(secret, not set)")) for name, is_set in secrets.items()]
    return {"install": installation, "params": sorted(params)}


@login_required
def server_list(request):
    act = actor(request)
    servers = act.restrict(VirtualServer.objects.select_related("plan", "node", "customer"))
    state = request.GET.get("state", "")
    if state in ServerState.values:
        servers = servers.filter(state=state)
    return render(request, "ui/server_list.html", {
        "page": paginate(request, servers.order_by("id")), "states": ServerState.choices, "state": state,
    })


@login_required
def server_detail(request, server_id: int):
    act = actor(request)
    server = act.get_or_404(VirtualServer.objects.select_related("plan", "node", "customer", "os_template"),
                            pk=server_id)
    return render_server_detail(request, server)


def render_server_detail(request, server: VirtualServer, status: int = 200, ptr_forms: dict | None = None,
                         add_form=None, reinstall_form=None):
    """The server page; the address and reinstall views render it again with their bound forms' errors."""
    act = actor(request)
    password = pop_password(request, server.pk)
    reinstallable = server.state in lifecycle.REINSTALLABLE
    if reinstall_form is None and reinstallable:
        reinstall_form = ReinstallForm(server=server)
    # Each as its viewer may see it: a customer gets the customer's log, error and requested_by.
    operations = [op.seen_by(act.is_admin) for op in Operation.objects.filter(server=server).order_by("-id")[:10]]
    snap = live.snapshot(server, act, operations[0] if operations else None)
    buttons = {
        name: {"action": action, "enabled": action.kind in snap["actions"] and not snap["busy"]}
        for name, action in lifecycle.ACTIONS.items()
        if act.acts_for_all_customers or not action.provider_only
    }
    response = render(request, "ui/server_detail.html", {
        "server": server, "operations": operations, "snap": snap, "buttons": buttons, "is_admin": act.is_admin,
        "delete_backups_count": deletable_backups_count(server, act) if "delete" in buttons else 0,
        "root_password": password, "installation": latest_installation(server),
        "plans": list(Plan.objects.order_by("disk_gib", "vcpus", "ram_mib")) if act.is_admin else [],
        "reinstall_form": reinstall_form if reinstallable or (reinstall_form and reinstall_form.is_bound) else None,
        **server_addresses(server, act, ptr_forms=ptr_forms, add_form=add_form),
        **server_backups(server, act),
        **server_isos(server, act),
        **server_snapshots(server, act),
        "js_i18n": {
            "offline": _("Live updates are unavailable; reload the page to see changes."),
            "deleted": _("This server has been deleted."),
            "noOperations": _("No operations yet."),
            "noReason": _("no reason given"),
        },
    }, status=status)
    if password:
        add_never_cache_headers(response)  # Cache-Control: no-store, among others
    return response


@require_POST
@login_required
def server_action(request, server_id: int, action: str):
    act = actor(request)
    server = act.get_or_404(VirtualServer.objects.all(), pk=server_id)
    chosen = lifecycle.ACTIONS.get(action)
    if chosen is None:
        raise Http404
    kind, params = chosen.kind, dict(chosen.params)
    if kind == "suspend":
        form = SuspendForm(request.POST)
        params["reason"] = form.cleaned_data["reason"] if form.is_valid() else ""
    elif kind == "delete":
        params["keep_backups"] = wants_kept_backups(request)  # the API's DELETE ?keep_backups=1
    wants_json = request.headers.get("X-Requested-With") == "XMLHttpRequest"
    try:
        op = lifecycle.request_action(act, server.pk, kind, params)
    except Refused as refused:
        if wants_json:
            return JsonResponse({"ok": False, "message": refused.message, "code": refused.code},
                                status=refused.status)
        messages.error(request, refused.message)
    else:
        if wants_json:
            # The page stays open (and keeps its websocket); it shows the queued operation now.
            current = VirtualServer.objects.filter(pk=server.pk).first()
            return JsonResponse({
                "ok": True, "message": chosen.requested,
                "snapshot": live.snapshot(current, act) if current else live.deleted_snapshot(op, act),
            })
        messages.success(request, chosen.requested)
    if kind == "delete" and not VirtualServer.objects.filter(pk=server.pk).exists():
        return redirect("ui:admin-servers" if act.is_admin else "ui:servers")
    return redirect("ui:server", server_id=server.pk)


@login_required
def server_reinstall(request, server_id: int):
    """Install the OS again (the owner's users and admins): the user types the hostname to confirm."""
    act = actor(request)
    server = act.get_or_404(VirtualServer.objects.select_related("plan", "node", "customer", "os_template"),
                            pk=server_id)
    if request.method != "POST":
        return redirect(reverse("ui:server", args=[server.pk]) + "#reinstall")
    form = ReinstallForm(request.POST, server=server)
    if form.is_valid():
        try:
            _op, password = lifecycle.request_reinstall(act, server.pk, **form.install_args())
        except Refused as refused:
            form.add_error(refused.field if refused.field in form.fields else None, refused.message)
        else:
            remember_password(request, server.pk, password)
            messages.success(request, _("Reinstall of “%(name)s” requested.") % {"name": server.hostname})
            return redirect("ui:server", server_id=server.pk)
    return render_server_detail(request, server, status=400, reinstall_form=form)


@login_required
def operation_detail(request, operation_id: int):
    act = actor(request)
    op = act.get_or_404(Operation.objects.select_related("server", "customer", "node"), pk=operation_id)
    return render(request, "ui/operation_detail.html", {"op": op.seen_by(act.is_admin), "is_admin": act.is_admin})


@require_POST
@login_required
def server_billing_action(request, server_id: int, action: str):
    """The admins' "Change plan" form and the "Reset root password" button (owner and admins);
    a new password waits in the session for the next load of the page, like after a reinstall."""
    act = actor(request)
    server = act.get_or_404(VirtualServer.objects.all(), pk=server_id)
    try:
        if action == "change-plan":
            chosen = request.POST.get("plan", "")
            plan = Plan.objects.filter(pk=chosen).first() if chosen.isdigit() else None
            if plan is None:
                raise Refused(_("Choose a plan."), "invalid", 400, field="plan")
            op = lifecycle.request_plan_change(act, server.pk, plan)
            op.refresh_from_db()
            if op.status == Operation.Status.FAILED:
                messages.error(request, _("The plan change failed: %(error)s") % {"error": op.error})
            else:
                messages.success(request, _("Plan change to “%(plan)s” requested.") % {"plan": plan.name})
        elif action == "reset-password":
            op, password = lifecycle.request_password_reset(act, server.pk)
            op.refresh_from_db()
            if op.status == Operation.Status.FAILED:
                messages.error(request, _("The password was not changed: %(error)s") % {"error": op.error})
            else:
                remember_password(request, server.pk, password)
                messages.success(request, _("Password reset requested: it takes effect once the operation "
                                            "succeeds (the server's guest agent sets it)."))
        else:
            raise Http404
    except Refused as refused:
        messages.error(request, refused.message)
    return redirect("ui:server", server_id=server.pk)

"""The live state of a server as the browser sees it: one shape for the page and the websocket."""

from django.utils.translation import pgettext_lazy

from panel.accounts.tenancy import Actor
from panel.vps import lifecycle
from panel.vps.models import Operation, ServerState, VirtualServer

# Operation statuses in words that fit an operation ("Running" is also a server state, which
# Russian words differently).
OPERATION_STATUS_LABELS = {
    Operation.Status.QUEUED: pgettext_lazy("operation status", "Queued"),
    Operation.Status.RUNNING: pgettext_lazy("operation status", "Running"),
    Operation.Status.SUCCEEDED: pgettext_lazy("operation status", "Succeeded"),
    Operation.Status.FAILED: pgettext_lazy("operation status", "Failed"),
}


def status_label(status: str) -> str:
    return str(OPERATION_STATUS_LABELS.get(status, status))




def operation_data(op: Operation | None, admin: bool = False) -> dict | None:
    """The operation for the page: its customer's log line and error unless `admin` watches."""
    if op is None:
        return None
    op = op.seen_by(admin)
    return {
        "id": op.id,
        "kind": op.kind,
        "kind_label": str(op.get_kind_display()),
        "status": op.status,
        "status_label": status_label(op.status),
        "progress": op.progress,
        "error": op.error,
        "log_tail": op.log.splitlines()[-1] if op.log else "",
        "active": op.is_active,
    }


def latest_operation(server: VirtualServer) -> Operation | None:
    return Operation.objects.filter(server=server).order_by("-id").first()


def snapshot(server: VirtualServer, actor: Actor, op: Operation | None = None) -> dict:
    """What the browser needs: state, latest operation and the actions allowed now."""
    if op is None:
        op = latest_operation(server)
    return {
        "state": server.state,
        "state_label": str(server.get_state_display()),
        "suspend_reason": server.suspend_reason if server.state == ServerState.SUSPENDED else "",
        "operation": operation_data(op, actor.is_admin),
        "actions": lifecycle.allowed_actions(server, actor),
        # While an operation runs every request is refused; the page disables its buttons.
        "busy": bool(op and op.is_active),
    }


def deleted_snapshot(op: Operation | None, actor: Actor | None = None) -> dict:
    from django.utils.translation import gettext as _

    return {
        "state": "deleted",
        "state_label": _("Deleted"),
        "suspend_reason": "",
        "operation": operation_data(op, actor is not None and actor.is_admin),
        "actions": [],
        "busy": False,
    }

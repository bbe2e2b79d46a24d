"""Live progress: operation changes are pushed to websocket subscribers.

With Redis (REDIS_URL) the worker's messages reach the web process through the channel
layer; without it, the consumer polls the row instead (panel/ui/consumers.py), so the
browser sees the same stream either way.
"""

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings

log = logging.getLogger(__name__)


def server_group(server_id: int) -> str:
    return f"server-{server_id}"


def _last_line(log: str) -> str:
    return log.splitlines()[-1] if log else ""


def operation_payload(op) -> dict:
    """What every watcher of the server gets: the customer's error and log line, with the
    admins' under "admin" (the consumer picks by who watches; panel/ui/consumers.py)."""
    return {
        "id": op.id,
        "kind": op.kind,
        "status": op.status,
        "progress": op.progress,
        "error": op.customer_error,
        "server": op.server_id,
        "log_tail": _last_line(op.customer_log),
        "admin": {"error": op.error, "log_tail": _last_line(op.log)},
    }


def publish(op, server_state: str | None = None) -> None:
    if not settings.REDIS_URL or op.server_id is None:
        return
    try:
        layer = get_channel_layer()
        async_to_sync(layer.group_send)(
            server_group(op.server_id),
            {"type": "server.update", "operation": operation_payload(op), "state": server_state},
        )
    except Exception:  # progress is best effort; the operation row is the truth
        log.warning("could not publish progress of operation %s", op.id, exc_info=True)

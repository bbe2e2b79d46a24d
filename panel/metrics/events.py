"""A server's events for the graphs' markers: its operations (reboot, migration, resize, backup…)
and its traffic throttles, between two moments.

Each event is `{"t": epoch seconds, "kind": str, "label": str}`. Labels name the action and
its outcome only, never a node, a storage or an admin: customers read them too.
"""

import datetime as dt

from django.db.models import Q
from django.db.models.functions import Coalesce
from django.utils.translation import gettext as _

from panel.usage.models import UsageState
from panel.vps.models import Operation

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# The marker's kind where it differs from the operation's (the words).
KIND = {Operation.Kind.MIGRATE: "migration", Operation.Kind.CHANGE_PLAN: "resize"}
# Operations that say nothing about the server's load are left off the graphs.
QUIET = {Operation.Kind.RESET_PASSWORD, Operation.Kind.NETWORK_UPDATE, Operation.Kind.OVA_EXPORT}
# Bounds what one graph can carry (a server rebooted by a script every minute for a year).
LIMIT = 1000


def _epoch(moment: dt.datetime) -> int:
    return int((moment - EPOCH).total_seconds())


def server_events(server_id: int, start: dt.datetime, end: dt.datetime) -> list[dict]:
    """The server's events in [start, end), oldest first: two queries, at most LIMIT of each."""
    events = []
    ops = (Operation.objects.filter(server_id=server_id).exclude(kind__in=QUIET)
           .annotate(at=Coalesce("started_at", "created_at")).filter(at__gte=start, at__lt=end)
           .order_by("at").values_list("at", "kind", "status")[:LIMIT])
    labels = dict(Operation.Kind.choices)
    statuses = dict(Operation.Status.choices)
    for at, kind, status in ops:
        label = str(labels.get(kind, kind))
        if status != Operation.Status.SUCCEEDED:
            label = f"{label} ({str(statuses.get(status, status)).lower()})"
        events.append({"t": _epoch(at), "kind": KIND.get(kind, kind), "label": label})
    states = UsageState.objects.filter(server_id=server_id).filter(
        Q(throttled_at__gte=start, throttled_at__lt=end) | Q(lifted_at__gte=start, lifted_at__lt=end)).values_list(
        "throttled_at", "lifted_at").order_by()[:LIMIT]
    for throttled_at, lifted_at in states:
        if throttled_at and start <= throttled_at < end:
            events.append({"t": _epoch(throttled_at), "kind": "throttle",
                           "label": _("Traffic quota used: bandwidth reduced")})
        if lifted_at and start <= lifted_at < end:
            events.append({"t": _epoch(lifted_at), "kind": "unthrottle", "label": _("Bandwidth restored")})
    events.sort(key=lambda e: e["t"])
    return events

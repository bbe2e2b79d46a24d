"""What each kind of rule measures, its default thresholds, and the built-in rules' seeding.

Every kind has a reader: `observe(rule, sources)` returns one `Observation` (a target and the
value measured on it) per target that has data now. Which values breach, and when an alert
opens and closes, is the evaluation's (panel/alerts/evaluation.py), the same for all kinds.
The readers take everything from `Sources`, which loads each kind of data once per
evaluation in one or two queries, whatever the number of rules, servers or nodes.
"""

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property

from django.db.models import Max, Sum, TextField
from django.db.models.functions import Cast
from django.utils.translation import gettext_lazy as _

from panel.alerts.forecast import days_to_full
from panel.alerts.kinds import ABOVE, DEFAULTS, DIRECTION, UNITS, Kind
from panel.alerts.models import Alert, Rule

# What a kind's alert says; %(subject)s and %(value)s (formatted with its unit) filled in.
TEXT = {
    Kind.NODE_OFFLINE: _("Node %(subject)s has not answered the collector for %(value)s."),
    Kind.COLLECTOR_STALE: _("The monitoring collector has not read any node for %(value)s."),
    Kind.STORAGE_FULL: _("Storage %(subject)s is %(value)s full."),
    Kind.STORAGE_FORECAST: _("Storage %(subject)s will be full in %(value)s at its current rate."),
    Kind.NODE_MEMORY: _("Node %(subject)s has only %(value)s of its memory available."),
    Kind.SERVER_CPU: _("%(subject)s uses %(value)s of its CPU."),
    Kind.SERVER_STEAL: _("%(subject)s waits %(value)s of the time for the host's CPU (steal)."),
    Kind.SERVER_MEMORY: _("%(subject)s uses %(value)s of its memory."),
    Kind.GUEST_FS: _("The filesystem %(subject)s is %(value)s full."),
    Kind.TRAFFIC_QUOTA: _("%(subject)s has used %(value)s of this month's traffic."),
    Kind.BACKUP_FAILED: _("The last backup of %(subject)s failed."),
    Kind.BACKUP_MISSING: _("%(subject)s has not been backed up for %(value)s longer than its schedule allows."),
}
# The trend of a storage's use is fitted over this long (hourly averages).
FORECAST_WINDOW = dt.timedelta(days=3)
# Gauges older than this are not read (the collector writes one a minute; a missed minute is fine).
FRESH = dt.timedelta(minutes=3)
# Guest filesystems are read every 15 minutes (collect_filesystems).
FS_FRESH = dt.timedelta(minutes=20)


def direction(kind: str) -> str:
    return DIRECTION.get(kind, ABOVE)


def unit(kind: str) -> str:
    return UNITS.get(kind, "%")


def format_value(kind: str, value: float | None) -> str:
    if value is None:
        return "—"
    u = unit(kind)
    if u == "%":
        return f"{value:.1f} %" if value < 10 else f"{value:.0f} %"
    if u == "days":
        return f"{value:.1f} days"
    return f"{value:.0f} {u}".strip()


def ensure_builtin_rules() -> int:
    """Create the built-in rules that are missing (idempotent; admins' changes are kept).
    Returns how many were created."""
    have = set(Rule.objects.filter(customer__isnull=True).values_list("builtin", flat=True))
    new = [Rule(kind=kind, builtin=kind, warning=w, critical=c, for_minutes=f, margin=m, resolve_after=r,
                notify_customer=n)
           for kind, (w, c, f, m, r, n) in DEFAULTS.items() if kind not in have]
    Rule.objects.bulk_create(new)
    return len(new)


@dataclass
class Observation:
    """A target's value now. `key` tells targets apart within a rule (a server's mount points);
    `customer_id` is the server's owner (who may see the alert, when the rule lets them)."""

    target_kind: str
    target_id: int
    key: str
    value: float
    subject: str
    customer_id: int | None = None
    server_id: int | None = None
    labels: dict = field(default_factory=dict)


class Sources:
    """Everything the readers need, each loaded on first use, once per evaluation."""

    def __init__(self, now: dt.datetime):
        self.now = now

    @cached_property
    def servers(self) -> dict[int, dict]:
        from panel.vps.models import ServerState, VirtualServer

        rows = VirtualServer.objects.exclude(state=ServerState.DELETING).values(
            "id", "hostname", "customer_id", "state", "created_at", "plan__traffic_gib")
        return {row["id"]: row for row in rows}

    def _latest(self, kind: str, within: dt.timedelta = FRESH) -> dict[int, dict]:
        from panel.metrics import store

        return {target: data for target, (_start, data, _gap) in store.latest(kind, None, within, self.now).items()
                if data}

    @cached_property
    def server_latest(self) -> dict[int, dict]:
        return self._latest("server")

    @cached_property
    def node_latest(self) -> dict[int, dict]:
        return self._latest("node")

    @cached_property
    def storage_latest(self) -> dict[int, dict]:
        return self._latest("storage")

    @cached_property
    def nodes(self) -> dict[int, str]:
        from nodes.models import Node

        return dict(Node.objects.exclude(state=Node.State.INSTALLING).values_list("id", "name"))

    @cached_property
    def readings(self) -> dict[int, tuple]:
        from panel.metrics.models import NodeReading

        return {r.node_id: (r.tried_at, r.ok_at, r.error) for r in NodeReading.objects.all()}

    @cached_property
    def storages(self) -> dict[int, str]:
        from nodes.models import Storage

        return {pk: f"{cluster}/{name}" for pk, name, cluster in
                Storage.objects.values_list("id", "name", "cluster__name")}

    @cached_property
    def filesystems(self) -> dict[int, dict]:
        """Server id → the newest guest filesystem figures {mount: (used, size)} inside FS_FRESH."""
        from panel.metrics import store
        from panel.metrics.models import MetricBucket

        rows = (MetricBucket.objects.filter(kind="server", step=store.finest_step(), start__gte=self.now - FS_FRESH)
                .annotate(text=Cast("data", TextField())).filter(text__contains='"fs.')
                .order_by("start").values_list("target_id", "data"))
        out: dict[int, dict] = {}
        for target_id, data in rows:
            mounts = defaultdict(dict)
            for name, (total, count, _peak) in data.items():
                if name.startswith("fs.") and count:
                    mount, _, what = name[3:].rpartition(".")
                    mounts[mount][what] = total / count
            found = {m: (v["used"], v["size"]) for m, v in mounts.items() if "used" in v and v.get("size")}
            if found:
                out[target_id] = found  # newer rows replace older ones
        return out

    @cached_property
    def traffic(self) -> dict[int, int]:
        """Server id → bytes in and out this month (billing's hourly buckets)."""
        from panel.usage.collector import hour_of, month_start
        from panel.usage.models import UsageHour

        rows = (UsageHour.objects.filter(hour__gte=hour_of(month_start(self.now)), server__plan__traffic_gib__gt=0)
                .values("server_id").annotate(rx=Sum("rx_bytes"), tx=Sum("tx_bytes")))
        return {row["server_id"]: (row["rx"] or 0) + (row["tx"] or 0) for row in rows}

    @cached_property
    def backups(self) -> dict:
        """{"last": {server id: status of its newest finished backup}, "good": {server id: newest
        good backup's time}, "plans": [(plan, servers in scope, seconds between its runs)],
        "panel": {plan id: (status, time of newest, time of newest good)}}."""
        from croniter import croniter

        from backup.models import Backup, BackupPlan

        finished = Backup.objects.exclude(status=Backup.Status.RUNNING)
        newest = finished.filter(server__isnull=False).values("server_id").annotate(last=Max("id"))
        last = dict(Backup.objects.filter(id__in=[row["last"] for row in newest]).values_list("server_id", "status"))
        good = dict(Backup.objects.filter(status=Backup.Status.DONE, server__isnull=False).values("server_id")
                    .annotate(at=Max("created_at")).values_list("server_id", "at"))
        plans, panel = [], {}
        for plan in BackupPlan.objects.filter(enabled=True):
            try:
                runs = croniter(plan.schedule, self.now - dt.timedelta(days=40))
                first = runs.get_next(dt.datetime)
                period = (runs.get_next(dt.datetime) - first).total_seconds()
            except (ValueError, KeyError):
                continue
            if plan.scope == BackupPlan.Scope.PANEL:
                rows = Backup.objects.filter(kind=Backup.Kind.PANEL, plan=plan).exclude(status=Backup.Status.RUNNING)
                newest_row = rows.order_by("-id").values_list("status", "created_at").first()
                good_at = rows.filter(status=Backup.Status.DONE).aggregate(at=Max("created_at"))["at"]
                panel[plan.id] = (plan.name, period, newest_row, good_at, plan.created_at)
            else:
                plans.append((plan, set(plan.servers_in_scope().values_list("id", flat=True)), period))
        return {"last": last, "good": good, "plans": plans, "panel": panel}


# -- the readers -----------------------------------------------------------------------------

def _servers_of(rule: Rule, sources: Sources) -> dict[int, dict]:
    """The servers a rule watches: all (built-in) or the customer's own, or the one it names."""
    servers = sources.servers
    if rule.server_id is not None:
        row = servers.get(rule.server_id)
        return {rule.server_id: row} if row and (rule.customer_id is None or row["customer_id"] == rule.customer_id) \
            else {}
    if rule.customer_id is not None:
        return {pk: row for pk, row in servers.items() if row["customer_id"] == rule.customer_id}
    return servers


def _server_obs(server: dict, value: float, key_extra: str = "", **labels) -> Observation:
    key = f"server:{server['id']}{key_extra}"
    return Observation(Alert.Target.SERVER, server["id"], key, value, server["hostname"],
                       customer_id=server["customer_id"], server_id=server["id"],
                       labels={"server": server["hostname"], "server_id": str(server["id"]), **labels})


def _node_offline(rule, sources):
    out = []
    for node_id, name in sources.nodes.items():
        reading = sources.readings.get(node_id)
        if reading is None:
            continue  # never tried: the collector has not run since it was added
        tried_at, ok_at, error = reading
        since = ok_at or tried_at
        minutes = max(0.0, (sources.now - since).total_seconds() / 60)
        obs = Observation(Alert.Target.NODE, node_id, f"node:{node_id}", minutes, name,
                          labels={"node": name, "reason": error or ""})
        out.append(obs)
    return out


def _collector_stale(rule, sources):
    tried = [r[0] for r in sources.readings.values() if r[0] is not None]
    if not tried or not sources.nodes:
        return []
    minutes = max(0.0, (sources.now - max(tried)).total_seconds() / 60)
    return [Observation(Alert.Target.PANEL, 0, "panel:collector", minutes, "collector")]


def _storage_full(rule, sources):
    out = []
    for storage_id, data in sources.storage_latest.items():
        capacity, used = _avg(data, "capacity"), _avg(data, "used")
        if capacity and used is not None and storage_id in sources.storages:
            name = sources.storages[storage_id]
            out.append(Observation(Alert.Target.STORAGE, storage_id, f"storage:{storage_id}", 100 * used / capacity,
                                   name, labels={"storage": name}))
    return out


def _storage_forecast(rule, sources):
    from panel.metrics import store

    out = []
    for storage_id, data in sources.storage_latest.items():
        capacity, used = _avg(data, "capacity"), _avg(data, "used")
        if not capacity or used is None or storage_id not in sources.storages:
            continue
        # A handful of storages: one read each (hourly averages of the last days).
        series = store.read("storage", storage_id, sources.now - FORECAST_WINDOW, sources.now, ["used"],
                            max_points=100, now=sources.now)
        days = days_to_full(series["t"], series["series"]["used"]["avg"], capacity, now_used=used)
        if days is not None:
            name = sources.storages[storage_id]
            out.append(Observation(Alert.Target.STORAGE, storage_id, f"storage:{storage_id}", days, name,
                                   labels={"storage": name}))
    return out


def _node_memory(rule, sources):
    out = []
    for node_id, data in sources.node_latest.items():
        avail, total = _avg(data, "mem_avail"), _avg(data, "mem_total")
        if total and avail is not None and node_id in sources.nodes:
            name = sources.nodes[node_id]
            out.append(Observation(Alert.Target.NODE, node_id, f"node:{node_id}", 100 * avail / total, name,
                                   labels={"node": name}))
    return out


def _server_gauge(name: str):
    def read(rule, sources):
        out = []
        for server_id, server in _servers_of(rule, sources).items():
            value = _avg(sources.server_latest.get(server_id, {}), name)
            if value is not None:
                out.append(_server_obs(server, value))
        return out
    return read


def _server_memory(rule, sources):
    out = []
    for server_id, server in _servers_of(rule, sources).items():
        data = sources.server_latest.get(server_id, {})
        used, total = _avg(data, "mem_used"), _avg(data, "mem_total")
        if used is not None and total:
            out.append(_server_obs(server, 100 * used / total))
    return out


def _guest_fs(rule, sources):
    out = []
    for server_id, server in _servers_of(rule, sources).items():
        for mount, (used, size) in sorted(sources.filesystems.get(server_id, {}).items()):
            obs = _server_obs(server, 100 * used / size, f":{mount}", mount=mount)
            obs.subject = f"{server['hostname']}:{mount}"
            out.append(obs)
    return out


def _traffic(rule, sources):
    out = []
    for server_id, server in _servers_of(rule, sources).items():
        quota = (server["plan__traffic_gib"] or 0) * 2**30
        if quota:
            out.append(_server_obs(server, 100 * sources.traffic.get(server_id, 0) / quota))
    return out


def _backup_failed(rule, sources):
    backups = sources.backups
    watched = set().union(*(ids for _plan, ids, _period in backups["plans"])) if backups["plans"] else set()
    out = []
    for server_id, server in _servers_of(rule, sources).items():
        status = backups["last"].get(server_id)
        if status is not None and (server_id in watched or status == "failed"):
            out.append(_server_obs(server, 1.0 if status == "failed" else 0.0))
    for plan_id, (name, _period, newest, _good_at, _created) in backups["panel"].items():
        if newest is not None:
            out.append(Observation(Alert.Target.BACKUP_PLAN, plan_id, f"backup_plan:{plan_id}",
                                   1.0 if newest[0] == "failed" else 0.0, str(_("the panel (plan %(name)s)") % {
                                       "name": name}), labels={"backup_plan": name}))
    return out


def _backup_missing(rule, sources):
    """Hours past what the schedule allows (one period between the plan's runs) since the
    newest good backup; servers younger than that are not counted as missing one."""
    backups, now = sources.backups, sources.now
    period_of: dict[int, float] = {}
    for _plan, ids, period in backups["plans"]:
        for server_id in ids:
            period_of[server_id] = min(period, period_of.get(server_id, period))
    out = []
    for server_id, server in _servers_of(rule, sources).items():
        period = period_of.get(server_id)
        if period is None:
            continue
        since = backups["good"].get(server_id) or server["created_at"]
        out.append(_server_obs(server, max(0.0, ((now - since).total_seconds() - period) / 3600)))
    for plan_id, (name, period, _newest, good_at, created) in backups["panel"].items():
        since = good_at or created
        out.append(Observation(Alert.Target.BACKUP_PLAN, plan_id, f"backup_plan:{plan_id}",
                               max(0.0, ((now - since).total_seconds() - period) / 3600),
                               str(_("the panel (plan %(name)s)") % {"name": name}), labels={"backup_plan": name}))
    return out


def _avg(data: dict, name: str) -> float | None:
    triple = data.get(name)
    if not triple or not triple[1]:
        return None
    return triple[0] / triple[1]


READERS = {
    Kind.NODE_OFFLINE: _node_offline,
    Kind.COLLECTOR_STALE: _collector_stale,
    Kind.STORAGE_FULL: _storage_full,
    Kind.STORAGE_FORECAST: _storage_forecast,
    Kind.NODE_MEMORY: _node_memory,
    Kind.SERVER_CPU: _server_gauge("cpu"),
    Kind.SERVER_STEAL: _server_gauge("steal"),
    Kind.SERVER_MEMORY: _server_memory,
    Kind.GUEST_FS: _guest_fs,
    Kind.TRAFFIC_QUOTA: _traffic,
    Kind.BACKUP_FAILED: _backup_failed,
    Kind.BACKUP_MISSING: _backup_missing,
}


def observe(rule: Rule, sources: Sources) -> list[Observation]:
    """What `rule` sees now: one Observation per target with data."""
    return READERS[rule.kind](rule, sources)


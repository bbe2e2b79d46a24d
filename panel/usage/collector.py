"""Reading the servers' counters into usage (every minute) and the traffic quota.

The worker's minute is the monitoring collector's (panel/metrics/collector.py): it reads each
node once and hands every server's counters to `sample_many()`, then calls `settle()`.
`collect_all()` reads every running server's counters itself, one driver (connection) per node;
a node that fails is skipped with a log line (kept for schedules stored by older versions).
"""

import datetime as dt
import logging

from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from nodes.connection import driver_for
from nodes.driver import DomainStats, Driver, DriverError
from panel.ipam.addressing import domain_nics
from panel.upsert import upsert
from panel.usage.models import COUNTERS, SUMS, UsageHour, UsageSample, UsageState, UsageTotal
from panel.vps.models import ServerState, VirtualServer

log = logging.getLogger(__name__)

GIB = 1024**3
SAMPLE_KEEP = dt.timedelta(days=1)
# After a new boot we do not know when it started: count at most this much uptime before it.
NEW_BOOT_UPTIME = dt.timedelta(minutes=1)


def clock() -> dt.datetime:
    """Now (tests replace it)."""
    return timezone.now()


def month_start(moment: dt.datetime) -> dt.datetime:
    return moment.astimezone(dt.UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def hour_of(moment: dt.datetime) -> dt.datetime:
    return moment.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)


def deltas(total: UsageTotal, stats: DomainStats, node_id: int | None, now: dt.datetime) -> dict[str, int]:
    """What happened since the baseline on `total`. A reset (another boot or node, or a counter
    that went down) makes the delta the new raw value: never negative, nothing lost."""
    same_run = total.last_at is not None and total.last_boot_id == stats.boot_id and total.last_node_id == node_id
    out = {}
    for name in COUNTERS:
        new, last = getattr(stats, name), getattr(total, f"last_{name}")
        out[name] = new - last if same_run and new >= last else new
    if total.last_at is None or now <= total.last_at:
        out["uptime_seconds"] = 0
    elif same_run:
        out["uptime_seconds"] = int((now - total.last_at).total_seconds())
    else:
        out["uptime_seconds"] = int(min(now - total.last_at, NEW_BOOT_UPTIME).total_seconds())
    return out


def lock(server: VirtualServer) -> UsageTotal:
    """The server's totals row, locked for a read-and-record (inside the caller's transaction)."""
    UsageTotal.objects.get_or_create(server=server)
    return UsageTotal.objects.select_for_update().get(server=server)


def _add(total: UsageTotal, server: VirtualServer, stats: DomainStats, now: dt.datetime) -> tuple[dict, UsageSample]:
    """Apply one read to a locked totals row (saved by the caller): its deltas and its sample."""
    if total.last_at is not None and now < total.last_at:
        now = total.last_at  # a run that started before the last sample: time does not go back
    delta = deltas(total, stats, server.node_id, now)
    for name, value in delta.items():
        setattr(total, name, getattr(total, name) + value)
    for name in COUNTERS:
        setattr(total, f"last_{name}", getattr(stats, name))
    total.last_at, total.last_node_id, total.last_boot_id = now, server.node_id, stats.boot_id
    return delta, UsageSample(server=server, at=now, node_id=server.node_id, boot_id=stats.boot_id,
                              **{name: getattr(stats, name) for name in COUNTERS})


def _add_to_hours(hour: dt.datetime, by_server: dict[int, dict[str, int]]) -> None:
    """Add deltas to their servers' hour rows (whose totals rows the caller holds locked)."""
    by_server = {pk: delta for pk, delta in by_server.items() if any(delta.values())}
    if not by_server:
        return
    rows = {row.server_id: row for row in UsageHour.objects.filter(server_id__in=list(by_server), hour=hour)}
    for pk, delta in by_server.items():
        row = rows.setdefault(pk, UsageHour(server_id=pk, hour=hour))
        for name, value in delta.items():
            setattr(row, name, getattr(row, name) + value)
    upsert(list(rows.values()), list(SUMS), ["server", "hour"])


def sample(server: VirtualServer, driver: Driver | None, now: dt.datetime | None = None,
           stats: DomainStats | None = None, newest: bool = False) -> dict[str, int] | None:
    """Read `server`'s counters and add them to its totals and its hour; returns the deltas (None
    when the domain is not running). The read happens while the server's totals row is locked,
    so concurrent samplers (the minute's collector, a power action's hook) read and record in
    the same order: a sample read earlier is never recorded after a later one.

    With `stats` nothing is read here (see `sample_many`); `newest`: the caller read them
    holding `lock(server)` (a power action's last sample), so they are newer than anything
    recorded."""
    with transaction.atomic():
        total = lock(server)
        if stats is None:
            stats = driver.stats(server.domain_name)
        elif not newest and total.last_at is not None and now <= total.last_at:
            return None
        if stats is None:
            return None
        now = now or clock()
        delta, row = _add(total, server, stats, now)
        row.save()
        total.save()
        _add_to_hours(hour_of(row.at), {server.pk: delta})
    return delta


def sample_many(reads: list[tuple[VirtualServer, DomainStats]], now: dt.datetime) -> dict[int, dict[str, int] | None]:
    """Add reads made at or after `now` (the monitoring collector's one call per node, labelled
    with the time before it started) to their servers' totals and hours, in a few statements
    for all of them. A read not newer than a server's last recorded sample may have been made
    before it: it is dropped (None) and the next read counts what it had."""
    if not reads:
        return {}
    ids = sorted({server.pk for server, _ in reads})
    out: dict[int, dict[str, int] | None] = {}
    with transaction.atomic():
        UsageTotal.objects.bulk_create([UsageTotal(server_id=pk) for pk in ids], ignore_conflicts=True)
        totals = {t.server_id: t for t in UsageTotal.objects.select_for_update().filter(server_id__in=ids).order_by("pk")}
        rows, changed = [], []
        for server, stats in reads:
            total = totals[server.pk]
            if total.last_at is not None and now <= total.last_at:
                out[server.pk] = None  # a later read (a power action's) is recorded already
                continue
            out[server.pk], row = _add(total, server, stats, now)
            rows.append(row)
            changed.append(total)
        UsageSample.objects.bulk_create(rows, batch_size=500)
        upsert(changed, [*SUMS, "last_at", "last_node_id", "last_boot_id", *(f"last_{n}" for n in COUNTERS)],
               ["server"])
        _add_to_hours(hour_of(now), {pk: delta for pk, delta in out.items() if delta})
    return out


def collect_all(now: dt.datetime | None = None) -> dict:
    """Sample every running server, node by node; then apply and lift traffic quotas."""
    now = now or clock()
    servers = (VirtualServer.objects.filter(state=ServerState.RUNNING, node__isnull=False)
               .select_related("node", "plan").order_by("node_id", "id"))
    by_node: dict = {}
    for server in servers:
        by_node.setdefault(server.node, []).append(server)
    sampled, failed_nodes = 0, []
    for node, node_servers in by_node.items():
        driver = driver_for(node.uri)  # one (kept) connection per node
        for server in node_servers:
            try:
                if sample(server, driver, now) is not None:
                    sampled += 1
            except DriverError as exc:
                log.warning("usage: skipping node %s: %s", node, exc)
                failed_nodes.append(node.name)
                break
            except Exception:  # noqa: BLE001
                log.exception("usage: cannot sample %s", server)
    return {"sampled": sampled, "failed_nodes": failed_nodes, **settle(now)}


def settle(now: dt.datetime) -> dict:
    """After a round of samples: drop day-old samples, apply and lift traffic quotas."""
    UsageSample.objects.filter(at__lt=now - SAMPLE_KEEP).delete()
    return {"throttled": enforce_quotas(now), "lifted": lift_old_throttles(now)}


# -- traffic quota ---------------------------------------------------------------------------

def traffic_used(server: VirtualServer, since: dt.datetime, until: dt.datetime | None = None) -> int:
    rows = UsageHour.objects.filter(server=server, hour__gte=hour_of(since))
    if until is not None:
        rows = rows.filter(hour__lt=until)
    sums = rows.aggregate(rx=Sum("rx_bytes"), tx=Sum("tx_bytes"))
    return (sums["rx"] or 0) + (sums["tx"] or 0)


def quota_bytes(server: VirtualServer) -> int:
    """The plan's monthly traffic in bytes; 0 = unlimited."""
    return server.plan.traffic_gib * GIB


def _set_rate(server: VirtualServer, throttled: bool) -> tuple[int, int] | None:
    """Put the reduced (or the plan's) rate on the running server's NICs live. Returns where it
    was applied (node id, boot id), or None when the server is not running there."""
    driver = driver_for(server.node.uri)
    stats = driver.stats(server.domain_name)
    if stats is None:
        return None
    for nic in domain_nics(server, server.plan.throttled_mbit if throttled else None):
        driver.update_nic(server.domain_name, nic)
    return server.node_id, stats.boot_id


def enforce_quotas(now: dt.datetime) -> int:
    """Throttle (once a month) the running servers whose traffic this month is over their plan's;
    put the reduced rate back on those that rebooted or moved since. Returns how many were newly
    throttled."""
    from panel.events import emit

    start = month_start(now)
    newly = 0
    candidates = (VirtualServer.objects.filter(plan__traffic_gib__gt=0, node__isnull=False)
                  .exclude(state=ServerState.DELETING).select_related("plan", "node"))
    for server in candidates:
        quota = quota_bytes(server)
        state = UsageState.objects.filter(server=server, month=start.date()).first()
        try:
            if state is None or state.throttled_at is None:
                used = traffic_used(server, start)
                if used <= quota:
                    continue
                with transaction.atomic():
                    state, _ = UsageState.objects.get_or_create(server=server, month=start.date())
                    state = UsageState.objects.select_for_update().get(pk=state.pk)
                    if state.throttled_at is not None:
                        continue  # another collector was first
                    state.throttled_at, state.used_bytes, state.quota_bytes = now, used, quota
                    state.save()
                    emit("server.traffic_exceeded", customer_id=server.customer_id, server=server.id,
                         used_bytes=used, quota_bytes=quota, month=start.date().isoformat(),
                         throttled_mbit=getattr(server.plan, "throttled_mbit", 0) or 0)
                newly += 1
                log.info("usage: %s used %s of %s bytes this month: throttled", server, used, quota)
            if not state.throttled or not (getattr(server.plan, "throttled_mbit", 0) or 0):
                continue  # nothing to put on the NICs ("0 = unchanged")
            if server.state != ServerState.RUNNING:
                continue
            current = driver_for(server.node.uri).stats(server.domain_name)
            if current is None or (state.applied_node_id, state.applied_boot_id) == (server.node_id,
                                                                                      current.boot_id):
                continue
            applied = _set_rate(server, throttled=True)
            if applied:
                UsageState.objects.filter(pk=state.pk).update(applied_node_id=applied[0], applied_boot_id=applied[1])
        except (DriverError, OSError) as exc:
            log.warning("usage: cannot throttle %s: %s", server, exc)
    return newly


def lift_old_throttles(now: dt.datetime) -> int:
    """A new month: the servers throttled in an earlier one get their plan's rate back."""
    start = month_start(now).date()
    lifted = 0
    old = (UsageState.objects.filter(month__lt=start, throttled_at__isnull=False, lifted_at__isnull=True)
           .select_related("server__plan", "server__node"))
    for state in old:
        server = state.server
        # Still throttled this month (over again already): keep the reduced rate.
        if UsageState.objects.filter(server=server, month=start, throttled_at__isnull=False).exists():
            UsageState.objects.filter(pk=state.pk).update(lifted_at=now)
            continue
        try:
            if server.state == ServerState.RUNNING and server.node_id and state.applied_boot_id is not None:
                _set_rate(server, throttled=False)
        except (DriverError, OSError) as exc:
            log.warning("usage: cannot lift the throttle of %s (next run tries again): %s", server, exc)
            continue
        UsageState.objects.filter(pk=state.pk).update(lifted_at=now)
        lifted += 1
        log.info("usage: %s: new month, throttle lifted", server)
    return lifted


def usage_between(server: VirtualServer, since: dt.datetime, until: dt.datetime) -> dict[str, int]:
    """The sums of the server's hourly buckets from the hour of `since` up to `until`."""
    rows = UsageHour.objects.filter(server=server, hour__gte=hour_of(since), hour__lt=until)
    sums = rows.aggregate(**{name: Sum(name) for name in (*COUNTERS, "uptime_seconds")})
    return {name: value or 0 for name, value in sums.items()}

"""Writing samples into the finest tier, rolling them up into the coarser ones, pruning, reading.

Tiers come from `settings.METRICS_TIERS`: (step seconds, retention seconds), finest first. The
collector writes one `Point` per target per minute with `record()`; `rollup()` folds each tier's
finished buckets into the next, `prune()` drops what is older than a tier's retention. Both are
idempotent (a bucket is recomputed from the tier below, never added to) and catch up after a
pause from `RollupState`. `read()` answers a graph: it picks the finest tier that still holds the
range in at most `max_points` buckets.
"""

import datetime as dt
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from panel.metrics.models import GapReason, MetricBucket, RollupState
from panel.metrics.series import lookup
from panel.upsert import upsert

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# A minute's bucket is rolled up only this long after it ended: a collection that started
# before its end may still be writing it.
ROLLUP_LAG = dt.timedelta(minutes=2)
# Buckets of the coarser tier folded per query while catching up (bounds each query's rows).
ROLLUP_WINDOW_BUCKETS = 6


def tiers() -> list[tuple[int, int]]:
    return [(int(step), int(keep)) for step, keep in settings.METRICS_TIERS]


def finest_step() -> int:
    return tiers()[0][0]


def clock() -> dt.datetime:
    """Now (tests replace it)."""
    return timezone.now()


def floor(moment: dt.datetime, step: int) -> dt.datetime:
    seconds = int((moment - EPOCH).total_seconds())
    return EPOCH + dt.timedelta(seconds=seconds - seconds % step)


@dataclass
class Point:
    """One sample of one target: series name → value (a counter's delta since the last sample,
    or a gauge's value), and for counters the rate that delta makes over the sample's interval."""

    kind: str
    target_id: int
    values: dict[str, float] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)  # counters only: per second
    gap: str = ""  # a GapReason when there are no values


def merge(into: dict, other: dict) -> dict:
    """Fold the `[sum, n, max]` triples of `other` into `into` (in place; returned)."""
    for name, (total, count, peak) in other.items():
        if name in into:
            mine = into[name]
            into[name] = [mine[0] + total, mine[1] + count, max(mine[2], peak)]
        else:
            into[name] = [total, count, peak]
    return into


def _triples(point: Point) -> dict:
    out = {}
    for name, value in point.values.items():
        series = lookup(point.kind, name)
        peak = point.rates.get(name, 0.0) if series is not None and series.counter else value
        out[name] = [value, 1, peak]
    return out


def record(points: list[Point], at: dt.datetime | None = None) -> int:
    """Write `points` into the finest tier's bucket of `at`; a second sample in the same bucket
    is merged into it (a gap is replaced by data, never data by a gap). Returns rows written."""
    if not points:
        return 0
    step = finest_step()
    start = floor(at or clock(), step)
    with transaction.atomic():
        existing = {(row.kind, row.target_id): row for row in MetricBucket.objects.select_for_update().filter(
            step=step, start=start, kind__in={p.kind for p in points}, target_id__in={p.target_id for p in points})}
        new, changed = [], []
        for point in points:
            triples = _triples(point)
            row = existing.get((point.kind, point.target_id))
            if row is None:
                row = MetricBucket(kind=point.kind, target_id=point.target_id, step=step, start=start,
                                   data=triples, gap="" if triples else (point.gap or GapReason.COLLECTOR_FAILED))
                existing[(point.kind, point.target_id)] = row
                new.append(row)
            elif triples:
                row.data, row.gap = merge(row.data, triples), ""
                if row.pk is not None:
                    changed.append(row)
        MetricBucket.objects.bulk_create(new, batch_size=500)
        upsert(changed, ["data", "gap"], ["kind", "target_id", "step", "start"])
    return len(new) + len(changed)


def _fold(rows, step: int) -> dict:
    """Rows of a finer tier → {(kind, id, coarse start): (data, gap reasons)}."""
    out: dict = defaultdict(lambda: ({}, Counter()))
    for kind, target_id, start, data, gap in rows:
        data_so_far, gaps = out[(kind, target_id, floor(start, step))]
        if data:
            merge(data_so_far, data)
        elif gap:
            gaps[gap] += 1
    return out


def rollup(now: dt.datetime | None = None) -> dict[int, int]:
    """Fold every finished bucket of each tier into the next one; returns rows written per tier."""
    now = now or clock()
    written = {}
    ladder = tiers()
    for (fine, _), (coarse, _) in zip(ladder, ladder[1:]):
        ready = floor(now - ROLLUP_LAG, coarse)
        if fine != ladder[0][0]:
            below = RollupState.objects.filter(step=fine).values_list("done_until", flat=True).first()
            ready = min(ready, floor(below, coarse)) if below else EPOCH
        state = RollupState.objects.filter(step=coarse).first()
        if state is None:
            oldest = MetricBucket.objects.filter(step=fine).order_by("start").values_list("start", flat=True).first()
            if oldest is None:
                continue
            state = RollupState(step=coarse, done_until=floor(oldest, coarse))
        count = 0
        while state.done_until < ready:
            until = min(ready, state.done_until + dt.timedelta(seconds=coarse * ROLLUP_WINDOW_BUCKETS))
            rows = MetricBucket.objects.filter(step=fine, start__gte=state.done_until, start__lt=until).values_list(
                "kind", "target_id", "start", "data", "gap")
            folded = _fold(rows.iterator(chunk_size=2000), coarse)
            with transaction.atomic():
                MetricBucket.objects.filter(step=coarse, start__gte=state.done_until, start__lt=until).delete()
                MetricBucket.objects.bulk_create([
                    MetricBucket(kind=kind, target_id=target_id, step=coarse, start=start, data=data,
                                 gap="" if data else gaps.most_common(1)[0][0])
                    for (kind, target_id, start), (data, gaps) in folded.items() if data or gaps], batch_size=500)
                state.done_until = until
                state.save()
            count += len(folded)
        written[coarse] = count
    return written


def prune(now: dt.datetime | None = None) -> int:
    """Drop every tier's buckets older than its retention; returns rows deleted."""
    now = now or clock()
    deleted = 0
    for step, keep in tiers():
        deleted += MetricBucket.objects.filter(step=step, start__lt=now - dt.timedelta(seconds=keep)).delete()[0]
    return deleted


def choose_step(start: dt.datetime, end: dt.datetime, max_points: int, now: dt.datetime | None = None) -> int:
    """The finest tier that still holds `start` and draws the range in at most `max_points`."""
    now = now or clock()
    span = max((end - start).total_seconds(), 1)
    ladder = tiers()
    for step, keep in ladder:
        if span / step <= max_points and start >= now - dt.timedelta(seconds=keep) - dt.timedelta(seconds=step):
            return step
    return ladder[-1][0]


def _value(series_name: str, kind: str, triple, step: int) -> tuple[float, float]:
    total, count, peak = triple
    series = lookup(kind, series_name)
    if series is not None and series.counter:
        return total / step, peak
    return (total / count if count else None), peak


def read(kind: str, target_id: int, start: dt.datetime, end: dt.datetime, series: list[str] | None = None,
         max_points: int = 1500, step: int | None = None, now: dt.datetime | None = None) -> dict:
    """A target's series between `start` and `end`, columnar: `t` (bucket starts, epoch seconds),
    per series `avg` and `max` lists (counters as rates per second; None where there is no data),
    per series `sum` for counters (what it grew by: equal to billing's sums), and `gaps`: the
    runs of buckets without data with their reason."""
    step = step or choose_step(start, end, max_points, now)
    first, last = floor(start, step), end
    rows = {row[0]: row[1:] for row in MetricBucket.objects.filter(
        kind=kind, target_id=target_id, step=step, start__gte=first, start__lt=last).values_list(
        "start", "data", "gap")}
    names = sorted({name for data, _ in rows.values() for name in data}) if series is None else list(series)
    times, columns, gaps = [], {name: {"avg": [], "max": []} for name in names}, []
    sums = dict.fromkeys((n for n in names if (s := lookup(kind, n)) is not None and s.counter), 0)
    moment = first
    while moment < last:
        times.append(int((moment - EPOCH).total_seconds()))
        data, gap = rows.get(moment, ({}, GapReason.NO_DATA))
        if not data:
            reason = gap or GapReason.NO_DATA
            if gaps and gaps[-1]["reason"] == reason and gaps[-1]["to"] == times[-1]:
                gaps[-1]["to"] = times[-1] + step
            else:
                gaps.append({"from": times[-1], "to": times[-1] + step, "reason": reason})
        for name in names:
            triple = data.get(name)
            avg, peak = _value(name, kind, triple, step) if triple else (None, None)
            columns[name]["avg"].append(avg)
            columns[name]["max"].append(peak)
            if triple and name in sums:
                sums[name] += triple[0]
        moment += dt.timedelta(seconds=step)
    for name, total in sums.items():
        columns[name]["sum"] = total
    for name in names:
        entry = lookup(kind, name)
        columns[name]["unit"] = entry.unit if entry else ""
        columns[name]["counter"] = bool(entry and entry.counter)
    return {"kind": kind, "id": target_id, "step": step, "from": times[0] if times else None,
            "to": int((last - EPOCH).total_seconds()), "t": times, "series": columns, "gaps": gaps}


def latest(kind: str, target_ids=None, within: dt.timedelta = dt.timedelta(minutes=5),
           now: dt.datetime | None = None) -> dict[int, tuple[dt.datetime, dict, str]]:
    """The newest finest-tier bucket of each target (inside `within`): id → (start, data, gap)."""
    now = now or clock()
    rows = MetricBucket.objects.filter(kind=kind, step=finest_step(), start__gte=now - within)
    if target_ids is not None:
        rows = rows.filter(target_id__in=list(target_ids))
    out = {}
    for target_id, start, data, gap in rows.order_by("start").values_list("target_id", "start", "data", "gap"):
        out[target_id] = (start, data, gap)
    return out

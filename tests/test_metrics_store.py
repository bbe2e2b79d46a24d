"""The monitoring store (panel/metrics/store.py) on the suite's database: recording, roll-ups that
agree with the finest tier's sums, catching up after a pause, bounded size, reading with gaps."""

import datetime as dt

import pytest

from panel.metrics import store
from panel.metrics.models import MetricBucket, RollupState
from panel.metrics.store import Point

pytestmark = pytest.mark.django_db
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def minutes(n):
    return dt.timedelta(minutes=n)


def point(server_id, rx, cpu):
    return Point("server", server_id, {"net_rx": rx, "cpu": cpu}, {"net_rx": rx / 60})


def test_a_second_sample_in_a_minute_is_merged_and_a_gap_never_overwrites_data():
    store.record([point(1, 100, 10)], T0)
    store.record([point(1, 50, 30), Point("server", 2, gap="stopped")], T0 + dt.timedelta(seconds=20))
    store.record([Point("server", 1, gap="node_offline")], T0 + dt.timedelta(seconds=40))
    row = MetricBucket.objects.get(kind="server", target_id=1, step=60)
    assert row.data["net_rx"] == [150, 2, 100 / 60] and row.data["cpu"] == [40, 2, 30] and row.gap == ""
    assert MetricBucket.objects.get(target_id=2).gap == "stopped"


def test_every_tier_sums_to_the_same_total_and_keeps_the_minutes_peak():
    for i in range(180):  # three hours, one spike
        store.record([point(1, 1000 if i != 77 else 600_000, 5 if i != 77 else 100)], T0 + minutes(i))
    store.rollup(now=T0 + minutes(180) + store.ROLLUP_LAG)
    store.rollup(now=T0 + minutes(180) + store.ROLLUP_LAG)  # idempotent
    for step in (60, 300, 3600):
        view = store.read("server", 1, T0, T0 + minutes(180), step=step, now=T0 + minutes(181))
        assert view["series"]["net_rx"]["sum"] == 179 * 1000 + 600_000, step
        assert max(v for v in view["series"]["cpu"]["max"] if v is not None) == 100, step
        assert max(v for v in view["series"]["net_rx"]["max"] if v is not None) == 10_000, step
    hour = store.read("server", 1, T0, T0 + minutes(60), step=3600, now=T0 + minutes(181))
    assert hour["series"]["cpu"]["avg"] == [5.0]


def test_rollup_catches_up_after_a_pause_and_prune_keeps_each_tier_bounded(settings):
    settings.METRICS_TIERS = [(60, 3600), (300, 6 * 3600)]
    for i in range(600):  # ten hours without a roll-up
        store.record([point(1, 10, 1)], T0 + minutes(i))
    store.rollup(now=T0 + minutes(600) + store.ROLLUP_LAG)
    assert RollupState.objects.get(step=300).done_until == T0 + minutes(600)
    assert MetricBucket.objects.filter(step=300).count() == 120
    store.prune(now=T0 + minutes(600))
    assert MetricBucket.objects.filter(step=60).count() == 60
    assert MetricBucket.objects.filter(step=300).count() == 72


def test_reading_marks_gaps_with_their_reason_and_picks_a_tier_for_the_range():
    store.record([point(1, 10, 1)], T0)
    store.record([Point("server", 1, gap="stopped")], T0 + minutes(1))
    store.record([Point("server", 1, gap="stopped")], T0 + minutes(2))
    view = store.read("server", 1, T0, T0 + minutes(4), now=T0 + minutes(5))
    assert view["step"] == 60 and view["series"]["cpu"]["avg"] == [1.0, None, None, None]
    assert [(g["reason"], g["to"] - g["from"]) for g in view["gaps"]] == [("stopped", 120), ("no_data", 60)]
    assert store.choose_step(T0, T0 + dt.timedelta(days=30), 1500, now=T0 + dt.timedelta(days=30)) == 3600
    assert store.choose_step(T0, T0 + dt.timedelta(hours=24), 1500, now=T0 + dt.timedelta(hours=24)) == 60


def test_days_of_minutes_stay_within_the_stated_rows_per_tier(settings):
    """The default tiers' steps with their retentions cut a hundredfold (800 days become 8; the
    full 800 days: benchmarks/metrics_retention.py), a day of one server's minutes written at a
    time, rolled up and pruned each day with the clock injected: each tier holds at most
    retention/step buckets, and nothing is lost on the way up."""
    settings.METRICS_TIERS = [(60, 48 * 36), (300, 35 * 864), (3600, 400 * 864), (86400, 1825 * 864)]
    data = {"cpu": [5, 1, 5], "net_rx": [1000, 1, 20]}
    for day in range(8):
        start = T0 + dt.timedelta(days=day)
        MetricBucket.objects.bulk_create([MetricBucket(kind="server", target_id=1, step=60, start=start + minutes(i),
                                                       data=data) for i in range(1440)], batch_size=1440)
        end = start + dt.timedelta(days=1)
        store.rollup(now=end + store.ROLLUP_LAG)
        store.prune(now=end)
    counts = {step: MetricBucket.objects.filter(step=step).count() for step, _ in settings.METRICS_TIERS}
    assert counts == {60: 48 * 36 // 60, 300: 35 * 864 // 300, 3600: 400 * 864 // 3600, 86400: 8}, counts
    view = store.read("server", 1, T0, T0 + dt.timedelta(days=8), step=86400, now=T0 + dt.timedelta(days=8))
    assert view["series"]["net_rx"]["sum"] == 8 * 1440 * 1000

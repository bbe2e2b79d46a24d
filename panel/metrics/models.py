"""Monitoring series in tiers: one row per (target, tier, bucket) holding every series of the target.

A row's `data` maps a series name to `[sum, n, max]`: for a counter (panel/metrics/series.py)
`sum` is what the counter grew by inside the bucket (so every tier's sums add up to the same
total as billing) and `max` the highest per-second rate of one sample; for a gauge `sum/n` is
the average and `max` the peak. A bucket with no data carries the reason in `gap` (stopped,
node_offline, collector_failed). Targets are plain ids, not foreign keys: a deleted server's
history is pruned by age like everything else, and writes never lock the servers' rows.
"""

from django.db import models


class TargetKind(models.TextChoices):
    SERVER = "server"
    NODE = "node"
    STORAGE = "storage"
    NETWORK = "network"
    POOL = "pool"


class GapReason(models.TextChoices):
    STOPPED = "stopped"
    NODE_OFFLINE = "node_offline"
    COLLECTOR_FAILED = "collector_failed"
    BUSY = "busy"  # the domain's monitor was held by a job (a migration, a backup): read next minute
    NO_DATA = "no_data"  # never written: a bucket that has no row at all reads as this


class MetricBucket(models.Model):
    kind = models.CharField(max_length=8, choices=TargetKind.choices)
    target_id = models.BigIntegerField()
    step = models.PositiveIntegerField()  # the tier: the bucket's length in seconds
    start = models.DateTimeField()
    data = models.JSONField(default=dict)
    gap = models.CharField(max_length=16, blank=True, choices=GapReason.choices)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["kind", "target_id", "step", "start"],
                                               name="unique_metric_bucket")]
        indexes = [models.Index(fields=["step", "start"], name="metric_bucket_age")]


class RollupState(models.Model):
    """How far a tier has been rolled up from the one below it (buckets before are final)."""

    step = models.PositiveIntegerField(primary_key=True)
    done_until = models.DateTimeField()


class Baseline(models.Model):
    """A target's raw cumulative counters at its last read: the next read's deltas are taken
    against them. `origin` names what the counters count since (a server's "<node>:<boot id>";
    a node's boot is seen as its counters going down): another origin restarts from zero."""

    kind = models.CharField(max_length=8, choices=TargetKind.choices)
    target_id = models.BigIntegerField()
    origin = models.CharField(max_length=40, blank=True)
    at = models.DateTimeField()
    raw = models.JSONField(default=dict)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["kind", "target_id"], name="unique_metric_baseline")]


class NodeReading(models.Model):
    """How the collector's last read of a node went: when it last answered, and if the last try
    failed, why (shown on the node's page, exported to Prometheus, raised as an alert)."""

    node_id = models.BigIntegerField(primary_key=True)
    tried_at = models.DateTimeField()
    ok_at = models.DateTimeField(null=True)
    seconds = models.FloatField(default=0)  # how long the last read took
    error = models.TextField(blank=True)


class CollectorLease(models.Model):
    """One row: held by the collection running now, so two (the worker's minute and a manual
    `collect_metrics`, or a minute that ran long) never take deltas from the same baselines."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    until = models.DateTimeField()

"""Usage counters of servers: raw samples, running totals, hourly buckets and the traffic quota.

The hypervisor's counters are cumulative since the domain's QEMU process started: they restart
at zero on every boot and after a migration. Each sample is turned into a delta against the
previous one (kept on `UsageTotal`); after a reset (another boot id or node, or a counter lower
than before) the delta is the new raw value, so nothing is lost and nothing is negative.
"""

from django.db import models

from panel.vps.models import VirtualServer

COUNTERS = ("rx_bytes", "tx_bytes", "cpu_ns", "read_bytes", "write_bytes")
# What the buckets and totals add up: the counters plus the time the server ran.
SUMS = (*COUNTERS, "uptime_seconds")


class UsageSample(models.Model):
    """One reading of a running server's raw counters (kept a day, for checking)."""

    customer_path = "server__customer"  # how a row reaches its customer (panel.accounts.tenancy)

    server = models.ForeignKey(VirtualServer, on_delete=models.CASCADE, related_name="usage_samples")
    at = models.DateTimeField(db_index=True)
    node_id = models.BigIntegerField(null=True)  # a plain id: samples must not hold nodes back
    boot_id = models.BigIntegerField()  # libvirt's domain id: a new one on every boot
    rx_bytes = models.PositiveBigIntegerField(default=0)
    tx_bytes = models.PositiveBigIntegerField(default=0)
    cpu_ns = models.PositiveBigIntegerField(default=0)
    read_bytes = models.PositiveBigIntegerField(default=0)
    write_bytes = models.PositiveBigIntegerField(default=0)

    class Meta:
        ordering = ["-at"]
        indexes = [models.Index(fields=["server", "at"])]


class UsageTotal(models.Model):
    """A server's usage since it was created, and the last raw sample its next delta starts from."""

    customer_path = "server__customer"  # how a row reaches its customer (panel.accounts.tenancy)

    server = models.OneToOneField(VirtualServer, on_delete=models.CASCADE, primary_key=True,
                                  related_name="usage_total")
    rx_bytes = models.PositiveBigIntegerField(default=0)
    tx_bytes = models.PositiveBigIntegerField(default=0)
    cpu_ns = models.PositiveBigIntegerField(default=0)
    read_bytes = models.PositiveBigIntegerField(default=0)
    write_bytes = models.PositiveBigIntegerField(default=0)
    uptime_seconds = models.PositiveBigIntegerField(default=0)
    # The baseline: the last sample's raw values (None before the first sample).
    last_at = models.DateTimeField(null=True)
    last_node_id = models.BigIntegerField(null=True)
    last_boot_id = models.BigIntegerField(null=True)
    last_rx_bytes = models.PositiveBigIntegerField(default=0)
    last_tx_bytes = models.PositiveBigIntegerField(default=0)
    last_cpu_ns = models.PositiveBigIntegerField(default=0)
    last_read_bytes = models.PositiveBigIntegerField(default=0)
    last_write_bytes = models.PositiveBigIntegerField(default=0)


class UsageHour(models.Model):
    """The usage of one server in one hour (UTC): what `?from=&to=` sums."""

    customer_path = "server__customer"  # how a row reaches its customer (panel.accounts.tenancy)

    server = models.ForeignKey(VirtualServer, on_delete=models.CASCADE, related_name="usage_hours")
    hour = models.DateTimeField()
    rx_bytes = models.PositiveBigIntegerField(default=0)
    tx_bytes = models.PositiveBigIntegerField(default=0)
    cpu_ns = models.PositiveBigIntegerField(default=0)
    read_bytes = models.PositiveBigIntegerField(default=0)
    write_bytes = models.PositiveBigIntegerField(default=0)
    uptime_seconds = models.PositiveBigIntegerField(default=0)

    class Meta:
        ordering = ["server", "hour"]
        constraints = [models.UniqueConstraint(fields=["server", "hour"], name="unique_usage_hour")]


class UsageState(models.Model):
    """A server's traffic quota in one calendar month (UTC): throttled once when it is used up,
    lifted when the month is over."""

    customer_path = "server__customer"  # how a row reaches its customer (panel.accounts.tenancy)

    server = models.ForeignKey(VirtualServer, on_delete=models.CASCADE, related_name="usage_states")
    month = models.DateField()  # the first day of the month
    throttled_at = models.DateTimeField(null=True, blank=True)
    used_bytes = models.PositiveBigIntegerField(default=0)  # when it was throttled
    quota_bytes = models.PositiveBigIntegerField(default=0)
    # Where the reduced rate was last put on the NICs: a new boot or node gets the plan's rate
    # from its definition, so the collector puts the reduced one back.
    applied_node_id = models.BigIntegerField(null=True, blank=True)
    applied_boot_id = models.BigIntegerField(null=True, blank=True)
    lifted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["server", "month"]
        constraints = [models.UniqueConstraint(fields=["server", "month"], name="unique_usage_month")]

    @property
    def throttled(self) -> bool:
        return self.throttled_at is not None and self.lifted_at is None

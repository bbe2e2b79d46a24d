"""The kinds of alert rules and what is fixed about each: which way is worse, the range of its
thresholds, its unit, and the built-in rule's first settings."""

from django.db import models
from django.utils.translation import gettext_lazy as _


class Kind(models.TextChoices):
    """What a rule watches. There is one built-in rule of each kind in DEFAULTS; customers'
    rules watch one of the CUSTOMER_KINDS on their own servers."""

    NODE_OFFLINE = "node_offline", _("Node offline")
    COLLECTOR_STALE = "collector_stale", _("Monitoring collector stale")
    STORAGE_FULL = "storage_full", _("Storage filling up")
    STORAGE_FORECAST = "storage_forecast", _("Storage full soon (trend)")
    NODE_MEMORY = "node_memory", _("Node memory low")
    SERVER_CPU = "server_cpu", _("CPU pegged")
    SERVER_STEAL = "server_steal", _("High vCPU wait (steal)")
    SERVER_MEMORY = "server_memory", _("Memory used")
    GUEST_FS = "guest_fs", _("Filesystem full")
    TRAFFIC_QUOTA = "traffic_quota", _("Traffic quota")
    BACKUP_FAILED = "backup_failed", _("Backup failed")
    BACKUP_MISSING = "backup_missing", _("Backup missing")


CUSTOMER_KINDS = (Kind.SERVER_CPU, Kind.SERVER_MEMORY, Kind.TRAFFIC_QUOTA, Kind.GUEST_FS)
# What a customer's rule watches, in the words of its form (a threshold of their choosing).
CUSTOMER_LABELS = {Kind.SERVER_CPU: _("CPU use"), Kind.SERVER_MEMORY: _("Memory use"),
                   Kind.TRAFFIC_QUOTA: _("Traffic, of the month's quota"), Kind.GUEST_FS: _("Filesystem use")}

ABOVE, BELOW = "above", "below"
# Worse is lower for these (memory available, days left); higher for every other kind.
DIRECTION = {Kind.NODE_MEMORY: BELOW, Kind.STORAGE_FORECAST: BELOW}
# (lowest, highest) a threshold of the kind may be.
PERCENT = (0, 100)
LIMITS = {Kind.NODE_OFFLINE: (1, 1440), Kind.COLLECTOR_STALE: (1, 1440), Kind.STORAGE_FULL: PERCENT,
          Kind.STORAGE_FORECAST: (0, 365), Kind.NODE_MEMORY: PERCENT, Kind.SERVER_CPU: PERCENT,
          Kind.SERVER_STEAL: PERCENT, Kind.SERVER_MEMORY: PERCENT, Kind.GUEST_FS: PERCENT,
          Kind.TRAFFIC_QUOTA: (1, 1000), Kind.BACKUP_FAILED: (1, 1), Kind.BACKUP_MISSING: (0, 24 * 30)}
UNITS = {Kind.NODE_OFFLINE: "min", Kind.COLLECTOR_STALE: "min", Kind.STORAGE_FORECAST: "days",
         Kind.BACKUP_FAILED: "", Kind.BACKUP_MISSING: "h"}  # the others: %

# The built-in rules as first seeded: warning, critical, for_minutes, margin, resolve_after, notify_customer.
DEFAULTS = {
    Kind.NODE_OFFLINE: (3, 10, 0, 1, 1, False),
    Kind.COLLECTOR_STALE: (5, 15, 0, 1, 1, False),
    Kind.STORAGE_FULL: (85, 95, 0, 2, 2, False),
    Kind.STORAGE_FORECAST: (7, 2, 0, 1, 3, False),
    Kind.NODE_MEMORY: (10, 5, 5, 2, 2, False),
    Kind.SERVER_CPU: (95, None, 15, 10, 2, False),
    Kind.SERVER_STEAL: (20, 50, 10, 5, 2, False),
    Kind.GUEST_FS: (90, 97, 0, 2, 2, True),
    Kind.TRAFFIC_QUOTA: (80, 100, 0, 0, 1, True),
    Kind.BACKUP_FAILED: (1, None, 0, 0, 1, False),
    Kind.BACKUP_MISSING: (2, None, 0, 0, 1, False),
}

"""A node is a KVM host the panel manages through libvirt."""

from django.db import models
from django.utils.translation import gettext_lazy as _


class Node(models.Model):
    """A hypervisor host. Its live state is written by jobs (health, reconciler), never fetched here."""

    class State(models.TextChoices):
        ONLINE = "online", _("Online")
        DEGRADED = "degraded", _("Degraded")
        OFFLINE = "offline", _("Offline")
        MAINTENANCE = "maintenance", _("Maintenance")

    name = models.CharField(max_length=100, unique=True)
    # libvirt URI: qemu:///system for the panel's own host, qemu+ssh://… for remote nodes,
    # fake://NAME for the in-memory driver of the unit tests.
    uri = models.CharField(max_length=300, unique=True)
    state = models.CharField(max_length=12, choices=State.choices, default=State.ONLINE)
    last_error = models.TextField(blank=True)
    virt_type = models.CharField(max_length=8, blank=True, help_text=_("kvm, or qemu (software emulation)"))
    cpus = models.PositiveIntegerField(default=0)
    ram_mib = models.PositiveBigIntegerField(default=0)
    storage_dir = models.CharField(max_length=300, help_text=_("Directory on the node for server disks"))
    libvirt_version = models.CharField(max_length=20, blank=True)
    checked_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.name


class Drift(models.Model):
    """A difference the reconciler found between the database and a node's libvirt."""

    class Kind(models.TextChoices):
        UNKNOWN_DOMAIN = "unknown_domain", _("Domain unknown to the panel")
        MISSING_DOMAIN = "missing_domain", _("Server's domain is missing")
        STATE_MISMATCH = "state_mismatch", _("State differs")
        STALE_OPERATION = "stale_operation", _("Operation lost its worker")
        NODE_UNREACHABLE = "node_unreachable", _("Node unreachable")

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="drifts")
    server = models.ForeignKey("vps.VirtualServer", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    domain_name = models.CharField(max_length=200, blank=True)
    kind = models.CharField(max_length=20, choices=Kind.choices)
    detail = models.TextField()
    repaired = models.BooleanField(default=False, help_text=_("The reconciler fixed it"))
    seen_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-id"]

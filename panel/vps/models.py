"""Plans, virtual servers and the operations that change them."""

import copy
import uuid

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.utils.translation import gettext, gettext_lazy as _

from panel.accounts.models import Customer
from panel.refusals import Refused
from nodes.models import Node, Storage

# RFC 1123 hostname: labels of letters, digits and inner hyphens. Rejects every shell character.
hostname_validator = RegexValidator(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$",
    _("A hostname is letters, digits, hyphens and dots (RFC 1123)."),
    code="invalid_hostname",
)


class Plan(models.Model):
    """What a customer buys: the size of a server and its allowances."""

    name = models.CharField(max_length=100, unique=True)
    vcpus = models.PositiveSmallIntegerField(validators=[MinValueValidator(1), MaxValueValidator(256)])
    ram_mib = models.PositiveIntegerField(validators=[MinValueValidator(64), MaxValueValidator(4 * 1024 * 1024)])
    disk_gib = models.PositiveIntegerField(validators=[MinValueValidator(1), MaxValueValidator(65536)])
    traffic_gib = models.PositiveIntegerField(default=0, help_text=_("0 = unlimited"))
    bandwidth_mbit = models.PositiveIntegerField(default=0, help_text=_("0 = unlimited"))
    ipv4_count = models.PositiveSmallIntegerField(default=1)
    ipv6_count = models.PositiveSmallIntegerField(default=0)
    backups = models.PositiveSmallIntegerField(default=0, help_text=_("How many backups are kept"))
    throttled_mbit = models.PositiveIntegerField(
        default=0, help_text=_("bandwidth after the traffic quota is used up; 0 = unchanged"))
    snapshots = models.PositiveSmallIntegerField(default=0, help_text=_("How many snapshots a server may keep"))
    snapshot_memory = models.BooleanField(default=False, help_text=_("Snapshots may include the memory"))
    data_disks = models.PositiveSmallIntegerField(default=0, help_text=_("How many data disks may be added"))
    data_disk_gib = models.PositiveIntegerField(default=0, help_text=_("Total size of the data disks; 0 = none"))
    clones = models.BooleanField(default=False, help_text=_("Customers may clone their stopped servers"))
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.name

    def delete_refusal(self) -> Refused | None:
        """Why the plan cannot be deleted (the UI and the API ask this), or None."""
        return Refused(gettext("Servers use this plan."), "plan_in_use") if self.servers.exists() else None


class ServerState(models.TextChoices):
    CREATING = "creating", _("Creating")
    INSTALLING = "installing", _("Installing")
    RUNNING = "running", _("Running")
    STOPPED = "stopped", _("Stopped")
    SUSPENDED = "suspended", _("Suspended")
    MIGRATING = "migrating", _("Migrating")
    ERROR = "error", _("Error")
    DELETING = "deleting", _("Deleting")


def new_vnc_password() -> str:
    """A per-server VNC password (VNC uses at most 8 characters), stored encrypted."""
    import secrets

    from panel.crypto import encrypt

    return encrypt(secrets.token_urlsafe(6)[:8])


class VirtualServer(models.Model):
    """A customer's VPS: the desired state; the node's libvirt holds the actual one."""

    customer_path = "customer"  # how a row reaches its customer (panel.accounts.tenancy)

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="servers")
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="servers")
    node = models.ForeignKey(Node, null=True, blank=True, on_delete=models.PROTECT, related_name="servers")
    storage = models.ForeignKey(Storage, null=True, blank=True, on_delete=models.PROTECT, related_name="servers")
    hostname = models.CharField(max_length=253, validators=[hostname_validator])
    os_template = models.ForeignKey("templates_os.OsTemplate", null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="servers")
    state = models.CharField(max_length=12, choices=ServerState.choices, default=ServerState.CREATING, db_index=True)
    # Set while suspended: shown to the customer, who cannot start the server.
    suspend_reason = models.CharField(max_length=500, blank=True)
    state_before_suspend = models.CharField(max_length=12, choices=ServerState.choices, blank=True)
    error = models.TextField(blank=True)
    # Only the console proxy uses it (novnc/rfb.py); browsers never see it.
    vnc_password = models.CharField(max_length=200, default=new_vnc_password, editable=False)
    # Sizes are copied from the plan at creation, so changing a plan does not resize servers.
    vcpus = models.PositiveSmallIntegerField()
    ram_mib = models.PositiveIntegerField()
    disk_gib = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["customer", "id"])]

    def __str__(self) -> str:
        return self.hostname

    def set_state(self, state: str, **fields) -> None:
        """Save a new state (and `fields` with it), touching nothing else of the row."""
        self.state = state
        for name, value in fields.items():
            setattr(self, name, value)
        self.save(update_fields=["state", "updated_at", *fields])

    @property
    def domain_name(self) -> str:
        """The libvirt domain name: unique per server, and stable."""
        return f"vps-{self.uuid.hex[:12]}"

    @property
    def disk_volume(self) -> str:
        return f"{self.domain_name}-disk0.qcow2"

    @property
    def seed_volume(self) -> str:
        """The cloud-init seed ISO of an image install."""
        return f"{self.domain_name}-seed.iso"

    @property
    def serial_log(self) -> str:
        return f"/var/log/libvirt/qemu/{self.domain_name}-serial.log"


def random_mac() -> str:
    import secrets

    # 52:54:00 is the prefix QEMU/KVM guests use by convention.
    return "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))


class ServerNic(models.Model):
    """A server's network card on one network of its cluster."""

    customer_path = "server__customer"  # how a row reaches its customer (panel.accounts.tenancy)

    server = models.ForeignKey(VirtualServer, on_delete=models.CASCADE, related_name="nics")
    network = models.ForeignKey("nodes.Network", on_delete=models.PROTECT, related_name="nics")
    mac = models.CharField(max_length=17, unique=True, default=random_mac)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["server", "network"], name="unique_server_network")]

    def __str__(self) -> str:
        return f"{self.server} on {self.network}"


class Operation(models.Model):
    """One slow action, run by the worker: status, progress, log and error live here.

    Two audiences: `log`, `error` and `requested_by` are the provider's (node names, storage,
    the panel's URLs, admin names); `customer_log`, `customer_error` and
    `customer_requested_by` are what the server's customer may read. Every log line goes to
    `log`; only lines written for the customer also go to `customer_log` (panel/runner.py), so
    a line nobody thought about stays the admins'. `seen_by()` gives the one view to show.
    """

    customer_path = "customer"  # how a row reaches its customer (panel.accounts.tenancy)
    PROVIDER = "provider"  # the customer's requested_by for an admin, a billing key or the system

    class Kind(models.TextChoices):
        CREATE = "create", _("Create")
        START = "start", _("Start")
        STOP = "stop", _("Stop")
        REBOOT = "reboot", _("Reboot")
        SUSPEND = "suspend", _("Suspend")
        UNSUSPEND = "unsuspend", _("Unsuspend")
        DELETE = "delete", _("Delete")
        NETWORK_UPDATE = "network_update", _("Update network settings")
        MIGRATE = "migrate", _("Migrate")
        REINSTALL = "reinstall", _("Reinstall")
        NODE_INSTALL = "node_install", _("Install node")
        CHANGE_PLAN = "change_plan", _("Change plan")
        RESET_PASSWORD = "reset_password", _("Reset root password")
        BACKUP = "backup", _("Back up")
        RESTORE = "restore", _("Restore from a backup")
        PANEL_BACKUP = "panel_backup", _("Back up the panel")
        OVA_EXPORT = "ova_export", _("Export as an OVA")
        OVA_IMPORT = "ova_import", _("Import from an OVA")
        SNAPSHOT_CREATE = "snapshot_create", _("Take a snapshot")
        SNAPSHOT_REVERT = "snapshot_revert", _("Revert to a snapshot")
        SNAPSHOT_DELETE = "snapshot_delete", _("Delete a snapshot")
        DISK_ADD = "disk_add", _("Add a data disk")
        DISK_GROW = "disk_grow", _("Grow a data disk")
        DISK_DELETE = "disk_delete", _("Delete a data disk")

    class Status(models.TextChoices):
        QUEUED = "queued", _("Queued")
        RUNNING = "running", _("Running")
        SUCCEEDED = "succeeded", _("Succeeded")
        FAILED = "failed", _("Failed")

    ACTIVE = (Status.QUEUED, Status.RUNNING)

    kind = models.CharField(max_length=20, choices=Kind.choices)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED, db_index=True)
    progress = models.PositiveSmallIntegerField(default=0)
    log = models.TextField(blank=True)
    error = models.TextField(blank=True)
    params = models.JSONField(default=dict, blank=True)
    server = models.ForeignKey(VirtualServer, null=True, blank=True, on_delete=models.SET_NULL, related_name="operations")
    node = models.ForeignKey(Node, null=True, blank=True, on_delete=models.SET_NULL, related_name="operations")
    # Kept on the row so the owner still sees the operation after its server is deleted.
    customer = models.ForeignKey(Customer, null=True, blank=True, on_delete=models.SET_NULL, related_name="operations")
    target_repr = models.CharField(max_length=253, blank=True)
    requested_by = models.CharField(max_length=200, blank=True)
    customer_log = models.TextField(blank=True)
    customer_error = models.TextField(blank=True)
    customer_requested_by = models.CharField(max_length=200, blank=True, default=PROVIDER)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Touched by the worker while it works; an old heartbeat on a running operation means
    # its worker died (see panel/vps/reconciler.py).
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["server", "status"])]

    def __str__(self) -> str:
        return f"{self.kind} {self.target_repr} ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE

    def seen_by(self, admin: bool) -> "Operation":
        """This operation as an admin (all of it) or anyone else (the customer's part) sees it:
        a copy whose log, error and requested_by are that audience's. The copy is not saved."""
        if admin:
            return self
        view = copy.copy(self)
        view.log, view.error, view.requested_by = self.customer_log, self.customer_error, self.customer_requested_by
        view._customer_view = True
        return view

    def save(self, *args, **kwargs):
        if getattr(self, "_customer_view", False):
            raise RuntimeError("the customer's view of an operation is not saved")
        super().save(*args, **kwargs)

    def clean(self) -> None:
        if not 0 <= self.progress <= 100:
            raise ValidationError({"progress": _("Progress is 0 to 100.")})

"""Backup targets (where backups go), backup plans (when, what, how many) and backups."""

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext, gettext_lazy as _

from nodes.hostkeys import fingerprint
from panel.accounts.models import Customer
from panel.refusals import Refused
from panel.vps.models import Operation, Plan, VirtualServer


def check_cron(expression: str) -> str:
    """"" when `expression` is a valid 5-field cron expression, else the reason (a plan's
    schedule, checked by the model and the API alike)."""
    from croniter import croniter

    if len(expression.split()) != 5:
        return "A schedule is five fields: minute hour day-of-month month day-of-week, e.g. 0 3 * * *."
    if not croniter.is_valid(expression):
        return f"'{expression}' is not a valid cron expression."
    return ""


class BackupTarget(models.Model):
    """A place that stores backup files: a folder on the panel's host, the same folder on every
    node (a local disk or a share mounted there), a backup host over SSH (SFTP) or an FTP/FTPS
    server. The password is stored encrypted."""

    class Kind(models.TextChoices):
        DIR = "dir", _("Folder on the panel's host")
        NODE = "node", _("Folder on the server's node")
        SFTP = "sftp", _("Backup host over SSH (SFTP)")
        FTP = "ftp", _("FTP")
        FTPS = "ftps", _("FTP over TLS (explicit FTPS)")

    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.DIR)
    # dir/node: an absolute folder; sftp/ftp/ftps: the folder on the server ("" = the login's home)
    path = models.CharField(max_length=500, blank=True)
    host = models.CharField(max_length=253, blank=True)
    port = models.PositiveIntegerField(null=True, blank=True, validators=[MinValueValidator(1), MaxValueValidator(65535)])
    username = models.CharField(max_length=200, blank=True)
    password = models.CharField(max_length=500, blank=True, editable=False)  # encrypted (panel.crypto)
    # Pinned at the first check, another one is refused; "" pins again at the next check.
    # sftp: the server's host key ("<type> <base64>"); ftps: the server certificate's pin,
    # "x509 <base64 of the DER certificate>" (backup.targets.certificate_pin), so both have a
    # "SHA256:..." fingerprint (nodes.hostkeys.fingerprint). Unused for the other kinds.
    host_key = models.TextField(blank=True)
    enabled = models.BooleanField(default=True)
    # The last check (on save, and before every run): writable, and the free space if known.
    checked_at = models.DateTimeField(null=True, blank=True)
    check_error = models.TextField(blank=True)
    free_bytes = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def delete_refusal(self) -> Refused | None:
        """Why the target cannot be deleted (the UI and the API ask this), or None."""
        if self.backups.exists() or self.plans.exists():
            return Refused(gettext("Backups or backup plans use this target."), "target_in_use")
        return None

    @property
    def host_key_fingerprint(self) -> str:
        """The pin's SHA256 fingerprint, shown so an admin can compare it with the server's."""
        return fingerprint(self.host_key) if self.host_key else ""

    def clean(self) -> None:
        if self.kind in (self.Kind.DIR, self.Kind.NODE):
            if not self.path.startswith("/"):
                raise ValidationError({"path": _("A folder target needs an absolute path.")})
        elif not self.host:
            raise ValidationError({"host": _("An SFTP or FTP target needs a host.")})
        if "\n" in self.path or "\r" in self.path:
            raise ValidationError({"path": _("The path cannot contain line breaks.")})


class BackupPlan(models.Model):
    """A schedule that backs up a set of servers (or the panel itself) to one target."""

    class Scope(models.TextChoices):
        ALL = "all", _("All servers")
        PLANS = "plans", _("Servers on chosen plans")
        CUSTOMERS = "customers", _("Servers of chosen customers")
        SERVERS = "servers", _("Chosen servers")
        PANEL = "panel", _("The panel itself (database, settings, keys)")

    class Compression(models.TextChoices):
        NONE = "none", _("None")
        ZSTD = "zstd", _("zstd")

    name = models.CharField(max_length=100, unique=True)
    target = models.ForeignKey(BackupTarget, on_delete=models.PROTECT, related_name="plans")
    # A cron expression (minute hour day month weekday), run by the worker's scheduler.
    schedule = models.CharField(max_length=100, default="0 3 * * *")
    scope = models.CharField(max_length=10, choices=Scope.choices, default=Scope.ALL)
    plans = models.ManyToManyField(Plan, blank=True, related_name="backup_plans")
    customers = models.ManyToManyField(Customer, blank=True, related_name="backup_plans")
    servers = models.ManyToManyField(VirtualServer, blank=True, related_name="backup_plans")
    # Backups kept per server on the target; a server's plan (`Plan.backups`) caps it.
    keep = models.PositiveSmallIntegerField(default=7, validators=[MinValueValidator(1), MaxValueValidator(1000)])
    # A full backup at least every `full_every` backups; the ones between are incremental.
    full_every = models.PositiveSmallIntegerField(default=7, validators=[MinValueValidator(1), MaxValueValidator(100)])
    compression = models.CharField(max_length=8, choices=Compression.choices, default=Compression.ZSTD)
    enabled = models.BooleanField(default=True)
    last_run_at = models.DateTimeField(null=True, blank=True)
    last_run_summary = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        error = check_cron(self.schedule)
        if error:
            raise ValidationError({"schedule": error})
        if self.scope == self.Scope.PANEL and self.target_id and self.target.kind == BackupTarget.Kind.NODE:
            raise ValidationError({"target": _("The panel's backups need a target off the nodes: a folder on the "
                                               "panel's host, SFTP or FTP.")})

    def servers_in_scope(self):
        """The servers this plan backs up now (none for a panel plan)."""
        servers = VirtualServer.objects.all()
        match self.scope:
            case self.Scope.PANEL:
                return servers.none()
            case self.Scope.PLANS:
                servers = servers.filter(plan__in=self.plans.all())
            case self.Scope.CUSTOMERS:
                servers = servers.filter(customer__in=self.customers.all())
            case self.Scope.SERVERS:
                servers = servers.filter(pk__in=self.servers.all())
        return servers.order_by("id")


class Backup(models.Model):
    """One backup file on a target: a server's disk (full, or the changes since its parent) or
    the panel's own state. Its manifest holds the checksum and the server's definition."""

    customer_path = "customer"  # how a row reaches its customer (panel.accounts.tenancy)

    class Kind(models.TextChoices):
        FULL = "full", _("Full")
        INCREMENTAL = "incremental", _("Incremental")
        PANEL = "panel", _("Panel")

    admins_only = Q(kind=Kind.PANEL)  # the panel's own backups: provider admins only

    class Status(models.TextChoices):
        RUNNING = "running", _("Running")
        DONE = "done", _("Done")
        FAILED = "failed", _("Failed")

    # Kept when the server is deleted with ?keep_backups=1: uuid and hostname still name it.
    server = models.ForeignKey(VirtualServer, null=True, blank=True, on_delete=models.SET_NULL, related_name="backups")
    server_uuid = models.UUIDField(null=True, blank=True, db_index=True)
    hostname = models.CharField(max_length=253, blank=True)
    customer = models.ForeignKey(Customer, null=True, blank=True, on_delete=models.SET_NULL, related_name="backups")
    target = models.ForeignKey(BackupTarget, on_delete=models.PROTECT, related_name="backups")
    plan = models.ForeignKey(BackupPlan, null=True, blank=True, on_delete=models.SET_NULL, related_name="backups")
    # An incremental backup holds what changed since its parent; restoring it needs the chain.
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="children")
    kind = models.CharField(max_length=12, choices=Kind.choices)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.RUNNING, db_index=True)
    # The libvirt checkpoint made with this backup: the next incremental starts from it.
    checkpoint = models.CharField(max_length=100, blank=True)
    file_name = models.CharField(max_length=500, blank=True)  # relative to the target
    compression = models.CharField(max_length=8, choices=BackupPlan.Compression.choices, default="none")
    size_bytes = models.BigIntegerField(default=0)  # stored bytes
    # Of the stored file, "<algorithm>:<hex>": blake3 (sha256 in backups made before it).
    checksum = models.CharField(max_length=80, blank=True)
    # node targets: the node whose folder holds the file.
    node = models.ForeignKey("nodes.Node", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    manifest = models.JSONField(default=dict, blank=True)
    operation = models.ForeignKey(Operation, null=True, blank=True, on_delete=models.SET_NULL, related_name="backups")
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["server", "status"])]

    def __str__(self) -> str:
        return f"{self.kind} backup #{self.id} of {self.hostname or 'the panel'}"

    @property
    def on_removed_node(self) -> bool:
        """Kept in a node folder on a node since removed from the panel: its file is out of reach."""
        return self.target.kind == BackupTarget.Kind.NODE and self.node_id is None

    def chain(self) -> list["Backup"]:
        """This backup and its ancestors, oldest (the full one) first."""
        chain, backup = [], self
        while backup is not None:
            chain.append(backup)
            backup = backup.parent
        return chain[::-1]

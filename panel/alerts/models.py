"""Alert rules (the provider's built-in ones, tunable, and customers' own) and the alerts they raise.

A rule watches one kind of condition (panel/alerts/rules.py says how each is measured); each
evaluation (panel/alerts/evaluation.py, every minute) turns what it sees into at most one open
alert per rule and target. An alert goes pending → firing (once the condition held for the
rule's `for_minutes`) → resolved (once the value is back past the threshold by the rule's
margin for `resolve_after` evaluations in a row: hysteresis, so a value that hovers at the
threshold does not flap). Resolved alerts stay as history; a new breach opens a new alert.
"""

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from panel.accounts.models import Customer
from panel.alerts.kinds import ABOVE, BELOW, CUSTOMER_KINDS, CUSTOMER_LABELS, DIRECTION, LIMITS, Kind
from panel.vps.models import VirtualServer


class Severity(models.TextChoices):
    WARNING = "warning", _("Warning")
    CRITICAL = "critical", _("Critical")


class AlertState(models.TextChoices):
    PENDING = "pending", _("Pending")
    FIRING = "firing", _("Firing")
    RESOLVED = "resolved", _("Resolved")


class Rule(models.Model):
    """A condition to watch and its thresholds.

    `customer` NULL: one of the provider's built-in rules (`builtin` is its kind: one row per
    kind, seeded by the migration and `rules.ensure_builtin_rules()`); admins tune them. Set: a
    customer's own rule on its servers (`server` NULL: all of them), notifying `email` and the
    customer's webhooks that subscribe to alert events.

    `warning` is the threshold; `critical`, if set, a second, worse one. Whether worse means
    higher or lower is the kind's (kinds.DIRECTION: memory available and days-to-full are
    worse when lower).
    """

    customer_path = "customer"  # how a row reaches its customer (panel.accounts.tenancy)
    admins_only = Q(customer__isnull=True)  # the built-in rules: provider admins only

    kind = models.CharField(max_length=20, choices=Kind.choices)
    builtin = models.CharField(max_length=20, unique=True, null=True, blank=True, editable=False)
    customer = models.ForeignKey(Customer, null=True, blank=True, on_delete=models.CASCADE, related_name="alert_rules")
    server = models.ForeignKey(VirtualServer, null=True, blank=True, on_delete=models.CASCADE,
                               related_name="alert_rules")
    name = models.CharField(max_length=100, blank=True)
    enabled = models.BooleanField(default=True)
    warning = models.FloatField()
    critical = models.FloatField(null=True, blank=True)
    for_minutes = models.PositiveIntegerField(default=0)
    # Hysteresis: resolved only once the value is `margin` past the threshold, for
    # `resolve_after` evaluations in a row.
    margin = models.FloatField(default=0)
    resolve_after = models.PositiveSmallIntegerField(default=2)
    # Built-in server rules: the server's owner sees the alert and is told (traffic, full
    # filesystems, backups); else only the provider.
    notify_customer = models.BooleanField(default=False)
    email = models.CharField(max_length=500, blank=True, help_text=_("Comma-separated addresses"))
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["customer_id", "id"]

    def __str__(self) -> str:
        return self.name or self.get_kind_display()

    @property
    def is_builtin(self) -> bool:
        return self.customer_id is None

    @property
    def watches(self) -> str:
        """What it watches, in words: a customer's rule as its form names it."""
        label = CUSTOMER_LABELS.get(self.kind) if self.customer_id is not None else None
        return str(label or self.get_kind_display())

    def recipients(self) -> list[str]:
        return [part.strip() for part in self.email.split(",") if part.strip()]

    def clean(self) -> None:
        from django.core.validators import validate_email

        errors = {}
        if self.customer_id is not None and self.kind not in CUSTOMER_KINDS:
            errors["kind"] = _("Customers' rules watch one of: %(kinds)s.") % {
                "kinds": ", ".join(str(k) for k in CUSTOMER_KINDS)}
        if self.server_id is not None and self.customer_id is not None and self.server.customer_id != self.customer_id:
            errors["server"] = _("Not one of your servers.")
        low, high = LIMITS.get(self.kind, (0, None))
        for field in ("warning", "critical"):
            value = getattr(self, field)
            if value is not None and (value < low or (high is not None and value > high)):
                errors[field] = (_("Between %(low)s and %(high)s.") % {"low": low, "high": high} if high is not None
                                 else _("At least %(low)s.") % {"low": low})
        if self.critical is not None and self.warning is not None and "critical" not in errors:
            worse = self.critical < self.warning if DIRECTION.get(self.kind, ABOVE) == BELOW \
                else self.critical > self.warning
            if not worse and self.critical != self.warning:
                errors["critical"] = _("The critical threshold must be worse than the warning one.")
        if self.margin is not None and self.margin < 0:
            errors["margin"] = _("At least 0.")
        elif (self.margin and self.warning is not None and DIRECTION.get(self.kind, ABOVE) == ABOVE
              and self.margin >= self.warning > 0):
            # Values of these kinds do not go below 0: the way back would never be reached.
            errors["margin"] = _("Smaller than the threshold, or the alert could never resolve.")
        if self.for_minutes > 7 * 24 * 60:
            errors["for_minutes"] = _("At most a week.")
        if not 1 <= self.resolve_after <= 60:
            errors["resolve_after"] = _("Between 1 and 60 evaluations.")
        for address in self.recipients():
            try:
                validate_email(address)
            except ValidationError:
                errors["email"] = _("Not an e-mail address: %(address)s") % {"address": address}
                break
        if len(self.recipients()) > 5:
            errors["email"] = _("At most 5 addresses.")
        if errors:
            raise ValidationError(errors)


class Alert(models.Model):
    """One breach of one rule by one target, from its first sight to its end.

    `fingerprint` names the rule and target (the same for every alert of that pair, as
    Alertmanager's); `open_fingerprint` is it while the alert is open and NULL once resolved,
    so the database holds at most one open alert per rule and target (de-duplication). `customer`
    is who may see it besides the provider: the owner of the server it is about, for the
    customer's own rules and the built-in ones that tell customers; NULL: the provider only
    (nodes, storages and anything that names them).
    """

    customer_path = "customer"  # how a row reaches its customer (panel.accounts.tenancy)

    class Target(models.TextChoices):
        NODE = "node", _("Node")
        STORAGE = "storage", _("Storage")
        SERVER = "server", _("Server")
        PANEL = "panel", _("Panel")
        BACKUP_PLAN = "backup_plan", _("Backup plan")

    rule = models.ForeignKey(Rule, on_delete=models.CASCADE, related_name="alerts")
    fingerprint = models.CharField(max_length=16, db_index=True)
    open_fingerprint = models.CharField(max_length=16, null=True, blank=True, unique=True, editable=False)
    state = models.CharField(max_length=8, choices=AlertState.choices, default=AlertState.PENDING, db_index=True)
    severity = models.CharField(max_length=8, choices=Severity.choices, default=Severity.WARNING)
    target_kind = models.CharField(max_length=12, choices=Target.choices)
    target_id = models.BigIntegerField()
    target_key = models.CharField(max_length=300)  # kind:id plus what narrows it (a mount point)
    subject = models.CharField(max_length=300)  # what it is about, in words fit for whoever sees it
    customer = models.ForeignKey(Customer, null=True, blank=True, on_delete=models.CASCADE, related_name="alerts")
    server = models.ForeignKey(VirtualServer, null=True, blank=True, on_delete=models.SET_NULL, related_name="alerts")
    value = models.FloatField(null=True)
    threshold = models.FloatField()
    summary = models.TextField(blank=True)
    labels = models.JSONField(default=dict)
    started_at = models.DateTimeField()  # the condition was first seen
    fired_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    seen_at = models.DateTimeField()  # the last evaluation that saw the condition
    clear_count = models.PositiveSmallIntegerField(default=0)  # evaluations in a row past the margin
    # What has been told (the state the notification was for; '' = nothing yet): webhooks
    # (an alert.* event, in the transition's transaction), e-mail (retried by later evaluations).
    emitted = models.CharField(max_length=8, blank=True)
    mailed = models.CharField(max_length=8, blank=True)
    mail_attempts = models.PositiveSmallIntegerField(default=0)
    mail_error = models.TextField(blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["customer", "state"]), models.Index(fields=["state", "resolved_at"])]

    def __str__(self) -> str:
        return f"{self.rule}: {self.subject} ({self.state})"

    @property
    def is_open(self) -> bool:
        return self.state != AlertState.RESOLVED

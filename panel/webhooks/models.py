"""Webhook subscriptions and the delivery of each event to each of them."""

import uuid

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from panel import crypto
from panel.accounts.models import Customer
from panel.api.models import Event
from panel.webhooks import destinations

ALL_EVENTS = "*"


class WebhookQuerySet(models.QuerySet):
    def for_event(self, event: Event) -> list["Webhook"]:
        """The active webhooks owed `event`: by name or "*", and the provider's webhooks or
        those of the customer the event is about."""
        owners = Q(customer__isnull=True)
        if event.customer_id is not None:
            owners |= Q(customer_id=event.customer_id)
        return [hook for hook in self.filter(owners, active=True) if hook.wants(event.event)]


class Webhook(models.Model):
    """A URL that wants some events, signed with its own secret.

    `customer` set: made with that customer's key or session; it receives only events about
    that customer's objects. NULL: made by an admin or a billing key; it receives every event.
    `scope` is who made it (admin, billing, customer): it may point at private addresses only
    when settings.WEBHOOKS_ALLOW_PRIVATE names that scope.
    """

    class Scope(models.TextChoices):
        ADMIN = "admin", _("Admin")
        BILLING = "billing", _("Billing")
        CUSTOMER = "customer", _("Customer")

    customer_path = "customer"  # how a row reaches its customer (panel.accounts.tenancy)

    url = models.CharField(max_length=2000)
    events = models.JSONField(default=list, help_text=_('Event names, or ["*"] for all'))
    secret_encrypted = models.TextField(editable=False)  # panel.crypto; the API never returns it
    customer = models.ForeignKey(Customer, null=True, blank=True, on_delete=models.CASCADE, related_name="webhooks")
    active = models.BooleanField(default=True)
    scope = models.CharField(max_length=8, choices=Scope.choices, default=Scope.CUSTOMER, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = WebhookQuerySet.as_manager()

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.url

    @property
    def secret(self) -> str:
        return crypto.decrypt(self.secret_encrypted)

    @secret.setter
    def secret(self, value: str) -> None:
        self.secret_encrypted = crypto.encrypt(value)

    @property
    def public_only(self) -> bool:
        """Only public destinations: the admin allowed private ones for no webhook of this scope."""
        return self.scope not in settings.WEBHOOKS_ALLOW_PRIVATE

    def wants(self, event_name: str) -> bool:
        return ALL_EVENTS in self.events or event_name in self.events

    def clean(self) -> None:
        try:
            destinations.parse(self.url)
        except destinations.BadUrl as exc:
            raise ValidationError({"url": str(exc)})
        if not isinstance(self.events, list) or not self.events:
            raise ValidationError({"events": _("Name at least one event, or “*”.")})
        unknown = [name for name in self.events if name != ALL_EVENTS and name not in Event.NAMES]
        if unknown:
            raise ValidationError({"events": _("Unknown event: %(names)s. Valid: %(valid)s.") % {
                "names": ", ".join(map(str, unknown)), "valid": ", ".join([ALL_EVENTS, *Event.NAMES])}})


class Delivery(models.Model):
    """One event for one webhook: sent until a 2xx answer, retried with back-off, given up
    25 h after the event. `uuid` is the id in the body, the same on every attempt, so
    receivers can drop repeats."""

    customer_path = "webhook__customer"  # how a row reaches its customer (panel.accounts.tenancy)

    class Status(models.TextChoices):
        PENDING = "pending", _("Pending")
        DELIVERED = "delivered", _("Delivered")
        FAILED = "failed", _("Failed")

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="deliveries")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING, db_index=True)
    attempts = models.PositiveIntegerField(default=0)  # since creation or the last re-send
    next_attempt_at = models.DateTimeField(null=True, blank=True, db_index=True)
    # Retries stop here: 25 h after the event, or after an admin's re-send.
    give_up_at = models.DateTimeField()
    # A sender holds the delivery until then (delivery.deliver claims it); a sender that died
    # lets go when this passes.
    claimed_until = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "deliveries"
        constraints = [models.UniqueConstraint(fields=["webhook", "event"], name="unique_webhook_event_delivery")]

    def __str__(self) -> str:
        return f"{self.event.event} → {self.webhook.url} ({self.uuid})"

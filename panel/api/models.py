"""Stored answers for Idempotency-Key (see panel/api/idempotency.py)."""

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models


class IdempotentRequest(models.Model):
    """The first answer to a POST with an Idempotency-Key, replayed for 24 h."""

    principal = models.CharField(max_length=64)  # "key:<id>" or "user:<id>": keys are per caller
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64)  # SHA-256 of method, path and body
    status_code = models.PositiveSmallIntegerField(null=True)  # None while the first request runs
    response_body = models.JSONField(null=True, encoder=DjangoJSONEncoder)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["principal", "key"], name="unique_idempotency_key")]


class Event(models.Model):
    """Something billing systems and admins are told about (API.md's webhook events).

    Written when it happens; panel/webhooks makes one Delivery per subscription that wants
    it, in the same transaction. `customer` says whose object it is about: customers'
    webhooks receive only their own customer's events.
    """

    customer_path = "customer"  # how a row reaches its customer (panel.accounts.tenancy)

    NAMES = ["server.created", "server.active", "server.state_changed", "server.suspended", "server.unsuspended",
             "server.deleted", "server.failed", "operation.finished", "backup.finished", "node.down", "node.up",
             "server.traffic_exceeded", "alert.firing", "alert.resolved"]

    event = models.CharField(max_length=40, choices=[(n, n) for n in NAMES], db_index=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    data = models.JSONField(default=dict, encoder=DjangoJSONEncoder)
    # None: a provider-side event (node.down), delivered to admin and billing webhooks only.
    customer = models.ForeignKey("accounts.Customer", null=True, blank=True, on_delete=models.SET_NULL,
                                 related_name="+")

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.event} #{self.id}"


class RateCount(models.Model):
    """One caller's requests in one window of a rate limit (panel/api/throttling.py), when there
    is no Redis: the window is part of `caller`, so a new window is a new row."""

    caller = models.CharField(max_length=190, primary_key=True)  # 190: utf8mb4's index limit
    used = models.PositiveIntegerField(default=0)
    expires = models.PositiveBigIntegerField(db_index=True)  # epoch seconds: old windows go then

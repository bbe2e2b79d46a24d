"""Per-customer bounds, checked in the create paths before anything is made.

What one customer (or one billing key, for the provider's webhooks) may hold or start, so one
credential cannot exhaust the panel for everybody: servers, active API keys, webhooks (each one
multiplies every event into requests retried for 25 h), console URLs a minute, backups an hour.
The numbers are settings (LIMIT_*, docs/security.md). The provider's admins are not
bounded: they are who raises a customer's needs.

A bound on what exists is a 409 `limit_reached`; a rate (per minute, per hour) is a 429
`rate_limited` with the seconds until a slot frees (Retry-After in the API).
"""

from datetime import timedelta

from django.conf import settings
from django.utils import timezone
from django.utils.translation import gettext as _

from novnc.models import ConsoleToken
from panel.accounts.models import ApiKey
from panel.refusals import Refused
from panel.vps.models import Operation, VirtualServer
from panel.webhooks.models import Webhook


class RateLimited(Refused):
    """Too many in the last period: try again after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message, "rate_limited", 429)
        self.retry_after = retry_after


def _exempt(actor) -> bool:
    return actor.is_admin


def _bound(count: int, limit: int, message: str) -> None:
    if count >= limit:
        raise Refused(message % {"limit": limit}, "limit_reached", 409)


def _rate(times: list, limit: int, period: timedelta, message: str) -> None:
    """`times`: when the recent ones were made, newest first (at least `limit` of them if any)."""
    if len(times) >= limit:
        # A slot frees when the oldest of the last `limit` leaves the period.
        wait = times[limit - 1] + period - timezone.now()
        raise RateLimited(message % {"limit": limit}, max(int(wait.total_seconds()) + 1, 1))


def check_new_server(actor, customer) -> None:
    """Creates running at the same moment count against the same number, so they may pass the
    bound by how many run at once (the per-key rate bounds that). Locking the customer's row
    would deadlock: the create's inserts hold shared locks on it already (foreign keys)."""
    if _exempt(actor):
        return
    held = VirtualServer.objects.filter(customer=customer).count()
    _bound(held, settings.LIMIT_SERVERS_PER_CUSTOMER,
           _("This customer has reached its limit of %(limit)s servers; delete one or ask the provider."))


def check_new_api_key(actor, customer) -> None:
    if _exempt(actor) or customer is None:
        return
    held = ApiKey.objects.filter(customer=customer, revoked_at__isnull=True).count()
    _bound(held, settings.LIMIT_API_KEYS_PER_CUSTOMER,
           _("This customer has reached its limit of %(limit)s active API keys; revoke one first."))


def check_new_webhook(actor, customer_id: int | None) -> None:
    """`customer_id` None: the provider's webhooks (made with a billing key), counted as one owner."""
    if _exempt(actor):
        return
    held = Webhook.objects.filter(customer_id=customer_id) if customer_id else Webhook.objects.filter(
        customer__isnull=True)
    _bound(held.count(), settings.LIMIT_WEBHOOKS_PER_CUSTOMER,
           _("The limit of %(limit)s webhooks is reached; delete one first (one webhook can take every event)."))


def check_new_console_token(actor, server) -> None:
    if _exempt(actor):
        return
    limit, period = settings.LIMIT_CONSOLE_TOKENS_PER_MINUTE, timedelta(minutes=1)
    times = list(ConsoleToken.objects.filter(customer_id=server.customer_id, created_at__gt=timezone.now() - period)
                 .order_by("-created_at").values_list("created_at", flat=True)[:limit])
    _rate(times, limit, period, _("At most %(limit)s console URLs a minute; try again shortly."))


def check_new_backup(actor, server) -> None:
    if _exempt(actor):
        return
    limit, period = settings.LIMIT_BACKUPS_PER_HOUR, timedelta(hours=1)
    times = list(Operation.objects.filter(customer_id=server.customer_id, kind=Operation.Kind.BACKUP,
                                          created_at__gt=timezone.now() - period)
                 .order_by("-created_at").values_list("created_at", flat=True)[:limit])
    _rate(times, limit, period, _("At most %(limit)s backups an hour for this customer; try again later."))

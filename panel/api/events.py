"""Raising events (API.md's webhook events): one row each, for delivery and for admins."""

import logging

from django.db import transaction

from panel.api.models import Event

log = logging.getLogger(__name__)


def emit(event: str, *, customer_id: int | None = None, **data) -> Event:
    """Record `event` (about `customer_id`'s object, or a provider-side one) and queue its
    webhook deliveries; they are sent once the caller's transaction commits."""
    if event not in Event.NAMES:
        raise ValueError(f"unknown event {event!r}")
    from panel.webhooks.delivery import fan_out

    # One transaction: the event never exists without the deliveries it is owed.
    with transaction.atomic():
        row = Event.objects.create(event=event, customer_id=customer_id, data=data)
        fan_out(row)
    log.info("event %s %s", event, data)
    return row

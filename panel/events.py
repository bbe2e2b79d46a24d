"""Raising events (API.md's webhook events): the domain's, below HTTP.

The domain calls `emit()` where something happened; it records one `Event` row and tells the
receivers of `event_raised` in the same transaction. panel/webhooks receives it and makes the
deliveries, which are sent only once that transaction commits: a rolled-back request raised
nothing. The API and the webhooks read events; only the domain raises them.
"""

import logging

from django.db import transaction
from django.dispatch import Signal

from panel.api.models import Event

log = logging.getLogger(__name__)

# Sent with `event` (the Event row) inside the emitting transaction; a receiver that fails
# fails the emit, so an event never exists without what its receivers owe it.
event_raised = Signal()


def emit(event: str, *, customer_id: int | None = None, **data) -> Event:
    """Record `event` (about `customer_id`'s object, or a provider-side one) and tell its
    receivers, in the caller's transaction."""
    if event not in Event.NAMES:
        raise ValueError(f"unknown event {event!r}")
    with transaction.atomic():
        row = Event.objects.create(event=event, customer_id=customer_id, data=data)
        event_raised.send(sender=Event, event=row)
    log.info("event %s %s", event, data)
    return row

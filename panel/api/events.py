"""Raising events (API.md's webhook events): one row each, for delivery and for admins."""

import logging

from panel.api.models import Event

log = logging.getLogger(__name__)


def emit(event: str, **data) -> Event:
    if event not in Event.NAMES:
        raise ValueError(f"unknown event {event!r}")
    row = Event.objects.create(event=event, data=data)
    log.info("event %s %s", event, data)
    return row

"""Sending webhook deliveries: fan-out when an event is emitted, one attempt per `deliver()`,
retries with exponential back-off by the every-minute `deliver_due()`, re-send by admins.

Jobs take the delivery's id and are safe to run twice, even at the same time: `deliver()`
first claims the row with a conditional UPDATE, and only the caller whose UPDATE changed the
row sends. A sender that dies holding a claim lets go when the claim's lease runs out.
"""

import hashlib
import hmac
import json
import logging
import time
from datetime import timedelta
from functools import partial

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import Q
from django.utils import timezone

from panel.api.models import Event
from panel import operations
from panel.webhooks.models import Delivery, Webhook
from panel.webhooks.transports import HttpTransport, Request, Transport, TransportError

log = logging.getLogger(__name__)

MAX_BACKOFF = timedelta(hours=1)
# Retries stop this long after the event (API.md promises at least 24 h; the last retry
# before this point comes more than 24 h after the event because back-off is at most 1 h).
GIVE_UP_AFTER = timedelta(hours=25)
SIGNATURE_HEADER = "X-Panel-Signature"
# deliver_due stops starting new sends after this long, so that one run of the every-minute
# schedule does not pile up on the next one behind slow receivers.
DUE_BUDGET_SECONDS = 50


def fan_out(event: Event) -> list[Delivery]:
    """Create `event`'s deliveries, in the caller's transaction, and hand each one to the
    worker once it commits (a rolled-back event sends nothing)."""
    deliveries = [
        Delivery.objects.create(webhook=hook, event=event, next_attempt_at=event.created_at,
                                give_up_at=event.created_at + GIVE_UP_AFTER)
        for hook in Webhook.objects.for_event(event)
    ]
    for row in deliveries:
        operations.after_commit(partial(enqueue, row.id))
    return deliveries


def fan_out_event(sender, event: Event, **_kwargs) -> None:
    """`panel.events.event_raised`'s receiver."""
    fan_out(event)


def enqueue(delivery_id: int) -> None:
    """Hand a delivery to the worker (django-q2) for its first attempt, or a re-send."""
    from django_q.tasks import async_task

    async_task("panel.webhooks.delivery.deliver", delivery_id, task_name=f"webhook-delivery-{delivery_id}")


def backoff(attempts: int) -> timedelta:
    """The wait after the `attempts`-th failed attempt in a row: base, 2×base, 4×base, … ≤ 1 h."""
    seconds = settings.WEBHOOK_RETRY_BASE_SECONDS * 2 ** min(max(attempts - 1, 0), 30)
    return min(timedelta(seconds=seconds), MAX_BACKOFF)


def payload(delivery: Delivery) -> bytes:
    """The body: the same bytes on every attempt of one delivery."""
    event = delivery.event
    body = {"id": str(delivery.uuid), "event": event.event, "created_at": event.created_at, "data": event.data}
    if event.event.startswith("alert."):
        # Alerts' data is Alertmanager's webhook body: also at the top, for Alertmanager receivers.
        body = {**event.data, **body}
    return json.dumps(body, cls=DjangoJSONEncoder, separators=(",", ":")).encode()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The X-Panel-Signature value: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def get_transport() -> Transport:
    """The transport deliveries are sent with."""
    return HttpTransport(timeout=settings.WEBHOOK_TIMEOUT_SECONDS)


def _claim_lease() -> timedelta:
    # Longer than any attempt can take (the transport cuts one off after twice the timeout).
    return timedelta(seconds=3 * settings.WEBHOOK_TIMEOUT_SECONDS + 60)


def _unclaimed(now) -> Q:
    return Q(claimed_until__isnull=True) | Q(claimed_until__lte=now)


def deliver(delivery_id: int) -> str | None:
    """Make one attempt at `delivery_id` if it is due and nobody else is sending it.

    Returns the delivery's status after the attempt, or None when there was nothing to do
    (not due, delivered, failed, deleted, or being sent by another worker right now).
    """
    now = timezone.now()
    lease_until = now + _claim_lease()
    # The claim: of two concurrent callers, the row lock lets one UPDATE through first; the
    # other re-reads the row, no longer finds it unclaimed, and updates nothing.
    claimed = (Delivery.objects.filter(_unclaimed(now), pk=delivery_id, status=Delivery.Status.PENDING,
                                       next_attempt_at__lte=now)
               .update(claimed_until=lease_until))
    if not claimed:
        return None
    delivery = Delivery.objects.select_related("webhook", "event").get(pk=delivery_id)
    hook = delivery.webhook
    status_code, error = None, None
    try:
        if not hook.active:
            raise TransportError("The webhook is disabled.", permanent=True)
        body = payload(delivery)
        headers = {
            "X-Panel-Event": delivery.event.event,
            "X-Panel-Delivery": str(delivery.uuid),
            SIGNATURE_HEADER: sign(hook.secret, int(timezone.now().timestamp()), body),
        }
        # Checked at every send against what the name resolves to now (transports.py pins it).
        status_code = get_transport().send(Request(url=hook.url, body=body, headers=headers,
                                                   public_only=hook.public_only))
    except TransportError as exc:
        error = exc
    except Exception as exc:  # a bug (or an undecryptable secret) must not keep the claim until the lease ends
        log.exception("webhook delivery %s", delivery.uuid)
        error = TransportError(f"{type(exc).__name__}: {exc}")
    attempts = delivery.attempts + 1
    changes = {"claimed_until": None, "attempts": attempts, "last_attempt_at": now}
    if error is None:
        changes.update(status=Delivery.Status.DELIVERED, delivered_at=timezone.now(), next_attempt_at=None,
                       last_status_code=status_code, last_error="")
    else:
        next_at = now + backoff(attempts)
        gave_up = error.permanent or next_at > delivery.give_up_at
        changes.update(status=Delivery.Status.FAILED if gave_up else Delivery.Status.PENDING,
                       next_attempt_at=None if gave_up else next_at, last_status_code=error.status_code, last_error=error.message[:2000])
        log.info("webhook delivery %s attempt %s failed%s: %s", delivery.uuid, attempts,
                 " (gave up)" if gave_up else "", error.message)
    # Written only while the claim is still ours (a sender that took over after our lease
    # ran out has its own lease value).
    if not Delivery.objects.filter(pk=delivery_id, claimed_until=lease_until).update(**changes):
        log.warning("webhook delivery %s: the claim ran out before the attempt ended; result dropped", delivery.uuid)
    return changes["status"]


def deliver_due(limit: int = 500) -> int:
    """The schedule's task (every minute): attempt the deliveries whose next attempt is due.
    Returns how many attempts were made."""
    now = timezone.now()
    due = list(Delivery.objects.filter(_unclaimed(now), status=Delivery.Status.PENDING, next_attempt_at__lte=now)
               .order_by("next_attempt_at", "id").values_list("id", flat=True)[:limit])
    started, made = time.monotonic(), 0
    for delivery_id in due:
        if time.monotonic() - started > DUE_BUDGET_SECONDS:
            break  # the rest are still due: the next run takes them
        if deliver(delivery_id) is not None:
            made += 1
    return made


def resend(delivery_id: int) -> Delivery:
    """Send a delivery again now, whatever its status, with a fresh 25 h of retries.
    The id stays the same: a receiver that already has it may drop it."""
    now = timezone.now()
    Delivery.objects.filter(pk=delivery_id).update(status=Delivery.Status.PENDING, attempts=0, next_attempt_at=now,
                                                   give_up_at=now + GIVE_UP_AFTER, delivered_at=None)
    operations.after_commit(partial(enqueue, delivery_id))
    return Delivery.objects.select_related("webhook", "event").get(pk=delivery_id)

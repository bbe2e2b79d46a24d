"""Telling people about alerts: signed webhooks, e-mail, and optionally an Alertmanager.

- **Webhooks**: each transition to firing (or to critical) and to resolved is the domain event
  `alert.firing` / `alert.resolved` (panel/events.py), raised in the evaluation's transaction;
  panel/webhooks delivers it, signed and retried, to every webhook subscribed to it: the
  provider's, and the customer's own when the alert is about the customer's server. Its data is
  Alertmanager's webhook body (version 4), which the delivery puts at the top of the body as
  well, so an Alertmanager receiver reads it as it is.
- **E-mail** (Django's mail, settings.EMAIL_URL): after the transaction, to the rule's
  addresses (a customer's rule), or the provider's (ALERTS_EMAIL_TO, else the admins') and,
  for built-in rules that tell customers, the server's owner in their language. `Alert.mailed`
  records what was sent, so a failed send is tried again by the next evaluations (5 times).
- **Alertmanager** (settings.ALERTMANAGER_URL): every evaluation posts the provider's firing
  alerts (and those resolved in the last minutes) to `/api/v2/alerts`, as Prometheus does:
  Alertmanager forgets an alert that is not posted again before its endsAt.
"""

import datetime as dt
import json
import logging

from django.conf import settings
from django.core import mail
from django.db.models import F, Q
from django.utils import translation
from django.utils.translation import gettext as _

from panel import events
from panel.alerts.models import Alert, AlertState

log = logging.getLogger(__name__)

EVENTS = {AlertState.FIRING: "alert.firing", AlertState.RESOLVED: "alert.resolved"}
MAIL_ATTEMPTS = 5
# Alertmanager keeps a firing alert this long after the last post (4 evaluations, as Prometheus).
ALERTMANAGER_HOLD = dt.timedelta(minutes=4)
ZERO_TIME = "0001-01-01T00:00:00Z"  # Alertmanager's "not ended"


def _iso(moment: dt.datetime | None) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if moment else ZERO_TIME


def alert_name(alert: Alert) -> str:
    """`NodeOffline`, `GuestFs`…; a customer's rule goes by its name when it has one."""
    rule = alert.rule
    if rule.customer_id is not None and rule.name:
        return rule.name
    return "".join(part.capitalize() for part in rule.kind.split("_"))


def labels(alert: Alert) -> dict[str, str]:
    out = {"alertname": alert_name(alert), "severity": alert.severity, "rule": alert.rule.kind,
           "scope": "customer" if alert.rule.customer_id else "provider",
           **{k: str(v) for k, v in alert.labels.items() if v not in (None, "")}}
    if alert.customer_id is not None:
        out["customer_id"] = str(alert.customer_id)
    return out


def link(alert: Alert) -> str:
    base = settings.PANEL_URL
    if not base:
        return ""
    return f"{base}/alerts/" if alert.customer_id is not None else f"{base}/admin/alerts/"


def alertmanager_alert(alert: Alert, ends_at: dt.datetime | None = None) -> dict:
    """One alert as Alertmanager has it (in a webhook body, and in POST /api/v2/alerts)."""
    resolved = alert.state == AlertState.RESOLVED
    return {
        "status": "resolved" if resolved else "firing",
        "labels": labels(alert),
        "annotations": {"summary": alert.summary, "value": f"{alert.value:g}" if alert.value is not None else "",
                        "threshold": f"{alert.threshold:g}"},
        "startsAt": _iso(alert.fired_at or alert.started_at),
        "endsAt": _iso(alert.resolved_at if resolved else ends_at),
        "generatorURL": link(alert),
        "fingerprint": alert.fingerprint,
    }


def webhook_body(alert: Alert) -> dict:
    """Alertmanager's webhook body (version 4) for one alert."""
    item = alertmanager_alert(alert)
    name = item["labels"]["alertname"]
    return {
        "version": "4",
        "groupKey": f'{{}}:{{alertname="{name}", fingerprint="{alert.fingerprint}"}}',
        "truncatedAlerts": 0,
        "status": item["status"],
        "receiver": "panel",
        "groupLabels": {"alertname": name},
        "commonLabels": item["labels"],
        "commonAnnotations": item["annotations"],
        "externalURL": settings.PANEL_URL,
        "alerts": [item],
    }


def emit(alert: Alert) -> None:
    """Raise the alert's event (in the caller's transaction): the webhooks' deliveries."""
    name = EVENTS[AlertState.RESOLVED if alert.state == AlertState.RESOLVED else AlertState.FIRING]
    events.emit(name, customer_id=alert.customer_id, **webhook_body(alert))
    Alert.objects.filter(pk=alert.pk).update(emitted=alert.state)


# -- e-mail ------------------------------------------------------------------------------------

def provider_addresses() -> list[str]:
    if settings.ALERTS_EMAIL_TO:
        return list(settings.ALERTS_EMAIL_TO)
    from panel.accounts.models import User

    return sorted({u for u in User.objects.filter(Q(role=User.Role.ADMIN) | Q(is_superuser=True), is_active=True)
                   .exclude(email="").values_list("email", flat=True)})


def messages_for(alert: Alert, provider: list[str]) -> list[mail.EmailMessage]:
    """The mails an alert's news makes: [(to, language)] rendered."""
    rule = alert.rule
    wanted: list[tuple[list[str], str]] = []
    if rule.customer_id is not None:
        if rule.recipients():
            wanted.append((rule.recipients(), rule.customer.language))
    else:
        if provider:
            wanted.append((provider, settings.LANGUAGE_CODE))
        if alert.customer_id is not None and alert.customer.email:
            wanted.append(([alert.customer.email], alert.customer.language))
    out = []
    for to, language in wanted:
        with translation.override(language):
            state = _("RESOLVED") if alert.state == AlertState.RESOLVED else (
                _("CRITICAL") if alert.severity == "critical" else _("WARNING"))
            subject = f"[{state}] {alert.summary}"
            lines = [alert.summary, "",
                     _("Rule: %(rule)s") % {"rule": str(rule)},
                     _("Started: %(at)s") % {"at": _iso(alert.fired_at or alert.started_at)}]
            if alert.resolved_at:
                lines.append(_("Resolved: %(at)s") % {"at": _iso(alert.resolved_at)})
            if link(alert):
                lines += ["", link(alert)]
        out.append(mail.EmailMessage(subject=subject[:200], body="\n".join(lines), to=to,
                                     headers={"X-Panel-Alert": alert.fingerprint}))
    return out


def send_mails(now: dt.datetime) -> int:
    """Send what is owed: alerts that fired (or got worse) or resolved since their last mail.
    A resolution is mailed only when the firing was. Returns how many alerts were mailed."""
    due = (Alert.objects.filter(Q(state=AlertState.FIRING) | Q(state=AlertState.RESOLVED, resolved_at__gte=now -
                                                                dt.timedelta(days=1)))
           .exclude(mailed=F("state")).filter(mail_attempts__lt=MAIL_ATTEMPTS)
           .select_related("rule__customer", "customer").order_by("id"))
    provider, sent, connection = None, 0, None
    try:
        for alert in due[:200]:
            if alert.state == AlertState.RESOLVED and alert.mailed != AlertState.FIRING:
                Alert.objects.filter(pk=alert.pk).update(mailed=alert.state)  # its firing was never mailed
                continue
            if provider is None:
                provider = provider_addresses()
            messages = messages_for(alert, provider)
            try:
                if messages:
                    connection = connection or mail.get_connection(fail_silently=False)
                    connection.send_messages(messages)
            except Exception as exc:  # noqa: BLE001 - SMTP and socket errors alike: tried again later
                log.warning("alerts: cannot mail alert %s: %s", alert.pk, exc)
                Alert.objects.filter(pk=alert.pk).update(mail_attempts=F("mail_attempts") + 1,
                                                         mail_error=f"{type(exc).__name__}: {exc}"[:2000])
                connection = None
                continue
            Alert.objects.filter(pk=alert.pk).update(mailed=alert.state, mail_attempts=0, mail_error="")
            sent += 1 if messages else 0
    finally:
        if connection is not None:
            try:
                connection.close()
            except Exception:  # noqa: BLE001
                pass
    return sent


# -- Alertmanager ------------------------------------------------------------------------------

def alertmanager_batch(now: dt.datetime) -> list[dict]:
    """The provider's alerts Alertmanager should hold now: the firing ones, and the recently
    resolved (posted a few times, in case a post was lost)."""
    rows = (Alert.objects.filter(rule__customer__isnull=True)
            .filter(Q(state=AlertState.FIRING) | Q(state=AlertState.RESOLVED, resolved_at__gte=now - ALERTMANAGER_HOLD))
            .select_related("rule").order_by("id"))
    return [alertmanager_alert(alert, ends_at=now + ALERTMANAGER_HOLD) for alert in rows[:1000]]


def push_alertmanager(now: dt.datetime) -> int:
    """POST the batch to ALERTMANAGER_URL's /api/v2/alerts; returns how many alerts were posted
    (0 when none is configured or the post failed: the next evaluation posts again)."""
    base = settings.ALERTMANAGER_URL
    if not base:
        return 0
    from panel.webhooks.transports import HttpTransport, Request, TransportError

    batch = alertmanager_batch(now)
    if not batch:
        return 0
    body = json.dumps(batch, separators=(",", ":")).encode()
    try:
        # The provider's own service, named by the provider: private addresses are allowed.
        HttpTransport(timeout=settings.WEBHOOK_TIMEOUT_SECONDS).send(Request(
            url=f"{base}/api/v2/alerts", body=body, public_only=False))
    except TransportError as exc:
        log.warning("alerts: cannot post to Alertmanager at %s: %s", base, exc.message)
        return 0
    return len(batch)


"""One evaluation of every enabled rule (the worker's "evaluate-alerts", every minute).

For each rule and each target it sees (panel/alerts/rules.py), the value either breaches the
rule (warning or critical), lies in the hysteresis band (past the threshold, but not yet by
the margin), or is clear. That moves the target's one open alert:

    nothing  --breach-->  pending  --breach held for for_minutes-->  firing
    pending  --no breach-->  (dropped: it never fired, nobody was told)
    firing   --clear for resolve_after evaluations in a row-->  resolved
    firing   --in the band-->  firing (the clear count starts again)

A target that is no longer seen (deleted, stopped, no data) counts as clear; a rule whose
reader failed keeps its alerts as they are. Runs are serialized by a row lock, and the open
alert's `open_fingerprint` is unique, so two runs can never open the same alert twice. Every
transition to firing or resolved is told in the same transaction (panel/alerts/delivery.py).
"""

import datetime as dt
import hashlib
import logging

from django.db import transaction
from django.utils import timezone

from panel.alerts import delivery, rules
from panel.alerts.kinds import BELOW, Kind
from panel.alerts.models import Alert, AlertState, Rule, Severity
from panel.alerts.rules import Observation, Sources

log = logging.getLogger(__name__)


def clock() -> dt.datetime:
    """Now (tests replace it)."""
    return timezone.now()


def fingerprint(rule_id: int, key: str) -> str:
    """The rule's and target's name for Alertmanager: the same for every alert of the pair."""
    return hashlib.sha256(f"{rule_id}|{key}".encode()).hexdigest()[:16]


def breach(rule: Rule, value: float) -> str | None:
    """The severity `value` breaches `rule` with, or None."""
    below = rules.direction(rule.kind) == BELOW

    def past(threshold):
        return threshold is not None and (value <= threshold if below else value >= threshold)

    if past(rule.critical):
        return Severity.CRITICAL
    return Severity.WARNING if past(rule.warning) else None


def clear(rule: Rule, value: float) -> bool:
    """Past the threshold by the margin (the way back): the value counts towards resolving."""
    if rules.direction(rule.kind) == BELOW:
        return value > rule.warning + rule.margin
    return value < rule.warning - rule.margin


def _summary(rule: Rule, obs: Observation) -> str:
    return str(rules.TEXT[rule.kind] % {"subject": obs.subject, "value": rules.format_value(rule.kind, obs.value)})


def _new_alert(rule: Rule, obs: Observation, fp: str, severity: str, now: dt.datetime) -> Alert:
    # The server's owner sees it when the rule is theirs or tells them; nodes and storages never.
    customer = rule.customer_id if rule.customer_id is not None else (
        obs.customer_id if rule.notify_customer else None)
    return Alert(rule=rule, fingerprint=fp, open_fingerprint=fp, state=AlertState.PENDING, severity=severity,
                 target_kind=obs.target_kind, target_id=obs.target_id, target_key=obs.key[:300],
                 subject=obs.subject[:300], customer_id=customer, server_id=obs.server_id, value=obs.value,
                 threshold=rule.warning, summary=_summary(rule, obs), labels=obs.labels, started_at=now, seen_at=now)


def _fire(alert: Alert, now: dt.datetime) -> None:
    alert.state, alert.fired_at = AlertState.FIRING, now


def _resolve(alert: Alert, now: dt.datetime) -> None:
    alert.state, alert.resolved_at, alert.open_fingerprint = AlertState.RESOLVED, now, None


class Run:
    """The bookkeeping of one evaluation."""

    def __init__(self, now: dt.datetime):
        self.now = now
        self.new: list[Alert] = []
        self.changed: dict[int, Alert] = {}
        self.dropped: list[int] = []
        self.told: list[Alert] = []  # moved to firing (or escalated) or resolved: to be told

    def step(self, rule: Rule, alert: Alert | None, obs: Observation, fp: str) -> Alert | None:
        now, severity = self.now, breach(rule, obs.value)
        if alert is None:
            if severity is None:
                return None
            alert = _new_alert(rule, obs, fp, severity, now)
            if rule.for_minutes == 0:
                _fire(alert, now)
                self.told.append(alert)
            self.new.append(alert)
            return alert
        alert.rule = rule
        alert.value, alert.summary, alert.labels = obs.value, _summary(rule, obs), obs.labels
        if severity is not None:
            alert.seen_at, alert.clear_count = now, 0
            if alert.state == AlertState.PENDING:
                alert.severity = severity
                if now - alert.started_at >= dt.timedelta(minutes=rule.for_minutes):
                    _fire(alert, now)
                    self.told.append(alert)
            elif severity == Severity.CRITICAL and alert.severity != Severity.CRITICAL:
                alert.severity, alert.mailed = severity, ""  # worse: told again
                self.told.append(alert)
            elif severity == Severity.WARNING and alert.severity == Severity.CRITICAL and clear_of_critical(rule, obs):
                alert.severity = severity
        elif alert.state == AlertState.PENDING:
            self.dropped.append(alert.pk)
            return None
        elif clear(rule, obs.value):
            self._count_clear(rule, alert)
        else:
            alert.clear_count = 0  # in the band: still firing
        self.changed[alert.pk] = alert
        return alert

    def unseen(self, rule: Rule | None, alert: Alert) -> None:
        """An open alert whose target this evaluation did not see (or whose rule is gone)."""
        if alert.state == AlertState.PENDING:
            self.dropped.append(alert.pk)
            return
        if rule is None:
            _resolve(alert, self.now)
            self.told.append(alert)
        else:
            self._count_clear(rule, alert)
        self.changed[alert.pk] = alert

    def _count_clear(self, rule: Rule, alert: Alert) -> None:
        alert.clear_count += 1
        if alert.clear_count >= rule.resolve_after:
            _resolve(alert, self.now)
            self.told.append(alert)


def clear_of_critical(rule: Rule, obs: Observation) -> bool:
    """Back from critical to warning only past the critical threshold by the margin."""
    if rule.critical is None:
        return True
    if rules.direction(rule.kind) == BELOW:
        return obs.value > rule.critical + rule.margin
    return obs.value < rule.critical - rule.margin


def evaluate(now: dt.datetime | None = None) -> dict:
    """Evaluate every enabled rule once; returns what changed (for the job's log)."""
    now = now or clock()
    rules.ensure_builtin_rules()
    with transaction.atomic():
        # One evaluation at a time: the built-in rules' first row is the lock.
        list(Rule.objects.select_for_update().filter(builtin=Kind.NODE_OFFLINE).values_list("id", flat=True))
        run = _evaluate(now)
        Alert.objects.filter(pk__in=run.dropped).delete()
        for alert in run.new:
            alert.save()
        Alert.objects.bulk_update(list(run.changed.values()), [
            "state", "severity", "value", "summary", "labels", "fired_at", "resolved_at", "seen_at", "clear_count",
            "open_fingerprint", "mailed"], batch_size=500)
        for alert in run.told:
            delivery.emit(alert)
    mailed = delivery.send_mails(now)
    pushed = delivery.push_alertmanager(now)
    return {"opened": len(run.new), "told": [f"{a.rule.kind}:{a.target_key}:{a.state}" for a in run.told],
            "dropped": len(run.dropped), "open": Alert.objects.filter(open_fingerprint__isnull=False).count(),
            "mailed": mailed, "pushed": pushed}


def _evaluate(now: dt.datetime) -> Run:
    run, sources = Run(now), Sources(now)
    enabled = {rule.pk: rule for rule in Rule.objects.filter(enabled=True).select_related("customer")}
    open_alerts = {a.open_fingerprint: a for a in Alert.objects.filter(open_fingerprint__isnull=False)}
    seen, failed = set(), set()
    for rule in enabled.values():
        try:
            observations = rules.observe(rule, sources)
        except Exception:  # noqa: BLE001 - one broken reader must not stop the others
            log.exception("alerts: cannot evaluate rule %s (%s)", rule.pk, rule.kind)
            failed.add(rule.pk)
            continue
        for obs in observations:
            fp = fingerprint(rule.pk, obs.key)
            if fp in seen:
                continue
            seen.add(fp)
            alert = run.step(rule, open_alerts.get(fp), obs, fp)
            if alert is not None and alert.pk is None:
                open_alerts[fp] = alert
    for fp, alert in open_alerts.items():
        if fp in seen or alert.pk is None or alert.rule_id in failed:
            continue
        rule = enabled.get(alert.rule_id)
        if rule is not None:
            alert.rule = rule
        run.unseen(rule, alert)
    return run

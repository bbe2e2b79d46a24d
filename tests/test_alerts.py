"""Alerts (issue 20): every built-in rule fires and resolves on figures seeded into the monitoring
store, hysteresis and de-duplication, the storage forecast, customers' own rules, Alice/Bob
isolation, the signed Alertmanager-shaped webhook, e-mail (Django's locmem backend), the
Alertmanager push (a real HTTP server on loopback) and a bounded number of queries.
"""

import datetime as dt
import json

import pytest
from django.core import mail
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from panel.alerts import delivery, evaluation, rules
from panel.alerts.forecast import days_to_full
from panel.alerts.models import Alert, AlertState, Kind, Rule
from panel.env import email_settings
from panel.metrics import store
from panel.metrics.models import NodeReading
from panel.metrics.store import Point
from panel.webhooks import delivery as wd
from panel.webhooks.models import Delivery
from tests.test_webhooks import SECRET, make_hook, queued, receiver, verify  # noqa: F401 (fixtures)

pytestmark = pytest.mark.django_db

GIB = 2**30


@pytest.fixture
def now():
    return store.floor(timezone.now(), 60)


def only(kind: str, **changes) -> Rule:
    """The built-in rule of `kind`, changed as given, with every other rule disabled."""
    rules.ensure_builtin_rules()
    Rule.objects.exclude(builtin=kind).update(enabled=False)
    rule = Rule.objects.get(builtin=kind)
    for name, value in changes.items():
        setattr(rule, name, value)
    rule.enabled = True
    rule.save()
    return rule


def record(kind: str, target_id: int, at, **values):
    store.record([Point(kind, target_id, values=values)], at)


def alerts(**filters) -> list[Alert]:
    return list(Alert.objects.filter(**filters).order_by("id"))


def states(**filters) -> list[str]:
    return [a.state for a in alerts(**filters)]


# --- each built-in rule fires and resolves --------------------------------------------------------

def test_a_node_that_stops_answering_fires_and_resolves_when_it_answers(world, now):
    only(Kind.NODE_OFFLINE)
    NodeReading.objects.create(node_id=world.node.pk, tried_at=now, ok_at=now - dt.timedelta(minutes=4),
                               error="Node offline")
    evaluation.evaluate(now)
    [alert] = alerts()
    assert (alert.state, alert.severity, alert.target_kind, alert.customer_id) == ("firing", "warning", "node", None)
    assert "fake1" in alert.summary and alert.labels["node"] == "fake1"
    NodeReading.objects.filter(node_id=world.node.pk).update(ok_at=now - dt.timedelta(minutes=11))
    evaluation.evaluate(now + dt.timedelta(minutes=1))
    assert alerts()[0].severity == "critical"
    NodeReading.objects.filter(node_id=world.node.pk).update(tried_at=now + dt.timedelta(minutes=2),
                                                             ok_at=now + dt.timedelta(minutes=2), error="")
    evaluation.evaluate(now + dt.timedelta(minutes=2))
    assert states() == ["resolved"]


def test_a_collector_that_stopped_reading_fires(world, now):
    only(Kind.COLLECTOR_STALE)
    NodeReading.objects.create(node_id=world.node.pk, tried_at=now - dt.timedelta(minutes=6), ok_at=now)
    evaluation.evaluate(now)
    assert states() == ["firing"]
    NodeReading.objects.update(tried_at=now)
    evaluation.evaluate(now + dt.timedelta(minutes=1))
    assert states() == ["resolved"]


def test_storage_over_85_warns_over_95_is_critical_and_resolves_only_below_the_margin(world, now):
    only(Kind.STORAGE_FULL)  # 85 / 95, margin 2, resolve after 2 evaluations
    storage = world.node.cluster.storages.get()
    minute = dt.timedelta(minutes=1)
    steps = [(90, "firing", "warning"), (96, "firing", "critical"), (84, "firing", "critical"),
             (84, "firing", "critical"), (82, "firing", "critical"), (82, "resolved", "critical")]
    told = []
    for i, (percent, state, severity) in enumerate(steps):
        record("storage", storage.pk, now + i * minute, capacity=100 * GIB, used=percent * GIB)
        result = evaluation.evaluate(now + i * minute)
        told += result["told"]
        [alert] = alerts()
        assert (percent, alert.state, alert.severity) == (percent, state, severity)
    # told: firing, worse (critical), resolved: the value in the band (84 > 85 - 2) never resolved it
    assert [t.rsplit(":", 1)[1] for t in told] == ["firing", "firing", "resolved"]
    assert "disks" in alerts()[0].subject


def test_the_forecast_of_a_synthetic_linear_fill_is_within_5_percent():
    capacity, start, rate = 1000 * GIB, 100 * GIB, 10 * GIB / 86400  # 10 GiB a day
    times = [t * 600.0 for t in range(3 * 144)]
    used = [start + rate * t for t in times]
    days = days_to_full(times, used, capacity)
    expected = (capacity - used[-1]) / (10 * GIB)
    assert abs(days - expected) / expected < 0.05
    assert days_to_full(times, [start] * len(times), capacity) is None  # not growing: no forecast
    assert days_to_full(times[:3], used[:3], capacity) is None  # too few points


def test_a_storage_filling_at_a_steady_rate_fires_full_within_7_days_from_the_store(world, now):
    rule = only(Kind.STORAGE_FORECAST)  # below 7 days: warning; below 2: critical
    storage = world.node.cluster.storages.get()
    capacity, rate = 100 * GIB, 12 * GIB / 86400  # 12 GiB a day
    begin = now - dt.timedelta(days=3)
    used_now = 40 * GIB
    for step in range(0, 3 * 24 * 6 + 1):  # every 10 minutes for three days
        at = begin + dt.timedelta(minutes=10 * step)
        record("storage", storage.pk, at, capacity=capacity, used=used_now - rate * (now - at).total_seconds())
    store.rollup(now + dt.timedelta(hours=1))
    evaluation.evaluate(now)
    [alert] = alerts()
    expected = (capacity - used_now) / (12 * GIB)  # 5 days
    assert alert.state == "firing" and alert.severity == "warning" and rule.warning == 7
    assert abs(alert.value - expected) / expected < 0.05, (alert.value, expected)
    assert "5.0 days" in alert.summary


def test_node_memory_low_waits_its_for_duration_then_resolves(world, now):
    only(Kind.NODE_MEMORY)  # below 10 %, for 5 minutes
    for minute in range(0, 6):
        record("node", world.node.pk, now + dt.timedelta(minutes=minute), mem_avail=6 * GIB, mem_total=100 * GIB)
        evaluation.evaluate(now + dt.timedelta(minutes=minute))
        assert states() == ["pending" if minute < 5 else "firing"]
    for minute in (6, 7):
        record("node", world.node.pk, now + dt.timedelta(minutes=minute), mem_avail=50 * GIB, mem_total=100 * GIB)
        evaluation.evaluate(now + dt.timedelta(minutes=minute))
    assert states() == ["resolved"]


def test_a_pegged_cpu_fires_after_15_minutes_and_a_dip_while_pending_starts_again(world, alice_server, now):
    only(Kind.SERVER_CPU)
    at = lambda m: now + dt.timedelta(minutes=m)  # noqa: E731
    for m in range(0, 10):
        record("server", alice_server.pk, at(m), cpu=99.0)
        evaluation.evaluate(at(m))
    assert states() == ["pending"]
    record("server", alice_server.pk, at(10), cpu=40.0)
    evaluation.evaluate(at(10))
    assert states() == []  # dropped: it never fired, nobody was told
    for m in range(11, 27):
        record("server", alice_server.pk, at(m), cpu=97.0)
        evaluation.evaluate(at(m))
    [alert] = alerts()
    assert alert.state == "firing" and alert.fired_at == at(26) and alert.started_at == at(11)
    assert alert.customer_id is None  # CPU pegged tells the provider only (notify_customer off)


def test_high_steal_fires(world, alice_server, now):
    only(Kind.SERVER_STEAL, for_minutes=0)
    record("server", alice_server.pk, now, steal=60.0, cpu=50.0)
    evaluation.evaluate(now)
    assert [(a.state, a.severity) for a in alerts()] == [("firing", "critical")]


def test_a_full_guest_filesystem_fires_per_mount_and_the_owner_sees_it(world, alice_server, now):
    only(Kind.GUEST_FS)
    record("server", alice_server.pk, now - dt.timedelta(minutes=7), **{
        "fs./.used": 95 * GIB, "fs./.size": 100 * GIB, "fs./home.used": 1 * GIB, "fs./home.size": 100 * GIB})
    record("server", alice_server.pk, now, cpu=3.0)  # a newer minute without filesystems
    evaluation.evaluate(now)
    [alert] = alerts()
    assert alert.subject == "alice-web:/" and alert.customer_id == world.alice_customer.pk
    assert alert.labels == {"server": "alice-web", "server_id": str(alice_server.pk), "mount": "/"}
    record("server", alice_server.pk, now + dt.timedelta(minutes=1), **{"fs./.used": 50 * GIB, "fs./.size": 100 * GIB})
    evaluation.evaluate(now + dt.timedelta(minutes=1))
    evaluation.evaluate(now + dt.timedelta(minutes=2))
    assert states() == ["resolved"]


def test_traffic_at_80_and_100_percent_of_the_quota(world, alice_server, now):
    from panel.usage.collector import hour_of
    from panel.usage.models import UsageHour

    only(Kind.TRAFFIC_QUOTA)
    world.plan.traffic_gib = 10
    world.plan.save()
    hour = UsageHour.objects.create(server=alice_server, hour=hour_of(now), rx_bytes=6 * GIB, tx_bytes=2 * GIB + 1)
    evaluation.evaluate(now)
    assert [(a.state, a.severity) for a in alerts()] == [("firing", "warning")]
    hour.rx_bytes = 9 * GIB
    hour.save()
    evaluation.evaluate(now + dt.timedelta(minutes=1))
    assert [(a.state, a.severity) for a in alerts()] == [("firing", "critical")]


def test_a_failed_backup_fires_and_a_good_one_resolves(world, alice_server, now):
    from backup.models import Backup, BackupPlan, BackupTarget

    only(Kind.BACKUP_FAILED)
    target = BackupTarget.objects.create(name="t", kind="dir", path="/tmp")
    BackupPlan.objects.create(name="nightly", target=target, schedule="0 3 * * *")
    Backup.objects.create(server=alice_server, customer=world.alice_customer, target=target, kind="full",
                          status="failed", error="disk full")
    evaluation.evaluate(now)
    assert states() == ["firing"]
    Backup.objects.create(server=alice_server, customer=world.alice_customer, target=target, kind="full", status="done")
    evaluation.evaluate(now + dt.timedelta(minutes=1))
    assert states() == ["resolved"]


def test_a_backup_missing_for_longer_than_the_schedule_allows_fires(world, alice_server, now):
    from backup.models import Backup, BackupPlan, BackupTarget

    only(Kind.BACKUP_MISSING)  # 2 h of grace over the plan's period
    target = BackupTarget.objects.create(name="t", kind="dir", path="/tmp")
    BackupPlan.objects.create(name="nightly", target=target, schedule="0 3 * * *")
    evaluation.evaluate(now)
    assert states() == []  # a new server is not missing a backup yet
    old = Backup.objects.create(server=alice_server, customer=world.alice_customer, target=target, kind="full",
                                status="done")
    Backup.objects.filter(pk=old.pk).update(created_at=now - dt.timedelta(hours=27))
    evaluation.evaluate(now)
    [alert] = alerts()
    assert alert.state == "firing" and 2.9 < alert.value < 3.1  # 27 h - 24 h
    Backup.objects.create(server=alice_server, customer=world.alice_customer, target=target, kind="full", status="done")
    evaluation.evaluate(now + dt.timedelta(minutes=1))
    assert states() == ["resolved"]


# --- de-duplication, hysteresis, rules going away --------------------------------------------------

def test_one_open_alert_per_rule_and_target_however_often_it_is_evaluated(world, alice_server, now):
    only(Kind.SERVER_STEAL, for_minutes=0)
    for m in range(3):
        record("server", alice_server.pk, now + dt.timedelta(minutes=m), steal=30.0)
        evaluation.evaluate(now + dt.timedelta(minutes=m))
    [alert] = alerts()
    duplicate = Alert(rule=alert.rule, fingerprint=alert.fingerprint, open_fingerprint=alert.fingerprint,
                      target_kind="server", target_id=alice_server.pk, target_key="x", subject="x", threshold=1,
                      started_at=now, seen_at=now)
    with pytest.raises(IntegrityError), transaction.atomic():
        duplicate.save()
    assert alert.fingerprint == evaluation.fingerprint(alert.rule_id, f"server:{alice_server.pk}")


def test_a_new_breach_after_resolving_is_a_new_alert_with_the_same_fingerprint(world, alice_server, now):
    only(Kind.SERVER_STEAL, for_minutes=0, resolve_after=1)
    for m, steal in enumerate([30.0, 1.0, 30.0]):
        record("server", alice_server.pk, now + dt.timedelta(minutes=m), steal=steal)
        evaluation.evaluate(now + dt.timedelta(minutes=m))
    first, second = alerts()
    assert (first.state, second.state) == ("resolved", "firing")
    assert first.fingerprint == second.fingerprint and second.open_fingerprint == second.fingerprint
    assert first.open_fingerprint is None


def test_a_server_that_goes_away_resolves_its_alert_and_a_disabled_rule_resolves_at_once(world, alice_server, now):
    rule = only(Kind.SERVER_STEAL, for_minutes=0)
    record("server", alice_server.pk, now, steal=30.0)
    evaluation.evaluate(now)
    evaluation.evaluate(now + dt.timedelta(minutes=10))  # no fresh data: counts as clear
    evaluation.evaluate(now + dt.timedelta(minutes=11))
    assert states() == ["resolved"]
    record("server", alice_server.pk, now + dt.timedelta(minutes=12), steal=30.0)
    evaluation.evaluate(now + dt.timedelta(minutes=12))
    rule.enabled = False
    rule.save()
    evaluation.evaluate(now + dt.timedelta(minutes=12, seconds=30))
    assert states() == ["resolved", "resolved"]


# --- customers' rules and isolation ------------------------------------------------------------

def alice_rule(world, server, **body):
    r = world.client(world.alice_key).post("/api/v1/alert-rules/", {
        "kind": "server_cpu", "server": server.pk, "warning": 50, "name": "busy web", **body}, format="json")
    assert r.status_code == 201, r.content
    return r.json()


def test_a_customer_rule_fires_on_their_server_and_mails_their_address(world, alice_server, now):
    rules.ensure_builtin_rules()
    Rule.objects.filter(customer__isnull=True).update(enabled=False)
    rule = alice_rule(world, alice_server, email="ops@alice.example")
    assert rule["customer"] == world.alice_customer.pk and rule["builtin"] is False
    record("server", alice_server.pk, now, cpu=70.0)
    evaluation.evaluate(now)
    [alert] = alerts()
    assert alert.state == "firing" and alert.customer_id == world.alice_customer.pk
    assert [m.to for m in mail.outbox] == [["ops@alice.example"]]
    assert "busy web" in mail.outbox[0].body and "[WARNING]" in mail.outbox[0].subject


def test_bob_never_sees_alices_alerts_or_rules(world, alice_server, now):
    rules.ensure_builtin_rules()
    rule = alice_rule(world, alice_server)
    only(Kind.NODE_OFFLINE)
    Rule.objects.filter(pk=rule["id"]).update(enabled=True)
    NodeReading.objects.create(node_id=world.node.pk, tried_at=now, ok_at=now - dt.timedelta(minutes=30))
    record("server", alice_server.pk, now, cpu=70.0)
    evaluation.evaluate(now)
    node_alert, = alerts(target_kind="node")
    cpu_alert, = alerts(target_kind="server")
    alice, bob = world.client(world.alice_key), world.client(world.bob_key)
    seen = alice.get("/api/v1/alerts/").json()
    assert [a["id"] for a in seen["results"]] == [cpu_alert.pk]  # not the node's
    assert "fake1" not in json.dumps(seen)
    assert bob.get("/api/v1/alerts/").json()["results"] == []
    for path in (f"/api/v1/alerts/{cpu_alert.pk}/", f"/api/v1/alerts/{node_alert.pk}/",
                 f"/api/v1/alert-rules/{rule['id']}/", f"/api/v1/alert-rules/{node_alert.rule_id}/"):
        assert bob.get(path).status_code == 404, path
    assert alice.get(f"/api/v1/alert-rules/{node_alert.rule_id}/").status_code == 404  # built-in: admins only
    assert bob.patch(f"/api/v1/alert-rules/{rule['id']}/", {"warning": 99}, format="json").status_code == 404
    assert bob.delete(f"/api/v1/alert-rules/{rule['id']}/").status_code == 404
    r = bob.post("/api/v1/alert-rules/", {"kind": "server_cpu", "server": alice_server.pk, "warning": 5},
                 format="json")
    assert r.status_code == 400 and "server" in r.json()["fields"]
    assert Rule.objects.get(pk=rule["id"]).warning == 50
    admin = world.client(world.admin_key).get("/api/v1/alerts/").json()
    assert {a["id"] for a in admin["results"]} == {cpu_alert.pk, node_alert.pk}


def test_bad_rule_input_is_a_clear_400_and_changes_nothing(world, alice_server):
    alice = world.client(world.alice_key)
    rules.ensure_builtin_rules()
    count = Rule.objects.count()
    for body, field in [({"kind": "node_offline", "warning": 3}, "kind"),
                        ({"kind": "server_cpu", "warning": 150}, "warning"),
                        ({"kind": "server_cpu", "warning": 50, "critical": 40}, "critical"),
                        ({"kind": "server_cpu", "warning": 50, "email": "not-mail"}, "email"),
                        ({"kind": "server_cpu", "warning": "x"}, "warning"),
                        ({"kind": "server_cpu", "warning": 50, "notify_customer": True}, "notify_customer"),
                        ({"kind": "server_cpu", "warning": 5, "margin": 5}, "margin")]:
        r = alice.post("/api/v1/alert-rules/", body, format="json")
        assert r.status_code == 400 and field in r.json()["fields"], (body, r.content)
    assert Rule.objects.count() == count


def test_admins_tune_built_in_rules_but_cannot_delete_them_or_change_their_kind(world):
    rules.ensure_builtin_rules()
    admin = world.client(world.admin_key)
    builtin = Rule.objects.get(builtin=Kind.STORAGE_FULL)
    r = admin.patch(f"/api/v1/alert-rules/{builtin.pk}/", {"warning": 80, "for_minutes": 5}, format="json")
    assert r.status_code == 200 and r.json()["warning"] == 80
    assert admin.patch(f"/api/v1/alert-rules/{builtin.pk}/", {"kind": "server_cpu"}, format="json").status_code == 400
    assert admin.patch(f"/api/v1/alert-rules/{builtin.pk}/", {"warning": 180}, format="json").status_code == 400
    assert admin.delete(f"/api/v1/alert-rules/{builtin.pk}/").status_code == 409
    builtin.refresh_from_db()
    assert (builtin.warning, builtin.for_minutes, builtin.kind) == (80, 5, "storage_full")
    billing = world.client(world.billing_key)
    assert billing.get(f"/api/v1/alert-rules/{builtin.pk}/").status_code == 404


# --- delivery ----------------------------------------------------------------------------------

def test_the_webhook_is_signed_and_has_alertmanagers_shape(world, now, receiver, queued, settings):  # noqa: F811
    settings.WEBHOOKS_ALLOW_PRIVATE = ["admin"]
    settings.PANEL_URL = "https://panel.example"
    rx = receiver()
    make_hook(world.client(world.admin_key), rx.url, ["alert.firing", "alert.resolved"], secret=SECRET)
    only(Kind.NODE_OFFLINE)
    NodeReading.objects.create(node_id=world.node.pk, tried_at=now, ok_at=now - dt.timedelta(minutes=5))
    evaluation.evaluate(now)
    NodeReading.objects.update(ok_at=now + dt.timedelta(minutes=1), tried_at=now + dt.timedelta(minutes=1))
    evaluation.evaluate(now + dt.timedelta(minutes=1))
    for row in Delivery.objects.order_by("id"):
        assert wd.deliver(row.id) == "delivered"
    firing, resolved = [(json.loads(r["body"]), r) for r in rx.requests]
    for body, request in (firing, resolved):
        assert verify(SECRET, request["headers"]["X-Panel-Signature"], request["body"])
        assert body["version"] == "4" and body["receiver"] == "panel" and len(body["alerts"]) == 1
        assert set(body) >= {"groupKey", "status", "groupLabels", "commonLabels", "commonAnnotations", "externalURL",
                             "truncatedAlerts", "id", "event", "created_at", "data"}
        item = body["alerts"][0]
        assert set(item) == {"status", "labels", "annotations", "startsAt", "endsAt", "generatorURL", "fingerprint"}
        assert item["labels"]["alertname"] == "NodeOffline" and item["labels"]["node"] == "fake1"
        assert item["generatorURL"] == "https://panel.example/admin/alerts/"
    assert (firing[0]["status"], firing[0]["event"], firing[0]["alerts"][0]["endsAt"]) == (
        "firing", "alert.firing", "0001-01-01T00:00:00Z")
    assert (resolved[0]["status"], resolved[0]["event"]) == ("resolved", "alert.resolved")
    assert resolved[0]["alerts"][0]["endsAt"].startswith((now + dt.timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M"))
    assert firing[0]["alerts"][0]["fingerprint"] == resolved[0]["alerts"][0]["fingerprint"]


def test_customers_webhooks_get_only_their_servers_alerts(world, alice_server, now, queued):  # noqa: F811
    alice_hook = make_hook(world.client(world.alice_key), "http://93.184.216.34/a", ["alert.firing"])
    bob_hook = make_hook(world.client(world.bob_key), "http://93.184.216.34/b", ["alert.firing"])
    only(Kind.NODE_OFFLINE)
    rule = Rule.objects.get(builtin=Kind.GUEST_FS)
    rule.enabled = True
    rule.save()
    NodeReading.objects.create(node_id=world.node.pk, tried_at=now, ok_at=now - dt.timedelta(minutes=30))
    record("server", alice_server.pk, now, **{"fs./.used": 99, "fs./.size": 100})
    evaluation.evaluate(now)
    assert {(d.webhook_id, d.event.data["commonLabels"]["alertname"]) for d in Delivery.objects.all()} == {
        (alice_hook["id"], "GuestFs")}
    assert not Delivery.objects.filter(webhook_id=bob_hook["id"]).exists()


def test_mail_goes_to_the_provider_and_the_owner_in_their_language_and_is_retried(world, alice_server, now,
                                                                                    settings, monkeypatch):
    settings.ALERTS_EMAIL_TO = ["noc@provider.example"]
    world.alice_customer.language = "ru"
    world.alice_customer.save()
    only(Kind.GUEST_FS)
    record("server", alice_server.pk, now, **{"fs./.used": 99, "fs./.size": 100})
    original = mail.get_connection

    def broken(**kwargs):
        raise OSError("connection refused")

    monkeypatch.setattr(mail, "get_connection", broken)
    evaluation.evaluate(now)
    [alert] = alerts()
    assert alert.state == "firing" and alert.mailed == "" and "refused" in alert.mail_error and mail.outbox == []
    monkeypatch.setattr(mail, "get_connection", original)
    record("server", alice_server.pk, now + dt.timedelta(minutes=1), **{"fs./.used": 99, "fs./.size": 100})
    evaluation.evaluate(now + dt.timedelta(minutes=1))
    assert sorted(m.to[0] for m in mail.outbox) == ["alice@example.com", "noc@provider.example"]
    assert Alert.objects.get().mailed == "firing"
    record("server", alice_server.pk, now + dt.timedelta(minutes=2), **{"fs./.used": 99, "fs./.size": 100})
    evaluation.evaluate(now + dt.timedelta(minutes=2))
    assert len(mail.outbox) == 2  # told once


def test_alertmanager_gets_the_providers_firing_alerts_posted(world, now, receiver, settings):  # noqa: F811
    rx = receiver()
    settings.ALERTMANAGER_URL = f"http://127.0.0.1:{rx.port}"
    only(Kind.NODE_OFFLINE)
    NodeReading.objects.create(node_id=world.node.pk, tried_at=now, ok_at=now - dt.timedelta(minutes=30))
    assert evaluation.evaluate(now)["pushed"] == 1
    [request] = rx.requests
    assert request["path"] == "/api/v2/alerts"
    [item] = json.loads(request["body"])
    assert item["labels"]["alertname"] == "NodeOffline" and item["status"] == "firing"
    assert item["endsAt"] > item["startsAt"]  # held for a few minutes: posted again every evaluation


def test_email_url_forms():
    tls = email_settings("smtp+tls://mail.example")
    assert (tls["EMAIL_PORT"], tls["EMAIL_USE_TLS"], tls["EMAIL_USE_SSL"]) == (587, True, False)
    ssl = email_settings("smtp+ssl://mail.example")
    assert (ssl["EMAIL_PORT"], ssl["EMAIL_USE_SSL"]) == (465, True)
    plain = email_settings("smtp://u%40x:p%3Ass@mail.example:2525")
    assert (plain["EMAIL_HOST"], plain["EMAIL_PORT"], plain["EMAIL_HOST_USER"], plain["EMAIL_HOST_PASSWORD"]) == (
        "mail.example", 2525, "u@x", "p:ss")
    assert email_settings("console://")["EMAIL_BACKEND"].endswith("console.EmailBackend")
    assert email_settings("off://")["EMAIL_BACKEND"].endswith("dummy.EmailBackend")
    for bad in ("http://x", "smtp://", "smtp://h:port"):
        with pytest.raises(ValueError):
            email_settings(bad)


# --- bounded work ----------------------------------------------------------------------------

def test_the_number_of_queries_does_not_grow_with_the_servers(world, now):
    from panel.vps.models import VirtualServer

    rules.ensure_builtin_rules()
    Rule.objects.filter(customer__isnull=True).update(enabled=True)

    def make(count):
        made = VirtualServer.objects.bulk_create([VirtualServer(
            customer=world.alice_customer, plan=world.plan, node=world.node, hostname=f"s{len(made_before) + n}",
            state="running", vcpus=1, ram_mib=256, disk_gib=1) for n in range(count)])
        made_before.extend(made)
        store.record([Point("server", s.pk, values={"cpu": 99.0, "steal": 30.0, "mem_used": 1, "mem_total": 2})
                      for s in made_before], now)

    def queries() -> int:
        with CaptureQueriesContext(connection) as ctx:
            evaluation.evaluate(now)
        return len(ctx.captured_queries)

    made_before: list = []
    make(10)
    queries()  # the alerts are opened: one save each
    small = queries()
    make(300)
    queries()
    large = queries()
    # CPU pegged and steal, each pending for its for-duration, for every server
    assert Alert.objects.filter(state=AlertState.PENDING).count() == 2 * 310
    assert large <= small + 2, (small, large)  # bulk updates go in batches of 500


def test_the_evaluation_is_scheduled_every_minute(db):
    from django_q.models import Schedule

    from panel.vps.schedules import ensure_schedules

    ensure_schedules()
    row = Schedule.objects.get(name="evaluate-alerts")
    assert (row.func, row.minutes) == ("panel.alerts.evaluation.evaluate", 1)
    assert delivery.EVENTS[AlertState.FIRING] == "alert.firing"


# --- the pages -------------------------------------------------------------------------------

def seeded_alerts(world, server, now):
    """A node alert (the provider's) and a full filesystem on Alice's server (hers to see)."""
    rules.ensure_builtin_rules()
    Rule.objects.filter(customer__isnull=True).exclude(builtin__in=[Kind.NODE_OFFLINE, Kind.GUEST_FS]).update(
        enabled=False)
    NodeReading.objects.create(node_id=world.node.pk, tried_at=now, ok_at=now - dt.timedelta(minutes=30))
    record("server", server.pk, now, **{"fs./.used": 99, "fs./.size": 100})
    evaluation.evaluate(now)
    return alerts(target_kind="node")[0], alerts(target_kind="server")[0]


def test_the_customer_page_shows_their_alerts_and_makes_rules_never_a_node(world, alice_server, now):
    from tests.test_webhooks import session

    node_alert, fs_alert = seeded_alerts(world, alice_server, now)
    alice = session(world.alice)
    page = alice.get("/alerts/").content.decode()
    assert f'data-alert-id="{fs_alert.pk}"' in page and f'data-alert-id="{node_alert.pk}"' not in page
    assert "fake1" not in page and 'href="/alerts/"' in page
    r = alice.post("/alerts/", {"name": "hot", "kind": "server_cpu", "server": alice_server.pk, "warning": 80,
                                "for_minutes": 5, "email": "a@alice.example", "enabled": "on"})
    assert r.status_code == 302
    rule = Rule.objects.get(name="hot")
    assert (rule.customer_id, rule.server_id, rule.warning) == (world.alice_customer.pk, alice_server.pk, 80)
    r = alice.post("/alerts/", {"name": "bad", "kind": "server_cpu", "warning": 180, "for_minutes": 5})
    assert r.status_code == 200 and "Between 0 and 100" in r.content.decode()
    assert not Rule.objects.filter(name="bad").exists()
    bob = session(world.bob)
    assert bob.get(f"/alerts/rules/{rule.pk}/").status_code == 404
    assert bob.post(f"/alerts/rules/{rule.pk}/delete/").status_code == 404
    assert f'data-alert-id="{fs_alert.pk}"' not in bob.get("/alerts/").content.decode()
    r = bob.post("/alerts/", {"name": "sneaky", "kind": "server_cpu", "server": alice_server.pk, "warning": 1,
                              "for_minutes": 0})
    assert r.status_code == 200 and not Rule.objects.filter(name="sneaky").exists()
    assert alice.post(f"/alerts/rules/{rule.pk}/delete/").status_code == 302
    assert not Rule.objects.filter(pk=rule.pk).exists()
    assert alice.get("/admin/alerts/").status_code == 404


def test_the_admin_page_lists_every_alert_and_tunes_the_built_in_rules(world, alice_server, now):
    from tests.test_webhooks import session

    node_alert, fs_alert = seeded_alerts(world, alice_server, now)
    admin = session(world.admin)
    page = admin.get("/admin/alerts/").content.decode()
    assert f'data-alert-id="{node_alert.pk}"' in page and f'data-alert-id="{fs_alert.pk}"' in page
    assert 'id="count-critical">2<' in page
    rule = Rule.objects.get(builtin=Kind.STORAGE_FULL)
    prefix = f"r{rule.pk}"
    good = {f"{prefix}-enabled": "on", f"{prefix}-warning": "80", f"{prefix}-critical": "90",
            f"{prefix}-for_minutes": "0", f"{prefix}-margin": "2", f"{prefix}-resolve_after": "2"}
    assert admin.post(f"/admin/alerts/rules/{rule.pk}/", good).status_code == 302
    rule.refresh_from_db()
    assert (rule.warning, rule.critical) == (80, 90)
    r = admin.post(f"/admin/alerts/rules/{rule.pk}/", {**good, f"{prefix}-critical": "70"})
    assert r.status_code == 200 and "must be worse" in r.content.decode()
    rule.refresh_from_db()
    assert rule.critical == 90
    assert admin.get("/alerts/").status_code == 302

"""Issue 19's limits: the API's rate limits (per key, per address, shared by every process, 429
with Retry-After in the error format), the per-customer bounds of the create paths, and where
webhooks may send (private destinations per scope, no answer bodies kept, IPv6 forms that embed
an IPv4 address, the check at send time against what the name resolves to then).

The rates here are per day: a fixed window's edge (midnight UTC) is the one moment a test could
see its count restart.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import connection
from django.test import Client

from panel.accounts.models import ApiKey
from panel.api.models import Event
from panel.events import emit
from panel.vps.models import Operation, VirtualServer
from panel.webhooks import delivery as wd
from panel.webhooks import destinations
from panel.webhooks.models import Delivery, Webhook
from tests.test_webhooks import Receiver

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _fresh_counts(settings):
    settings.WEBHOOK_TIMEOUT_SECONDS = 5
    settings.WEBHOOKS_ALLOW_PRIVATE = []


@pytest.fixture
def queued(monkeypatch) -> list[int]:
    ids: list[int] = []
    monkeypatch.setattr(wd, "enqueue", ids.append)
    return ids


def assert_429(r, code: str) -> None:
    assert r.status_code == 429, (r.status_code, r.content)
    assert r.json()["code"] == code and r.json()["detail"], r.json()
    assert set(r.json()) == {"detail", "code"}
    assert int(r["Retry-After"]) >= 1


# --- Rate limits of the API ------------------------------------------------------------------

def test_a_key_over_its_rate_gets_429_with_retry_after_and_another_key_does_not(world, settings):
    settings.API_RATE_PER_KEY = "3/day"
    alice = world.client(world.alice_key)
    assert [alice.get("/api/v1/servers/").status_code for _ in range(3)] == [200, 200, 200]
    assert_429(alice.get("/api/v1/servers/"), "throttled")
    # A write over the rate does nothing.
    r = alice.post("/api/v1/webhooks/", {"url": "http://93.184.216.34/h", "events": ["*"]}, format="json")
    assert_429(r, "throttled")
    assert not Webhook.objects.exists()
    assert world.client(world.bob_key).get("/api/v1/servers/").status_code == 200


def test_session_callers_are_counted_per_user(world, settings):
    settings.API_RATE_PER_KEY = "2/day"
    client = Client()
    client.force_login(world.alice)
    assert [client.get("/api/v1/servers/").status_code for _ in range(2)] == [200, 200]
    assert_429(client.get("/api/v1/servers/"), "throttled")


def test_an_address_over_its_rate_gets_429_whichever_keys_it_uses(world, settings):
    settings.API_RATE_PER_ADDRESS = "4/day"
    for key in (world.admin_key, world.alice_key, world.bob_key, world.billing_key):
        assert world.client(key).get("/api/v1/plans/").status_code == 200
    assert_429(world.client(world.admin_key).get("/api/v1/plans/"), "throttled")
    other = world.client(world.admin_key)
    assert other.get("/api/v1/plans/", REMOTE_ADDR="198.51.100.7").status_code == 200


def test_wrong_keys_count_against_the_address(world, settings):
    """DRF checks throttles after the key: without this, guessing keys would be unlimited."""
    settings.API_RATE_PER_ADDRESS = "3/day"
    guesser = world.client("pk_not-a-real-key")
    assert [guesser.get("/api/v1/servers/").status_code for _ in range(3)] == [401, 401, 401]
    assert_429(guesser.get("/api/v1/servers/"), "throttled")
    assert_429(world.client().get("/api/v1/servers/"), "throttled")  # no key at all: the same address
    assert world.client(world.alice_key).get("/api/v1/servers/", REMOTE_ADDR="198.51.100.8").status_code == 200


def test_the_counts_live_in_the_database_one_statement_a_limit(world, settings):
    from django.conf import settings as live
    from django.test.utils import CaptureQueriesContext

    from panel.api.models import RateCount

    assert "default" not in getattr(live, "CACHES", {}) or "redis" not in live.CACHES["default"]["BACKEND"]
    settings.API_RATE_PER_KEY = "5/day"
    alice = world.client(world.alice_key)
    alice.get("/api/v1/plans/")
    callers = list(RateCount.objects.values_list("caller", "used"))
    assert sorted(c.split(":")[1] for c, _ in callers) == ["address", "key"] and {u for _, u in callers} == {1}
    with CaptureQueriesContext(connection) as queries:
        alice.get("/api/v1/plans/")
    counting = [q["sql"] for q in queries.captured_queries if RateCount._meta.db_table in q["sql"]]
    assert len(counting) == 2, counting
    assert set(RateCount.objects.values_list("used", flat=True)) == {2}


def test_a_new_window_forgets_ended_ones_only(world, settings):
    from panel.api.models import RateCount

    settings.API_RATE_PER_KEY = "2/minute"
    alice, bob = world.client(world.alice_key), world.client(world.bob_key)
    assert [alice.get("/api/v1/plans/").status_code for _ in range(2)] == [200, 200]
    RateCount.objects.create(caller="throttle:key:gone:60:1", used=9, expires=1)  # a window long over
    bob.get("/api/v1/plans/", REMOTE_ADDR="198.51.100.9")  # bob's first request: a new row
    assert not RateCount.objects.filter(caller="throttle:key:gone:60:1").exists()
    assert_429(alice.get("/api/v1/plans/"), "throttled")  # alice's window still counts


@pytest.mark.django_db(transaction=True)
def test_another_process_sees_the_same_counts():
    """A second Python process (another web worker, say) on the same database uses up the key's
    rate; this process then gets 429 for that key."""
    key_row, raw = ApiKey.issue(name="shared", scope="admin")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "panel.settings", "API_RATE_PER_KEY": "2/day",
           "DATABASE_URL": f"mysql://root@localhost/{connection.settings_dict['NAME']}"}
    if connection.vendor != "mysql":
        pytest.skip("needs a database both processes reach (make test runs MariaDB)")
    script = ("import django; django.setup()\n"
              "from rest_framework.test import APIClient\n"
              "c = APIClient(); c.credentials(HTTP_AUTHORIZATION='Token %s')\n"
              "print([c.get('/api/v1/plans/').status_code for _ in range(2)])\n" % raw)
    try:
        out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=120)
        assert out.stdout.strip() == "[200, 200]", out.stderr[-2000:]
        from django.test import override_settings
        from rest_framework.test import APIClient

        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
        with override_settings(API_RATE_PER_KEY="2/day"):
            assert_429(client.get("/api/v1/plans/"), "throttled")
    finally:
        from panel.api.models import RateCount

        RateCount.objects.all().delete()  # committed rows: the next tests must not inherit them
        key_row.delete()


def test_429_is_documented_for_every_operation():
    from tests.test_api_fuzz import OPENAPI

    for path, methods in OPENAPI["paths"].items():
        for method, operation in methods.items():
            if method in ("get", "post", "patch", "put", "delete"):
                assert "429" in operation["responses"], (method, path)


def test_a_bad_rate_setting_is_a_clear_error(world, settings):
    from django.core.exceptions import ImproperlyConfigured

    settings.API_RATE_PER_KEY = "lots"
    with pytest.raises(ImproperlyConfigured, match="API_RATE_PER_KEY"):
        world.client(world.alice_key).get("/api/v1/servers/")


# --- Per-customer bounds ---------------------------------------------------------------------

def test_a_customer_at_its_server_limit_is_refused_and_nothing_is_made(world, alice_server, settings):
    settings.LIMIT_SERVERS_PER_CUSTOMER = 1
    body = {"plan": world.plan.id, "hostname": "alice-two", "os_template": "tiny"}
    for key in (world.alice_key, world.billing_key):
        r = world.client(key).post("/api/v1/servers/", {**body, "customer": world.alice_customer.id}, format="json")
        assert r.status_code == 409 and r.json()["code"] == "limit_reached", r.json()
    assert VirtualServer.objects.filter(customer=world.alice_customer).count() == 1
    assert not Operation.objects.filter(kind="create").exclude(server=alice_server).exists()
    # Bob has his own count; the provider's admins are not bounded.
    r = world.client(world.bob_key).post("/api/v1/servers/", {**body, "hostname": "bob-one"}, format="json")
    assert r.status_code == 202, r.json()
    r = world.client(world.admin_key).post("/api/v1/servers/", {**body, "customer": world.alice_customer.id},
                                           format="json")
    assert r.status_code == 202, r.json()


def test_a_customer_at_its_api_key_limit_is_refused_by_the_api_and_the_ui(world, settings):
    settings.LIMIT_API_KEYS_PER_CUSTOMER = 2  # Alice has one (the fixture's)
    alice = world.client(world.alice_key)
    body = {"name": "ci", "scope": "customer", "customer": world.alice_customer.id}
    assert alice.post("/api/v1/api-keys/", body, format="json").status_code == 201
    r = alice.post("/api/v1/api-keys/", body, format="json")
    assert r.status_code == 409 and r.json()["code"] == "limit_reached", r.json()
    page = Client()
    page.force_login(world.alice)
    r = page.post("/api-keys/", {"name": "from-the-page"})
    assert r.status_code == 200 and "limit" in r.content.decode()
    assert ApiKey.objects.filter(customer=world.alice_customer).count() == 2
    # A revoked key frees its place.
    ApiKey.objects.filter(customer=world.alice_customer, name="ci").get().revoke()
    assert alice.post("/api/v1/api-keys/", body, format="json").status_code == 201


def test_webhooks_are_bounded_per_customer_and_for_billing_keys(world, settings):
    """The issue's case: one key, many webhooks to one URL, every event sent that many times."""
    settings.LIMIT_WEBHOOKS_PER_CUSTOMER = 3
    body = {"url": "http://93.184.216.34/hook", "events": ["*"]}
    for key in (world.alice_key, world.billing_key):
        client = world.client(key)
        assert [client.post("/api/v1/webhooks/", body, format="json").status_code for _ in range(3)] == [201] * 3
        r = client.post("/api/v1/webhooks/", body, format="json")
        assert r.status_code == 409 and r.json()["code"] == "limit_reached", r.json()
    assert Webhook.objects.filter(customer=world.alice_customer).count() == 3
    assert Webhook.objects.filter(customer__isnull=True).count() == 3
    assert world.client(world.bob_key).post("/api/v1/webhooks/", body, format="json").status_code == 201
    assert world.client(world.admin_key).post("/api/v1/webhooks/", body, format="json").status_code == 201


def test_console_urls_are_rate_limited_per_customer(world, alice_server, settings):
    from novnc.models import ConsoleToken

    settings.LIMIT_CONSOLE_TOKENS_PER_MINUTE = 2
    alice = world.client(world.alice_key)
    url = f"/api/v1/servers/{alice_server.id}/console/"
    assert [alice.post(url).status_code for _ in range(2)] == [201, 201]
    r = alice.post(url)
    assert_429(r, "rate_limited")
    assert int(r["Retry-After"]) <= 61
    assert ConsoleToken.objects.count() == 2
    # The customer's count, whichever of its keys or users asks; the admin is not bounded.
    assert_429(world.client(world.billing_key).post(url), "rate_limited")
    assert world.client(world.admin_key).post(url).status_code == 201


def test_backups_are_rate_limited_per_customer(world, alice_server, settings):
    settings.LIMIT_BACKUPS_PER_HOUR = 2
    world.plan.backups = 3
    world.plan.save()
    for _ in range(2):
        Operation.objects.create(kind=Operation.Kind.BACKUP, server=alice_server, customer=world.alice_customer,
                                 status=Operation.Status.SUCCEEDED)
    r = world.client(world.alice_key).post(f"/api/v1/servers/{alice_server.id}/backup/", {}, format="json")
    assert_429(r, "rate_limited")
    assert 3000 < int(r["Retry-After"]) <= 3601
    assert Operation.objects.filter(kind=Operation.Kind.BACKUP).count() == 2


# --- Where webhooks may send -----------------------------------------------------------------

def test_a_billing_key_cannot_aim_a_webhook_at_the_panels_network(world):
    r = world.client(world.billing_key).post("/api/v1/webhooks/", {"url": "http://10.0.0.5/billing", "events": ["*"]},
                                             format="json")
    assert r.status_code == 400 and "url" in r.json()["fields"], r.json()
    assert not Webhook.objects.exists()


def test_a_billing_webhook_to_a_private_address_is_refused_at_send_time(world, queued, settings):
    """A provider webhook made before the rule (the migration marks those billing) or while the
    setting allowed it: nothing is sent to the private address."""
    rx = Receiver()
    try:
        hook = Webhook(url=rx.url, events=["*"], scope=Webhook.Scope.BILLING)
        hook.secret = "s" * 32
        hook.save()
        emit("node.up", node=1)
        row = Delivery.objects.get()
        assert wd.deliver(row.id) == "failed"
        assert rx.requests == []
        settings.WEBHOOKS_ALLOW_PRIVATE = ["billing"]  # the admin's explicit choice
        emit("node.up", node=2)
        assert wd.deliver(Delivery.objects.exclude(pk=row.pk).get().id) == "delivered"
        assert len(rx.requests) == 1
    finally:
        rx.stop()


def test_only_the_status_of_a_failed_answer_is_kept(world, queued, settings):
    settings.WEBHOOKS_ALLOW_PRIVATE = ["admin"]
    rx = Receiver(fail_first=1)
    try:
        hook = Webhook(url=rx.url, events=["*"], scope=Webhook.Scope.ADMIN)
        hook.secret = "s" * 32
        hook.save()
        emit("node.up", node=1)
        row = Delivery.objects.get()
        assert wd.deliver(row.id) == "pending"
        row.refresh_from_db()
        assert row.last_error == "HTTP 500" and row.last_status_code == 500  # the receiver's body was "no"
        body = world.client(world.admin_key).get(f"/api/v1/webhooks/{hook.id}/deliveries/").json()
        assert body["results"][0]["last_error"] == "HTTP 500"
    finally:
        rx.stop()


def test_the_migration_marks_old_provider_webhooks_billing_and_drops_kept_bodies(world):
    import importlib

    from django.apps import apps

    migration = importlib.import_module("panel.webhooks.migrations.0002_scope_and_status_only")
    provider = Webhook(url="http://93.184.216.34/p", events=["*"], scope=Webhook.Scope.ADMIN)
    provider.secret = "s" * 32
    provider.save()
    customer = Webhook(url="http://93.184.216.34/c", events=["*"], customer=world.alice_customer)
    customer.secret = "s" * 32
    customer.save()
    event = Event.objects.create(event="node.up", data={})
    kept = Delivery.objects.create(webhook=provider, event=event, give_up_at=event.created_at,
                                   last_error="HTTP 500: root:x:0:0:root:/root:/bin/bash")
    migration.fill_scope_and_strip_bodies(apps, None)
    provider.refresh_from_db()
    customer.refresh_from_db()
    kept.refresh_from_db()
    assert (provider.scope, customer.scope) == ("billing", "customer")
    assert kept.last_error == "HTTP 500"


EMBEDDING = ["2002:7f00:1::1", "2002:a00:1::1", "2002:c0a8:101::1", "::ffff:127.0.0.1", "::ffff:8.8.8.8",
             "64:ff9b::7f00:1", "64:ff9b::808:808", "64:ff9b:1::a00:1", "2001:0:4136:e378:8000:63bf:3fff:fdd2",
             "::7f00:1", "::a00:1"]


@pytest.mark.parametrize("address", EMBEDDING)
def test_ipv6_forms_that_embed_an_ipv4_address_are_not_public(address):
    assert destinations.is_public(address) is False


def test_plain_public_addresses_still_are():
    assert destinations.is_public("2606:4700:4700::1111") and destinations.is_public("93.184.216.34")


@pytest.mark.parametrize("address", ["2002:7f00:1::1", "2002:a9fe:a9fe::1"])
def test_a_customer_cannot_reach_loopback_or_metadata_through_6to4(world, address):
    r = world.client(world.alice_key).post("/api/v1/webhooks/", {"url": f"http://[{address}]/", "events": ["*"]},
                                           format="json")
    assert r.status_code == 400 and "url" in r.json()["fields"], r.json()
    assert not Webhook.objects.exists()


def test_the_name_is_resolved_again_at_send_time_dns_rebinding(world, queued, monkeypatch):
    """Public when the webhook is saved, 127.0.0.1 when it is sent: refused, nothing connects."""
    rx = Receiver()
    real = socket.getaddrinfo
    answer = {"ip": "93.184.216.34"}

    def dns(host, port, *args, **kwargs):
        if host == "rebind.example.test":
            return real(answer["ip"], port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", dns)
    try:
        url = f"http://rebind.example.test:{rx.port}/hook"
        r = world.client(world.alice_key).post("/api/v1/webhooks/", {"url": url, "events": ["*"]}, format="json")
        assert r.status_code == 201, r.json()
        answer["ip"] = "127.0.0.1"
        emit("server.created", customer_id=world.alice_customer.id, server=1)
        row = Delivery.objects.get()
        assert wd.deliver(row.id) == "failed"
        row.refresh_from_db()
        assert "127.0.0.1" in row.last_error and rx.requests == []
    finally:
        rx.stop()


def test_a_name_that_does_not_resolve_yet_is_accepted_and_checked_at_each_send(world, queued, monkeypatch):
    """E.g. a billing system's endpoint whose DNS is still being set up: the send decides."""
    real = socket.getaddrinfo

    def dns(host, *args, **kwargs):
        if host == "later.example.test":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", dns)
    for key in (world.alice_key, world.billing_key):
        r = world.client(key).post("/api/v1/webhooks/", {"url": "https://later.example.test/hook", "events": ["*"]},
                                   format="json")
        assert r.status_code == 201, r.json()
    emit("server.created", customer_id=world.alice_customer.id, server=1)
    for row in Delivery.objects.all():
        assert wd.deliver(row.id) == "pending"  # retried later, as any failure to resolve
        row.refresh_from_db()
        assert "does not resolve" in row.last_error


@pytest.fixture
def redis_url(tmp_path):

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 0.1).close()
                break
            except OSError:
                import time

                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(10)


def test_with_redis_the_counts_live_there(world, settings, redis_url):
    import redis

    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": redis_url}}
    settings.API_RATE_PER_KEY = "2/day"
    alice = world.client(world.alice_key)
    assert [alice.get("/api/v1/plans/").status_code for _ in range(2)] == [200, 200]
    assert_429(alice.get("/api/v1/plans/"), "throttled")
    direct = redis.Redis.from_url(redis_url)
    keys = [k for k in direct.keys("*") if b"throttle:key:" in k]
    assert len(keys) == 1 and 0 < direct.ttl(keys[0]) <= 86401


@pytest.mark.parametrize("value, scopes", [("", []), ("0", []), ("1", ["admin", "billing", "customer"]),
                                           ("true", ["admin", "billing", "customer"]),
                                           ("billing", ["billing"]), ("admin, customer", ["admin", "customer"])])
def test_the_private_destinations_setting_names_scopes(monkeypatch, value, scopes):
    import runpy

    monkeypatch.setenv("WEBHOOKS_ALLOW_PRIVATE", value)
    assert runpy.run_path(str(ROOT / "panel" / "settings.py"))["WEBHOOKS_ALLOW_PRIVATE"] == scopes


def test_an_unknown_scope_in_the_setting_stops_the_panel(monkeypatch):
    import runpy

    from django.core.exceptions import ImproperlyConfigured

    monkeypatch.setenv("WEBHOOKS_ALLOW_PRIVATE", "admins")
    with pytest.raises(ImproperlyConfigured, match="WEBHOOKS_ALLOW_PRIVATE"):
        runpy.run_path(str(ROOT / "panel" / "settings.py"))

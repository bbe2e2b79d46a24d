"""API keys: authentication, storage, revocation, creation, the management command, the audit log."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from rest_framework.test import APIClient

from panel.accounts.models import ApiKey, AuditEntry, Customer
from panel.vps.models import VirtualServer

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def session(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def every_stored_text() -> str:
    """Every value of every row of every table, as one string: what a database dump would show."""
    chunks = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            for row in cursor.fetchall():
                chunks.extend(v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in row)
    return "\n".join(chunks)


@pytest.mark.parametrize("headers", [
    {},
    {"HTTP_AUTHORIZATION": "Token pk_not-a-real-key"},
    {"HTTP_AUTHORIZATION": "Token "},
    {"HTTP_AUTHORIZATION": "Token a b"},
    {"HTTP_AUTHORIZATION": "Bearer pk_whatever"},
    {"HTTP_AUTHORIZATION": "Token \u00e9\u00e9"},
])
@pytest.mark.parametrize("url", ["/api/v1/servers/", "/api/v1/customers/", "/api/v1/plans/"])
def test_it_answers_401_without_a_valid_key(world, headers, url):
    r = APIClient().get(url, **headers)
    assert r.status_code == 401, (r.status_code, r.content)
    body = r.json()
    assert set(body) == {"detail", "code"} and body["detail"] and body["code"]
    assert r["WWW-Authenticate"] == "Token"


def test_it_answers_401_to_a_post_without_a_key_and_does_nothing(world):
    body = {"customer": world.alice_customer.id, "plan": world.plan.id, "hostname": "anon", "os_template": "tiny"}
    r = APIClient().post("/api/v1/servers/", body, format="json", HTTP_IDEMPOTENCY_KEY="k1")
    assert r.status_code == 401 and r.json()["code"] == "not_authenticated"
    assert not VirtualServer.objects.exists()


def test_a_session_post_needs_the_csrf_token(world, alice_server):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(world.alice)
    r = client.post(f"/api/v1/servers/{alice_server.id}/stop/", {"force": True}, format="json")
    assert r.status_code == 403 and "CSRF" in r.json()["detail"]
    assert VirtualServer.objects.get(pk=alice_server.pk).state == "running"
    # A key needs no CSRF token: it is not sent by browsers on their own.
    keyed = APIClient(enforce_csrf_checks=True)
    keyed.credentials(HTTP_AUTHORIZATION=f"Token {world.alice_key}")
    assert keyed.post(f"/api/v1/servers/{alice_server.id}/stop/", {"force": True}, format="json").status_code == 202


def test_a_real_login_works_on_the_api(world):
    client = APIClient()
    assert client.login(username="bob", password="bob-pass-1234")
    r = client.get("/api/v1/customers/")
    assert r.status_code == 200 and [c["id"] for c in r.json()["results"]] == [world.bob_customer.id]


def test_a_wrong_key_is_a_401_with_the_error_format(world):
    r = world.client("pk_" + "x" * 43).get("/api/v1/servers/")
    assert r.status_code == 401
    assert r.json() == {"detail": "Invalid or revoked API key.", "code": "authentication_failed"}


def test_a_revoked_key_is_a_401_afterwards(world):
    alice = world.client(world.alice_key)
    assert alice.get("/api/v1/servers/").status_code == 200
    key = ApiKey.objects.get(key_hash=ApiKey.hash(world.alice_key))
    r = world.client(world.admin_key).delete(f"/api/v1/api-keys/{key.id}/")
    assert r.status_code == 204
    key.refresh_from_db()
    assert key.revoked_at is not None and ApiKey.objects.filter(pk=key.pk).exists()  # revoked, kept
    r = alice.get("/api/v1/servers/")
    assert r.status_code == 401 and set(r.json()) == {"detail", "code"}
    assert AuditEntry.objects.filter(action="api_key.revoke", object_id=str(key.id)).exists()
    # The admin still sees it, marked revoked.
    shown = world.client(world.admin_key).get(f"/api/v1/api-keys/{key.id}/")
    assert shown.status_code == 200 and shown.data["revoked_at"]


def test_a_customer_revokes_their_own_key(world):
    key, raw = ApiKey.issue(name="script", scope="customer", customer=world.alice_customer)
    r = session(world.alice).delete(f"/api/v1/api-keys/{key.id}/")
    assert r.status_code == 204
    assert world.client(raw).get("/api/v1/servers/").status_code == 401


def test_keys_are_stored_hashed(world):
    for raw in (world.admin_key, world.billing_key, world.alice_key, world.bob_key):
        key = ApiKey.objects.get(key_hash=ApiKey.hash(raw))
        assert key.key_hash != raw and len(key.key_hash) == 64
        assert raw.startswith(key.prefix) and len(key.prefix) < len(raw)
    dump = every_stored_text()
    for raw in (world.admin_key, world.billing_key, world.alice_key, world.bob_key):
        assert raw not in dump


def test_last_use_is_recorded(world):
    key = ApiKey.objects.get(key_hash=ApiKey.hash(world.bob_key))
    assert key.last_used_at is None and key.last_used_from is None
    assert world.client(world.bob_key).get("/api/v1/servers/").status_code == 200
    key.refresh_from_db()
    assert key.last_used_at is not None and key.last_used_from == "127.0.0.1"


def test_a_failed_request_with_a_revoked_key_does_not_touch_last_use(world):
    key = ApiKey.objects.get(key_hash=ApiKey.hash(world.bob_key))
    key.revoke()
    world.client(world.bob_key).get("/api/v1/servers/")
    key.refresh_from_db()
    assert key.last_used_at is None


def test_creating_a_key_answers_the_raw_key_once(world):
    admin = world.client(world.admin_key)
    r = admin.post("/api/v1/api-keys/", {"name": "whmcs", "scope": "billing"}, format="json")
    assert r.status_code == 201, r.data
    raw = r.data["key"]
    assert raw.startswith("pk_") and raw.startswith(r.data["prefix"])
    key = ApiKey.objects.get(pk=r.data["id"])
    assert key.key_hash == ApiKey.hash(raw) and key.scope == "billing" and key.customer is None
    assert world.client(raw).get("/api/v1/customers/").status_code == 200
    assert "key" not in admin.get(f"/api/v1/api-keys/{key.id}/").data
    listed = admin.get("/api/v1/api-keys/").data["results"]
    assert all("key" not in row and "key_hash" not in row for row in listed)
    assert raw not in admin.get("/api/v1/api-keys/").content.decode()
    assert raw not in every_stored_text()
    assert AuditEntry.objects.filter(action="api_key.create", object_id=str(key.id)).exists()


def test_a_created_key_is_never_stored_even_with_an_idempotency_key(world):
    """The raw key is shown once and stored nowhere, also when the create was idempotent."""
    admin = world.client(world.admin_key)
    r = admin.post("/api/v1/api-keys/", {"name": "whmcs", "scope": "billing"}, format="json",
                   HTTP_IDEMPOTENCY_KEY="new-billing-key")
    assert r.status_code == 201
    raw = r.data["key"]
    assert raw not in every_stored_text()
    again = admin.post("/api/v1/api-keys/", {"name": "whmcs", "scope": "billing"}, format="json",
                       HTTP_IDEMPOTENCY_KEY="new-billing-key")
    assert raw not in again.content.decode()


@pytest.mark.parametrize("how", ["session", "key"])
def test_a_customer_creates_customer_keys_for_their_own_customer(world, how):
    client = session(world.alice) if how == "session" else world.client(world.alice_key)
    r = client.post("/api/v1/api-keys/", {"name": "my-script", "scope": "customer",
                                          "customer": world.alice_customer.id}, format="json")
    assert r.status_code == 201, r.data
    key = ApiKey.objects.get(pk=r.data["id"])
    assert key.scope == "customer" and key.customer == world.alice_customer
    assert [row["id"] for row in world.client(r.data["key"]).get("/api/v1/customers/").data["results"]] \
        == [world.alice_customer.id]


@pytest.mark.parametrize("how", ["session", "key"])
@pytest.mark.parametrize("body", [
    {"name": "x", "scope": "admin"},
    {"name": "x", "scope": "billing"},
    {"name": "x", "scope": "customer", "customer": "bob"},
])
def test_a_customer_cannot_create_other_keys(world, how, body):
    bobs = body.get("customer") == "bob"
    body = {**body, "customer": world.bob_customer.id} if bobs else body
    client = session(world.alice) if how == "session" else world.client(world.alice_key)
    r = client.post("/api/v1/api-keys/", body, format="json")
    # Bob's customer is not among Alice's: "does not exist" (issue 19), not a 403 that says it is.
    assert r.status_code == (400 if bobs else 403), (r.status_code, r.content)
    assert r.json()["code"] == ("invalid" if bobs else "permission_denied") and "key" not in r.json()
    assert not ApiKey.objects.filter(name="x").exists()


def test_billing_cannot_create_keys(world):
    r = world.client(world.billing_key).post("/api/v1/api-keys/", {"name": "x", "scope": "admin"}, format="json")
    assert r.status_code == 403 and not ApiKey.objects.filter(name="x").exists()


@pytest.mark.parametrize("body, field", [
    ({"name": "x", "scope": "customer"}, "customer"),
    ({"name": "x", "scope": "billing", "customer": "alice"}, "customer"),
    ({"name": "x", "scope": "root"}, "scope"),
    ({"scope": "billing"}, "name"),
])
def test_bad_key_requests_are_a_400(world, body, field):
    if body.get("customer") == "alice":
        body = {**body, "customer": world.alice_customer.id}
    r = world.client(world.admin_key).post("/api/v1/api-keys/", body, format="json")
    assert r.status_code == 400 and r.json()["code"] == "invalid" and field in r.json()["fields"]
    assert ApiKey.objects.count() == 4


def test_create_api_key_command_prints_a_working_key_last(world):
    out = StringIO()
    call_command("create_api_key", "--scope", "billing", "--name", "hostbill", stdout=out)
    lines = out.getvalue().strip().splitlines()
    raw = lines[-1].strip()
    key = ApiKey.objects.get(name="hostbill")
    assert key.scope == "billing" and key.key_hash == ApiKey.hash(raw) and key.key_hash != raw
    assert world.client(raw).get("/api/v1/customers/").data["count"] == 2
    assert raw not in every_stored_text()
    assert AuditEntry.objects.filter(action="api_key.create", object_id=str(key.id)).exists()


def test_create_api_key_command_makes_customer_keys(world):
    out = StringIO()
    call_command("create_api_key", "--scope", "customer", "--customer", str(world.bob_customer.id),
                 "--name", "bobs", stdout=out)
    raw = out.getvalue().strip().splitlines()[-1]
    assert [c["id"] for c in world.client(raw).get("/api/v1/customers/").data["results"]] == [world.bob_customer.id]


@pytest.mark.parametrize("args", [
    ["--scope", "customer", "--name", "x"],
    ["--scope", "billing", "--name", "x", "--customer", "CUSTOMER"],
    ["--scope", "customer", "--name", "x", "--customer", "999999"],
])
def test_create_api_key_command_refuses_bad_combinations(world, args):
    args = [str(world.alice_customer.id) if a == "CUSTOMER" else a for a in args]
    with pytest.raises(CommandError):
        call_command("create_api_key", *args, stdout=StringIO())
    assert not ApiKey.objects.filter(name="x").exists()


def test_create_api_key_command_refuses_an_unknown_scope(world):
    with pytest.raises(CommandError):
        call_command("create_api_key", "--scope", "root", "--name", "x", stdout=StringIO(), stderr=StringIO())


def test_the_audit_log_records_a_server_action_by_key(world, alice_server):
    r = world.client(world.alice_key).post(f"/api/v1/servers/{alice_server.id}/stop/", {"force": True},
                                           format="json")
    assert r.status_code == 202
    entry = AuditEntry.objects.get(action="server.stop")
    key = ApiKey.objects.get(key_hash=ApiKey.hash(world.alice_key))
    assert entry.api_key == key and entry.user is None
    assert entry.actor_repr == "api-key:alice"
    assert entry.customer == world.alice_customer
    assert (entry.object_type, entry.object_id, entry.object_repr) == ("virtualserver", str(alice_server.id),
                                                                      "alice-web")
    assert entry.address == "127.0.0.1"
    assert entry.detail["operation"] == r.data["id"] and entry.detail["force"] is True


def test_the_audit_log_records_a_server_action_by_session(world, alice_server):
    r = session(world.alice).post(f"/api/v1/servers/{alice_server.id}/reboot/")
    assert r.status_code == 202
    entry = AuditEntry.objects.get(action="server.reboot")
    assert entry.user == world.alice and entry.api_key is None and entry.actor_repr == "alice"
    assert entry.address == "127.0.0.1" and entry.object_id == str(alice_server.id)


def test_the_audit_log_records_a_customer_create(world):
    r = world.client(world.billing_key).post(
        "/api/v1/customers/", {"external_id": "C-9", "email": "carol@example.com", "name": "Carol"}, format="json")
    assert r.status_code == 201, r.data
    entry = AuditEntry.objects.get(action="customer.create")
    assert entry.api_key == ApiKey.objects.get(key_hash=ApiKey.hash(world.billing_key))
    assert entry.actor_repr == "api-key:billing" and entry.user is None
    assert (entry.object_type, entry.object_id, entry.object_repr) == ("customer", str(r.data["id"]), "Carol")
    assert entry.address == "127.0.0.1"
    # The admin reads it through the API.
    rows = world.client(world.admin_key).get("/api/v1/audit-log/?action=customer.create").data["results"]
    assert [(row["object_id"], row["address"], row["actor_repr"]) for row in rows] == \
        [(str(r.data["id"]), "127.0.0.1", "api-key:billing")]


def test_the_audit_address_is_the_proxys_client_only_behind_a_trusted_proxy(world, settings):
    settings.TRUSTED_PROXY = False
    body = {"email": "d@example.com", "name": "Dave"}
    world.client(world.billing_key).post("/api/v1/customers/", {**body, "external_id": "D-1"}, format="json",
                                         HTTP_X_FORWARDED_FOR="203.0.113.9")
    assert AuditEntry.objects.get(action="customer.create").address == "127.0.0.1"
    settings.TRUSTED_PROXY = True
    world.client(world.billing_key).post("/api/v1/customers/", {**body, "external_id": "D-2"}, format="json",
                                         HTTP_X_FORWARDED_FOR="198.51.100.1, 203.0.113.9")
    latest = AuditEntry.objects.filter(action="customer.create").order_by("-id").first()
    assert latest.address == "203.0.113.9"
    assert Customer.objects.filter(external_id__in=["D-1", "D-2"]).count() == 2

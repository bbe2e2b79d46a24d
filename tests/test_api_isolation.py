"""Tenant isolation through the API: Bob never sees nor touches what is Alice's.

The pattern of healthchecks' hc/test.py: Alice owns the objects, Bob (another customer) tries
every endpoint that names one, with his customer API key and with his browser session, and
gets 404 — and nothing has changed afterwards. Admin-only endpoints are 403 for customers
and for billing keys.
"""

from dataclasses import dataclass

import pytest
from rest_framework.test import APIClient

from nodes.connection import driver_for
from panel.accounts.models import ApiKey, AuditEntry, Customer
from panel.vps.models import Operation, Plan, VirtualServer

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    """The world's four users are hashed at every setup: a fast hasher keeps this file quick."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@dataclass
class Alices:
    server: VirtualServer
    operation: Operation
    customer: Customer
    key: ApiKey


@pytest.fixture
def alices(world, alice_server):
    return Alices(
        server=alice_server,
        operation=Operation.objects.get(server=alice_server, kind="create"),
        customer=world.alice_customer,
        key=ApiKey.objects.get(name="alice"),
    )


@pytest.fixture
def bob_server(world):
    from panel.accounts.tenancy import SYSTEM
    from panel.vps import lifecycle

    server, _, _ = lifecycle.create_server(SYSTEM, customer=world.bob_customer, plan=world.plan, hostname="bob-web",
                                           os_template="tiny")
    server.refresh_from_db()
    assert server.state == "running", server.error
    return server


def session(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def bob_client(world, how: str) -> APIClient:
    return world.client(world.bob_key) if how == "key" else session(world.bob)


BOB = ["key", "session"]

# (method, url template, body): every endpoint that names one of Alice's objects.
OBJECT_ENDPOINTS = [
    ("get", "/api/v1/servers/{server}/", None),
    ("post", "/api/v1/servers/{server}/start/", None),
    ("post", "/api/v1/servers/{server}/stop/", {"force": True}),
    ("post", "/api/v1/servers/{server}/reboot/", {"force": True}),
    ("post", "/api/v1/servers/{server}/suspend/", {"reason": "bob says so"}),
    ("post", "/api/v1/servers/{server}/unsuspend/", None),
    ("delete", "/api/v1/servers/{server}/", None),
    ("get", "/api/v1/operations/{operation}/", None),
    ("get", "/api/v1/customers/{customer}/", None),
    ("patch", "/api/v1/customers/{customer}/", {"name": "Pwned", "email": "bob@example.com"}),
    ("delete", "/api/v1/customers/{customer}/", None),
    ("get", "/api/v1/api-keys/{key}/", None),
    ("delete", "/api/v1/api-keys/{key}/", None),
]


def url_of(template: str, a: Alices) -> str:
    return template.format(server=a.server.id, operation=a.operation.id, customer=a.customer.id, key=a.key.id)


def call(client: APIClient, method: str, url: str, body):
    if body is None:
        return getattr(client, method)(url)
    return getattr(client, method)(url, body, format="json")


def snapshot(a: Alices) -> dict:
    """Everything a request on Alice's objects could change."""
    server = VirtualServer.objects.get(pk=a.server.pk)
    domain = driver_for("fake://fake1").host.domains[a.server.domain_name]
    customer = Customer.objects.get(pk=a.customer.pk)
    return {
        "server": (server.state, server.suspend_reason, server.state_before_suspend, server.hostname),
        "domain": (domain["state"], domain["boot_id"]),
        "disk": a.server.disk_volume in driver_for("fake://fake1").host.pools["panel-disks"],
        "operations": list(Operation.objects.order_by("id").values_list("id", "status")),
        "customer": (customer.name, customer.email, customer.external_id),
        "key_revoked_at": ApiKey.objects.get(pk=a.key.pk).revoked_at,
        "audit": AuditEntry.objects.count(),
    }


@pytest.mark.parametrize("how", BOB)
@pytest.mark.parametrize("method, template, body", OBJECT_ENDPOINTS,
                         ids=[f"{m} {t}" for m, t, _ in OBJECT_ENDPOINTS])
def test_it_hides_alices_objects_from_bob(world, alices, how, method, template, body):
    before = snapshot(alices)
    r = call(bob_client(world, how), method, url_of(template, alices), body)
    assert r.status_code == 404, (r.status_code, r.content)
    assert r.json() == {"detail": "Not found.", "code": "not_found"}
    assert snapshot(alices) == before
    # Alice's own key still works (it was not revoked) and sees an unchanged server.
    again = world.client(world.alice_key).get(f"/api/v1/servers/{alices.server.id}/")
    assert again.status_code == 200 and again.data["state"] == "running"


@pytest.mark.parametrize("how", BOB)
@pytest.mark.parametrize("method, template, body", OBJECT_ENDPOINTS,
                         ids=[f"{m} {t}" for m, t, _ in OBJECT_ENDPOINTS])
def test_it_answers_bob_the_same_for_alices_objects_and_for_missing_ones(world, alices, how, method, template,
                                                                          body):
    """Whatever the status, Alice's object is indistinguishable from one that does not exist."""
    client = bob_client(world, how)
    missing = Alices(server=VirtualServer(pk=987654321), operation=Operation(pk=987654321),
                     customer=Customer(pk=987654321), key=ApiKey(pk=987654321))
    before = snapshot(alices)
    theirs = call(client, method, url_of(template, alices), body)
    nothing = call(client, method, url_of(template, missing), body)
    assert (theirs.status_code, theirs.json()) == (nothing.status_code, nothing.json())
    assert theirs.status_code in (403, 404)
    assert snapshot(alices) == before


@pytest.mark.parametrize("method, template, body",
                         [e for e in OBJECT_ENDPOINTS if e[0] == "get"],
                         ids=[t for m, t, _ in OBJECT_ENDPOINTS if m == "get"])
def test_alice_and_the_admin_do_see_those_objects(world, alices, method, template, body):
    """The control for the 404s above: the URLs are right, the objects are there."""
    for client in (world.client(world.alice_key), session(world.alice), world.client(world.admin_key),
                   session(world.admin)):
        r = call(client, method, url_of(template, alices), body)
        assert r.status_code == 200, (r.status_code, r.content)


def results(r) -> list[dict]:
    assert r.status_code == 200, (r.status_code, r.content)
    assert r.data["count"] == len(r.data["results"])
    return r.data["results"]


@pytest.mark.parametrize("how", BOB)
def test_lists_show_bob_only_his_own(world, alices, bob_server, how):
    c = bob_client(world, how)
    bob = world.bob_customer.id
    assert [s["id"] for s in results(c.get("/api/v1/servers/"))] == [bob_server.id]
    ops = results(c.get("/api/v1/operations/"))
    assert ops and {o["customer"] for o in ops} == {bob}
    assert {o["server"] for o in ops} == {bob_server.id}
    assert [cu["id"] for cu in results(c.get("/api/v1/customers/"))] == [bob]
    keys = results(c.get("/api/v1/api-keys/"))
    assert [k["name"] for k in keys] == ["bob"] and {k["customer"] for k in keys} == {bob}


def test_the_admin_lists_everything(world, alices, bob_server):
    c = world.client(world.admin_key)
    assert len(results(c.get("/api/v1/servers/"))) == 2
    assert len(results(c.get("/api/v1/customers/"))) == 2
    assert len(results(c.get("/api/v1/api-keys/"))) == 4


@pytest.mark.parametrize("how", BOB)
@pytest.mark.parametrize("query", [
    "/api/v1/servers/?customer={customer}",
    "/api/v1/servers/?customer__external_id=A-1",
    "/api/v1/servers/?node={node}",
    "/api/v1/servers/?state=running",
    "/api/v1/operations/?customer={customer}",
    "/api/v1/operations/?server={server}",
    "/api/v1/customers/?external_id=A-1",
    "/api/v1/customers/?email=alice@example.com",
    "/api/v1/api-keys/?customer={customer}",
    "/api/v1/api-keys/?scope=customer",
])
def test_filters_do_not_reach_past_bobs_own_objects(world, alices, bob_server, how, query):
    url = query.format(customer=alices.customer.id, server=alices.server.id, node=world.node.id)
    found = results(bob_client(world, how).get(url))
    # A customer row names itself by id; servers, operations and keys name their customer.
    owners = {row["id"] if "external_id" in row else row["customer"] for row in found}
    assert owners <= {world.bob_customer.id}, found


@pytest.mark.parametrize("how", BOB)
@pytest.mark.parametrize("query", [
    "/api/v1/servers/?customer={}",
    "/api/v1/operations/?customer={}",
    "/api/v1/api-keys/?customer={}",
])
def test_a_filter_on_alices_id_answers_like_a_filter_on_a_missing_id(world, alices, how, query):
    """No existence oracle: Bob cannot tell Alice's customer id from one that does not exist."""
    c = bob_client(world, how)
    theirs = c.get(query.format(alices.customer.id))
    nothing = c.get(query.format(987654321))
    assert (theirs.status_code, theirs.json()) == (nothing.status_code, nothing.json())


@pytest.mark.parametrize("how", BOB)
def test_a_filter_on_alices_server_answers_like_a_filter_on_a_missing_one(world, alices, how):
    c = bob_client(world, how)
    theirs = c.get(f"/api/v1/operations/?server={alices.server.id}")
    nothing = c.get("/api/v1/operations/?server=987654321")
    assert (theirs.status_code, theirs.json()) == (nothing.status_code, nothing.json())


ADMIN_ONLY = ["/api/v1/users/", "/api/v1/users/{user}/", "/api/v1/audit-log/", "/api/v1/audit-log/{entry}/",
              "/api/v1/nodes/", "/api/v1/nodes/{node}/"]


def admin_only_url(template, world) -> str:
    entry = AuditEntry.objects.order_by("id").first()
    return template.format(user=world.alice.id, entry=entry.id, node=world.node.id)


@pytest.mark.parametrize("who", ["bob key", "bob session", "alice key", "alice session", "billing key"])
@pytest.mark.parametrize("template", ADMIN_ONLY)
def test_admin_only_endpoints_are_403_for_customers_and_billing(world, alices, who, template):
    client = {
        "bob key": lambda: world.client(world.bob_key),
        "bob session": lambda: session(world.bob),
        "alice key": lambda: world.client(world.alice_key),
        "alice session": lambda: session(world.alice),
        "billing key": lambda: world.client(world.billing_key),
    }[who]()
    r = client.get(admin_only_url(template, world))
    assert r.status_code == 403, (r.status_code, r.content)
    assert r.json()["code"] == "permission_denied" and r.json()["detail"]


@pytest.mark.parametrize("who", ["admin key", "admin session"])
@pytest.mark.parametrize("template", ADMIN_ONLY)
def test_admin_only_endpoints_answer_the_admin(world, alices, who, template):
    client = world.client(world.admin_key) if who == "admin key" else session(world.admin)
    assert client.get(admin_only_url(template, world)).status_code == 200


@pytest.mark.parametrize("who", ["bob key", "bob session", "billing key"])
def test_only_admins_write_users(world, who):
    client = {"bob key": lambda: world.client(world.bob_key), "bob session": lambda: session(world.bob),
              "billing key": lambda: world.client(world.billing_key)}[who]()
    r = client.post("/api/v1/users/", {"username": "mallory", "role": "admin", "password": "Long-enough-9"},
                    format="json")
    assert r.status_code == 403
    r = client.patch(f"/api/v1/users/{world.bob.id}/", {"role": "admin"}, format="json")
    assert r.status_code == 403
    world.bob.refresh_from_db()
    assert world.bob.role == "customer"
    assert not world.admin.__class__.objects.filter(username="mallory").exists()


@pytest.mark.parametrize("who", ["bob key", "bob session", "billing key"])
def test_customers_and_billing_cannot_create_or_change_plans(world, who):
    client = {"bob key": lambda: world.client(world.bob_key), "bob session": lambda: session(world.bob),
              "billing key": lambda: world.client(world.billing_key)}[who]()
    r = client.post("/api/v1/plans/", {"name": "free-lunch", "vcpus": 64, "ram_mib": 65536, "disk_gib": 1000},
                    format="json")
    assert r.status_code == 403 and r.json()["code"] == "permission_denied"
    assert not Plan.objects.filter(name="free-lunch").exists()
    assert client.patch(f"/api/v1/plans/{world.plan.id}/", {"vcpus": 64}, format="json").status_code == 403
    assert client.delete(f"/api/v1/plans/{world.plan.id}/").status_code == 403
    assert Plan.objects.get(pk=world.plan.pk).vcpus == 1
    assert client.get("/api/v1/plans/").status_code == 200  # reading plans is fine


@pytest.mark.parametrize("action, body, state_after", [
    ("stop", {"force": True}, "stopped"),
    ("reboot", {"force": True}, "running"),
    ("suspend", {"reason": "unpaid"}, "suspended"),
])
def test_billing_acts_on_every_customers_servers(world, alices, bob_server, action, body, state_after):
    billing = world.client(world.billing_key)
    for server in (alices.server, bob_server):
        r = billing.post(f"/api/v1/servers/{server.id}/{action}/", body, format="json")
        assert r.status_code == 202 and r.data["status"] == "succeeded", r.data
        assert VirtualServer.objects.get(pk=server.pk).state == state_after
        assert billing.get(f"/api/v1/servers/{server.id}/").status_code == 200
        assert billing.get(f"/api/v1/operations/{r.data['id']}/").status_code == 200


def test_billing_deletes_any_customers_server_and_reads_every_customer(world, alices, bob_server):
    billing = world.client(world.billing_key)
    assert billing.get(f"/api/v1/customers/{world.alice_customer.id}/").status_code == 200
    assert billing.get(f"/api/v1/customers/{world.bob_customer.id}/").status_code == 200
    for server in (alices.server, bob_server):
        r = billing.delete(f"/api/v1/servers/{server.id}/")
        assert r.status_code == 202 and r.data["status"] == "succeeded", r.data
    assert not VirtualServer.objects.exists()


def test_billing_keys_do_not_manage_api_keys(world, alices):
    billing = world.client(world.billing_key)
    assert results(billing.get("/api/v1/api-keys/")) == []
    assert billing.delete(f"/api/v1/api-keys/{alices.key.id}/").status_code == 404
    assert ApiKey.objects.get(pk=alices.key.pk).revoked_at is None


@pytest.mark.parametrize("how", BOB)
def test_bob_cannot_create_a_server_for_alice(world, alices, how):
    servers, ops, audit = VirtualServer.objects.count(), Operation.objects.count(), AuditEntry.objects.count()
    domains = set(driver_for("fake://fake1").host.domains)
    body = {"customer": world.alice_customer.id, "plan": world.plan.id, "hostname": "sneaky", "os_template": "tiny"}
    r = bob_client(world, how).post("/api/v1/servers/", body, format="json")
    assert r.status_code == 400, (r.status_code, r.content)
    assert r.json()["code"] == "invalid" and "customer" in r.json()["fields"]
    assert VirtualServer.objects.count() == servers and Operation.objects.count() == ops
    assert AuditEntry.objects.count() == audit
    assert set(driver_for("fake://fake1").host.domains) == domains


@pytest.mark.parametrize("how", BOB)
def test_bob_without_a_customer_field_creates_for_himself(world, how):
    body = {"plan": world.plan.id, "hostname": "mine", "os_template": "tiny"}
    r = bob_client(world, how).post("/api/v1/servers/", body, format="json")
    assert r.status_code == 202, r.data
    assert VirtualServer.objects.get(hostname="mine").customer == world.bob_customer


@pytest.mark.parametrize("how", BOB)
def test_bob_cannot_choose_the_node(world, how):
    body = {"plan": world.plan.id, "hostname": "placed", "node": world.node.id, "os_template": "tiny"}
    r = bob_client(world, how).post("/api/v1/servers/", body, format="json")
    assert r.status_code == 403
    assert not VirtualServer.objects.exists()


@pytest.mark.parametrize("how", BOB)
def test_bob_cannot_create_a_key_for_alice(world, how):
    body = {"name": "sneaky", "scope": "customer", "customer": world.alice_customer.id}
    r = bob_client(world, how).post("/api/v1/api-keys/", body, format="json")
    # Alice's customer is not among Bob's: "does not exist", like a missing one (issue 19).
    assert r.status_code == 400 and "customer" in r.json()["fields"] and "key" not in r.json()
    assert not ApiKey.objects.filter(name="sneaky").exists()


def test_a_user_without_a_customer_sees_nothing(world, alices):
    from panel.accounts.models import User

    orphan = User.objects.create_user("orphan", password="orphan-pass-123")  # role customer, no customer
    c = session(orphan)
    assert results(c.get("/api/v1/servers/")) == []
    assert results(c.get("/api/v1/customers/")) == []
    assert results(c.get("/api/v1/api-keys/")) == []
    assert c.get(f"/api/v1/servers/{alices.server.id}/").status_code == 404

"""The API's conventions: error format, pagination, filters, refusals, schema, idempotency, query counts."""

import pytest

from tests.conftest import fake_node
from django.db import connection
from django.test.utils import CaptureQueriesContext

from panel.accounts.models import Customer
from panel.vps.models import Operation, Plan, VirtualServer

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def make_servers(world, n, customer=None, state="running", prefix="s"):
    return [
        VirtualServer.objects.create(customer=customer or world.alice_customer, plan=world.plan, node=world.node,
                                     hostname=f"{prefix}{i}", vcpus=1, ram_mib=256, disk_gib=1, state=state)
        for i in range(n)
    ]


# -- error format ---------------------------------------------------------------------------

@pytest.mark.parametrize("url, body, field", [
    ("/api/v1/customers/", {"email": "not-an-email", "name": "X"}, "email"),
    ("/api/v1/customers/", {"email": "x@example.com"}, "name"),
    ("/api/v1/customers/", {"email": "x@example.com", "name": "X", "external_id": "A-1"}, "external_id"),
    ("/api/v1/customers/", {"email": "x@example.com", "name": "X", "language": "xx"}, "language"),
    ("/api/v1/servers/", {"plan": "nope", "hostname": "ok", "os_template": "tiny"}, "plan"),
    ("/api/v1/servers/", {"hostname": "ok", "os_template": "tiny"}, "plan"),
])
def test_validation_errors_have_detail_code_and_fields(world, url, body, field):
    r = world.client(world.billing_key).post(url, body, format="json")
    assert r.status_code == 400, (r.status_code, r.content)
    data = r.json()
    assert data["code"] == "invalid"
    assert isinstance(data["detail"], str) and data["detail"].startswith(f"{field}: ")
    assert field in data["fields"] and all(isinstance(m, str) for m in data["fields"][field])


def test_a_body_that_is_not_json_is_a_400_in_the_error_format(world):
    r = world.client(world.billing_key).post("/api/v1/customers/", "{not json", content_type="application/json")
    assert r.status_code == 400
    assert set(r.json()) == {"detail", "code"} and r.json()["code"] == "parse_error"


def test_a_body_that_is_a_list_is_a_400_not_a_500(world):
    r = world.client(world.billing_key).post("/api/v1/servers/", [1, 2], format="json")
    assert r.status_code == 400 and r.json()["code"] == "invalid" and "fields" in r.json()


@pytest.mark.parametrize("url", ["/api/v1/servers/abc/", "/api/v1/servers/999999/", "/api/v1/operations/x/",
                                 "/api/v1/customers/0/"])
def test_a_missing_object_is_a_404_in_the_error_format(world, url):
    r = world.client(world.admin_key).get(url)
    assert r.status_code == 404 and r.json() == {"detail": "Not found.", "code": "not_found"}


def test_a_missing_server_action_is_a_404(world):
    r = world.client(world.admin_key).post("/api/v1/servers/abc/stop/")
    assert r.status_code == 404 and r.json()["code"] == "not_found"


def test_an_unsupported_method_is_a_405_in_the_error_format(world):
    r = world.client(world.admin_key).put(f"/api/v1/customers/{world.alice_customer.id}/", {}, format="json")
    assert r.status_code == 405 and set(r.json()) == {"detail", "code"}


@pytest.mark.parametrize("body", [{"force": "maybe"}, {"timeout": -1}, {"timeout": 99999}])
def test_bad_action_parameters_are_a_400(world, alice_server, body):
    r = world.client(world.alice_key).post(f"/api/v1/servers/{alice_server.id}/stop/", body, format="json")
    assert r.status_code == 400 and r.json()["code"] == "invalid" and set(body) <= set(r.json()["fields"])
    assert VirtualServer.objects.get(pk=alice_server.pk).state == "running"


# -- pagination -----------------------------------------------------------------------------

def test_lists_are_paginated(world):
    make_servers(world, 55)
    c = world.client(world.admin_key)
    first = c.get("/api/v1/servers/").json()
    assert set(first) == {"count", "next", "previous", "results"}
    assert first["count"] == 55 and len(first["results"]) == 50 and first["previous"] is None
    assert "page=2" in first["next"]
    second = c.get("/api/v1/servers/?page=2").json()
    assert len(second["results"]) == 5 and second["next"] is None and second["previous"]
    ids = [s["id"] for s in first["results"] + second["results"]]
    assert ids == sorted(ids) and len(set(ids)) == 55


def test_page_size_is_honoured_and_capped(world):
    make_servers(world, 12)
    c = world.client(world.admin_key)
    r = c.get("/api/v1/servers/?page_size=5&page=3").json()
    assert r["count"] == 12 and len(r["results"]) == 2 and r["next"] is None
    assert "page_size=5" in r["previous"]
    assert len(c.get("/api/v1/servers/?page_size=100000").json()["results"]) == 12


def test_a_page_past_the_end_is_a_404_in_the_error_format(world):
    make_servers(world, 3)
    r = world.client(world.admin_key).get("/api/v1/servers/?page=7")
    assert r.status_code == 404 and set(r.json()) == {"detail", "code"}


@pytest.mark.parametrize("url", ["/api/v1/customers/", "/api/v1/plans/", "/api/v1/operations/",
                                 "/api/v1/api-keys/", "/api/v1/users/", "/api/v1/audit-log/", "/api/v1/nodes/"])
def test_every_list_is_paginated(world, url):
    r = world.client(world.admin_key).get(url)
    assert r.status_code == 200 and set(r.json()) == {"count", "next", "previous", "results"}


# -- filters --------------------------------------------------------------------------------

def ids(r) -> list[int]:
    assert r.status_code == 200, (r.status_code, r.content)
    return [row["id"] for row in r.json()["results"]]


def test_server_filters(world):

    other_node = fake_node("fake2")
    a_running = make_servers(world, 2, prefix="ar")
    a_stopped = make_servers(world, 1, state="stopped", prefix="as")
    b_running = make_servers(world, 2, customer=world.bob_customer, prefix="br")
    b_other = VirtualServer.objects.create(customer=world.bob_customer, plan=world.plan, node=other_node,
                                           hostname="bn", vcpus=1, ram_mib=256, disk_gib=1, state="suspended")
    c = world.client(world.billing_key)
    pk = lambda servers: [s.id for s in servers]  # noqa: E731
    assert ids(c.get("/api/v1/servers/?state=running")) == pk(a_running + b_running)
    assert ids(c.get("/api/v1/servers/?state=stopped")) == pk(a_stopped)
    assert ids(c.get(f"/api/v1/servers/?customer={world.alice_customer.id}")) == pk(a_running + a_stopped)
    assert ids(c.get("/api/v1/servers/?customer__external_id=B-1")) == pk(b_running + [b_other])
    assert ids(c.get("/api/v1/servers/?customer__external_id=nobody")) == []
    assert ids(c.get(f"/api/v1/servers/?node={other_node.id}")) == [b_other.id]
    assert ids(c.get(f"/api/v1/servers/?node={world.node.id}&state=running&customer__external_id=A-1")) \
        == pk(a_running)


def test_a_bad_filter_value_is_a_400_not_a_500(world):
    r = world.client(world.billing_key).get("/api/v1/servers/?customer=abc")
    assert r.status_code == 400 and r.json()["code"] == "invalid" and "customer" in r.json()["fields"]
    r = world.client(world.billing_key).get("/api/v1/servers/?state=bogus")
    assert r.status_code == 400 and "state" in r.json()["fields"]


def test_customer_filter_by_external_id(world):
    c = world.client(world.billing_key)
    assert ids(c.get("/api/v1/customers/?external_id=A-1")) == [world.alice_customer.id]
    assert ids(c.get("/api/v1/customers/?external_id=B-1")) == [world.bob_customer.id]
    assert ids(c.get("/api/v1/customers/?external_id=Z-9")) == []
    assert ids(c.get("/api/v1/customers/")) == [world.alice_customer.id, world.bob_customer.id]


# -- refusals -------------------------------------------------------------------------------

def test_deleting_a_customer_with_servers_is_a_409(world, alice_server):
    r = world.client(world.billing_key).delete(f"/api/v1/customers/{world.alice_customer.id}/")
    assert r.status_code == 409 and r.json()["code"] == "customer_has_servers" and r.json()["detail"]
    assert Customer.objects.filter(pk=world.alice_customer.pk).exists()
    assert VirtualServer.objects.filter(pk=alice_server.pk, state="running").exists()


def test_deleting_a_customer_without_servers_works(world):
    r = world.client(world.billing_key).delete(f"/api/v1/customers/{world.bob_customer.id}/")
    assert r.status_code == 204
    assert not Customer.objects.filter(pk=world.bob_customer.pk).exists()
    assert world.client(world.bob_key).get("/api/v1/servers/").status_code == 401  # its keys went with it


def test_deleting_a_plan_in_use_is_a_409(world, alice_server):
    r = world.client(world.admin_key).delete(f"/api/v1/plans/{world.plan.id}/")
    assert r.status_code == 409 and r.json()["code"] == "plan_in_use" and r.json()["detail"]
    assert Plan.objects.filter(pk=world.plan.pk).exists()


def test_deleting_an_unused_plan_works(world):
    r = world.client(world.admin_key).delete(f"/api/v1/plans/{world.plan.id}/")
    assert r.status_code == 204 and not Plan.objects.exists()


# -- schema and docs ------------------------------------------------------------------------

def test_the_openapi_schema_describes_the_servers(world):
    r = world.client(world.admin_key).get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert r.status_code == 200
    schema = r.json()
    assert schema["openapi"].startswith("3.")
    for path in ("/api/v1/servers/", "/api/v1/servers/{id}/", "/api/v1/servers/{id}/stop/",
                 "/api/v1/operations/{id}/", "/api/v1/customers/", "/api/v1/api-keys/"):
        assert path in schema["paths"], path
    assert "post" in schema["paths"]["/api/v1/servers/"]
    assert "202" in schema["paths"]["/api/v1/servers/"]["post"]["responses"]


def test_the_docs_page_answers(world):
    r = world.client(world.admin_key).get("/api/docs/")
    assert r.status_code == 200 and b"swagger" in r.content.lower()


# -- idempotency ----------------------------------------------------------------------------

def test_the_idempotency_key_is_scoped_per_caller(world):
    body = {"customer": world.alice_customer.id, "plan": world.plan.id, "hostname": "same", "os_template": "tiny"}
    first = world.client(world.billing_key).post("/api/v1/servers/", body, format="json",
                                                 HTTP_IDEMPOTENCY_KEY="order-1")
    second = world.client(world.admin_key).post("/api/v1/servers/", body, format="json",
                                                HTTP_IDEMPOTENCY_KEY="order-1")
    assert first.status_code == second.status_code == 202
    assert "Idempotent-Replayed" not in second
    assert first.json()["id"] != second.json()["id"]
    assert VirtualServer.objects.count() == 2


def test_the_idempotency_key_of_a_customer_does_not_replay_to_another(world):
    body = {"plan": world.plan.id, "hostname": "mine", "os_template": "tiny"}
    alice = world.client(world.alice_key).post("/api/v1/servers/", body, format="json",
                                               HTTP_IDEMPOTENCY_KEY="k")
    bob = world.client(world.bob_key).post("/api/v1/servers/", body, format="json", HTTP_IDEMPOTENCY_KEY="k")
    assert alice.status_code == bob.status_code == 202 and "Idempotent-Replayed" not in bob
    assert bob.json()["server_state"]["customer"] == world.bob_customer.id
    assert sorted(VirtualServer.objects.values_list("customer_id", flat=True)) == \
        sorted([world.alice_customer.id, world.bob_customer.id])


def test_an_idempotent_refusal_is_replayed_too(world, alice_server):
    c = world.client(world.alice_key)
    first = c.post(f"/api/v1/servers/{alice_server.id}/start/", HTTP_IDEMPOTENCY_KEY="s1")
    again = c.post(f"/api/v1/servers/{alice_server.id}/start/", HTTP_IDEMPOTENCY_KEY="s1")
    assert first.status_code == again.status_code == 409 and again["Idempotent-Replayed"] == "true"
    assert Operation.objects.filter(server=alice_server).count() == 1


def test_an_overlong_idempotency_key_is_a_400(world):
    r = world.client(world.billing_key).post("/api/v1/customers/", {"email": "x@example.com", "name": "X"},
                                             format="json", HTTP_IDEMPOTENCY_KEY="k" * 256)
    assert r.status_code == 400 and r.json()["code"] == "invalid"
    assert not Customer.objects.filter(name="X").exists()


# -- query counts ---------------------------------------------------------------------------

@pytest.mark.parametrize("url", ["/api/v1/servers/", "/api/v1/operations/"])
def test_a_bigger_page_costs_no_more_queries(world, url):
    make_servers(world, 60)
    for server in VirtualServer.objects.all():
        Operation.objects.create(kind="create", server=server, customer=server.customer, status="succeeded")
    c = world.client(world.billing_key)
    c.get(url)  # warm up: the key's last use is written on the first request only
    counts = {}
    for size in (10, 50):
        with CaptureQueriesContext(connection) as ctx:
            r = c.get(f"{url}?page_size={size}")
        assert r.status_code == 200 and len(r.json()["results"]) == size
        counts[size] = len(ctx.captured_queries)
    assert counts[10] == counts[50], counts


def test_the_server_list_uses_a_handful_of_queries(world, django_assert_max_num_queries):
    make_servers(world, 60)
    c = world.client(world.alice_key)
    c.get("/api/v1/servers/")
    with django_assert_max_num_queries(6 + 2):  # and one statement for each rate limit's count
        r = c.get("/api/v1/servers/?page_size=50")
    assert r.status_code == 200 and len(r.json()["results"]) == 50

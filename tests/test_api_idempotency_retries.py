"""A billing system retrying one server create: 20 attempts with the same Idempotency-Key and
body, ten of them at once (threads with their own database connections), make exactly one
server; every answer is the same 202 with the same Operation, and only the first shows the
password. The rules of the key (scoping, overlong keys, refusals replayed) are in test_api_misc.py.
"""

import threading

import pytest
from django.db import connection

from panel.vps.models import VirtualServer

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _needs_concurrent_writers():
    if connection.vendor == "sqlite":
        pytest.skip("needs a database with row locks and concurrent writers (make test runs MariaDB)")


def body(world, **overrides) -> dict:
    return {"customer": world.alice_customer.id, "plan": world.plan.id, "hostname": "order-1001",
            "os_template": "tiny", **overrides}


def post_at_once(world, key: str, count: int, data: dict, idempotency_key: str) -> list:
    """`count` identical POSTs released together, each thread on its own connection."""
    answers: list = [None] * count
    gate = threading.Barrier(count)

    def attempt(n):
        try:
            client = world.client(key)
            gate.wait()
            answers[n] = client.post("/api/v1/servers/", data, format="json", HTTP_IDEMPOTENCY_KEY=idempotency_key)
        finally:
            connection.close()

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(a is not None for a in answers), "an attempt did not answer"
    return answers


def test_twenty_retries_of_one_create_make_one_server(world):
    data = body(world)
    answers = post_at_once(world, world.billing_key, 10, data, "whmcs-service-1001")
    client = world.client(world.billing_key)
    answers += [client.post("/api/v1/servers/", data, format="json", HTTP_IDEMPOTENCY_KEY="whmcs-service-1001")
                for _ in range(10)]

    assert [a.status_code for a in answers] == [202] * 20, [(a.status_code, a.content[:200]) for a in answers]
    assert VirtualServer.objects.count() == 1
    server = VirtualServer.objects.get()
    assert len({a.json()["id"] for a in answers}) == 1
    assert {a.json()["server"] for a in answers} == {server.id}
    first = [a for a in answers if "Idempotent-Replayed" not in a]
    replays = [a for a in answers if a.get("Idempotent-Replayed") == "true"]
    assert len(first) == 1 and len(replays) == 19
    assert first[0].json()["password"]
    assert all("password" not in a.json() for a in replays)


def test_the_same_key_with_another_body_is_a_409(world):
    client = world.client(world.billing_key)
    r = client.post("/api/v1/servers/", body(world), format="json", HTTP_IDEMPOTENCY_KEY="whmcs-service-1002")
    assert r.status_code == 202, r.content
    answers = post_at_once(world, world.billing_key, 4, body(world, hostname="other-name"), "whmcs-service-1002")
    assert {a.status_code for a in answers} == {409}
    assert {a.json()["code"] for a in answers} == {"idempotency_conflict"}
    assert VirtualServer.objects.count() == 1
    again = client.post("/api/v1/servers/", body(world), format="json", HTTP_IDEMPOTENCY_KEY="whmcs-service-1002")
    assert again.status_code == 202 and again.json()["id"] == r.json()["id"]


def test_concurrent_callers_with_the_same_key_each_get_their_own_server(world):
    """Keys are per caller: the billing key's and the admin key's "order-7" are two orders."""
    data = body(world)
    results: dict = {}

    def attempt(name, key):
        try:
            results[name] = world.client(key).post("/api/v1/servers/", data, format="json",
                                                   HTTP_IDEMPOTENCY_KEY="order-7")
        finally:
            connection.close()

    threads = [threading.Thread(target=attempt, args=(name, key))
               for name, key in (("billing", world.billing_key), ("admin", world.admin_key))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert results["billing"].status_code == results["admin"].status_code == 202
    assert results["billing"].json()["id"] != results["admin"].json()["id"]
    assert "password" in results["billing"].json() and "password" in results["admin"].json()
    assert VirtualServer.objects.count() == 2

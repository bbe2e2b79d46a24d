"""Issue 19, tenancy leaks: what a customer (Bob, Alice) can learn that is not theirs.

No existence oracle (another customer's object answers like a missing one, in filters and in
related ids of request bodies), operation logs split by audience (a customer reads only
customer lines, never the infrastructure), and no secret kept in clear for idempotent replays.
"""

import json

import pytest
from rest_framework.test import APIClient

from panel.accounts.models import ApiKey
from panel.api.models import IdempotentRequest
from panel.vps.models import VirtualServer

pytestmark = pytest.mark.django_db

MISSING = 987654321


def session(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def bob_client(world, how: str) -> APIClient:
    return world.client(world.bob_key) if how == "key" else session(world.bob)


BOB = ["key", "session"]


def same_answer(theirs, nothing, their_id) -> None:
    """The two answers are equal once the id Bob sent is left out of the text."""
    assert theirs.status_code == nothing.status_code, (theirs.content, nothing.content)
    assert theirs.content.decode().replace(str(their_id), "ID") == \
        nothing.content.decode().replace(str(MISSING), "ID")


# --- no existence oracle -------------------------------------------------------------------------

@pytest.mark.parametrize("how", BOB)
@pytest.mark.parametrize("query", ["/api/v1/ip-addresses/?server={}", "/api/v1/ip-addresses/?pool={}"])
def test_an_address_filter_on_alices_server_answers_like_one_on_a_missing_server(world, alice_server, how, query):
    from panel.ipam.models import IpPool

    pool = IpPool.objects.first()
    their_id = alice_server.id if "server" in query else (pool.id if pool else alice_server.id)
    c = bob_client(world, how)
    theirs, nothing = c.get(query.format(their_id)), c.get(query.format(MISSING))
    assert theirs.status_code == 200 and theirs.json()["results"] == []
    same_answer(theirs, nothing, their_id)


@pytest.mark.parametrize("how", BOB)
def test_a_bad_id_in_a_filter_is_a_clear_400(world, how):
    r = bob_client(world, how).get("/api/v1/ip-addresses/?server=1.5")
    assert r.status_code == 400 and r.json()["code"] == "invalid" and "server" in r.json()["fields"]


@pytest.mark.parametrize("how", BOB)
def test_a_server_create_for_alice_answers_like_one_for_a_missing_customer(world, alice_server, how):
    servers = VirtualServer.objects.count()
    c = bob_client(world, how)

    def create(customer_id):
        body = {"customer": customer_id, "plan": world.plan.id, "hostname": "sneaky", "os_template": "tiny"}
        return c.post("/api/v1/servers/", body, format="json")

    theirs, nothing = create(world.alice_customer.id), create(MISSING)
    assert theirs.status_code == 400 and "customer" in theirs.json()["fields"]
    same_answer(theirs, nothing, world.alice_customer.id)
    assert VirtualServer.objects.count() == servers


@pytest.mark.parametrize("how", BOB)
def test_a_key_create_for_alice_answers_like_one_for_a_missing_customer(world, how):
    keys = ApiKey.objects.count()
    c = bob_client(world, how)

    def create(customer_id):
        return c.post("/api/v1/api-keys/", {"name": "sneaky", "scope": "customer", "customer": customer_id},
                      format="json")

    theirs, nothing = create(world.alice_customer.id), create(MISSING)
    assert theirs.status_code == 400 and "key" not in theirs.json()
    same_answer(theirs, nothing, world.alice_customer.id)
    assert ApiKey.objects.count() == keys


def test_the_admin_still_names_any_customer(world):
    r = world.client(world.admin_key).post("/api/v1/api-keys/", {"name": "for-bob", "scope": "customer",
                                                                  "customer": world.bob_customer.id}, format="json")
    assert r.status_code == 201, r.content
    body = {"customer": world.bob_customer.id, "plan": world.plan.id, "hostname": "for-bob", "os_template": "tiny"}
    assert world.client(world.admin_key).post("/api/v1/servers/", body, format="json").status_code == 202


# --- the console URL is a secret ---------------------------------------------------------------

def test_a_replayed_console_request_neither_stores_nor_shows_the_url(world, alice_server):
    c = world.client(world.alice_key)
    url = f"/api/v1/servers/{alice_server.id}/console/"
    first = c.post(url, HTTP_IDEMPOTENCY_KEY="console-1")
    assert first.status_code == 201
    raw = first.json()["url"].rstrip("/").rsplit("/", 1)[-1]
    stored = json.dumps(IdempotentRequest.objects.get(key="console-1").response_body)
    assert raw not in stored
    again = c.post(url, HTTP_IDEMPOTENCY_KEY="console-1")
    assert again.status_code == 201 and again["Idempotent-Replayed"] == "true"
    assert "url" not in again.json() and raw not in again.content.decode()
    assert "secrets" in again.json()["detail"]

"""Issue 19, tenancy leaks: what a customer (Bob, Alice) can learn that is not theirs.

No existence oracle (another customer's object answers like a missing one, in filters and in
related ids of request bodies), operation logs split by audience (a customer reads only
customer lines, never the infrastructure), and no secret kept in clear for idempotent replays.
"""

import json

import pytest

from panel.accounts.models import ApiKey
from panel.api.models import IdempotentRequest
from panel.vps.models import VirtualServer
from tests.test_api_isolation import BOB, bob_client, session

pytestmark = pytest.mark.django_db

MISSING = 987654321




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


# --- operation logs: what a customer reads -----------------------------------------------------
# What only the provider may read: the node's name, the storage's, the panel's provisioning
# URL (tests/conftest.py sets http://panel.test), admin usernames and key names.
INFRASTRUCTURE = ["fake1", "disks", "panel.test", "admin", "api-key:billing", "system"]
NODE_SAYS = "cannot reach qemu+ssh://root@10.9.9.9/system of node fake1 (storage disks)"


def leaks(text: str) -> list[str]:
    return [word for word in INFRASTRUCTURE if word in text]


def create_op(server):
    from panel.vps.models import Operation

    return Operation.objects.get(server=server, kind="create")


@pytest.mark.parametrize("how", ["key", "session"])
def test_alice_reads_her_install_log_without_the_infrastructure(world, alice_server, how):
    op = create_op(alice_server)
    alice = world.client(world.alice_key) if how == "key" else session(world.alice)
    mine = alice.get(f"/api/v1/operations/{op.id}/").json()
    assert mine["log"] and "install complete" in mine["log"] and mine["log"].rstrip().endswith("done")
    assert leaks(mine["log"]) == [] and mine["requested_by"] == "provider"
    listed = alice.get(f"/api/v1/operations/?server={alice_server.id}").json()["results"]
    assert [row["requested_by"] for row in listed] == ["provider"]
    # The admin reads every line, with who asked.
    full = world.client(world.admin_key).get(f"/api/v1/operations/{op.id}/").json()
    assert "fake1" in full["log"] and "panel.test" in full["log"] and full["requested_by"] == "system"


def test_requested_by_names_the_customers_own_key_and_hides_the_providers(world, alice_server):
    alice = world.client(world.alice_key)
    mine = alice.post(f"/api/v1/servers/{alice_server.id}/stop/", {"force": True}, format="json").json()
    assert mine["requested_by"] == "api-key:alice"
    by_admin = world.client(world.admin_key).post(f"/api/v1/servers/{alice_server.id}/start/").json()
    assert by_admin["requested_by"] == "api-key:admin"  # the admin's own answer says who
    by_billing = world.client(world.billing_key).post(f"/api/v1/servers/{alice_server.id}/stop/", {"force": True},
                                                      format="json").json()
    assert by_billing["requested_by"] == "provider"  # a billing system shows its customers this
    seen = {row["id"]: row["requested_by"] for row in alice.get("/api/v1/operations/").json()["results"]}
    assert seen[mine["id"]] == "api-key:alice"
    assert seen[by_admin["id"]] == seen[by_billing["id"]] == "provider"


def failed_reboot(world, alice_server):
    from nodes.connection import driver_for
    from nodes.driver import DriverError

    driver_for("fake://fake1").fail_next["start"] = DriverError(NODE_SAYS)
    r = world.client(world.admin_key).post(f"/api/v1/servers/{alice_server.id}/reboot/", {"force": True},
                                           format="json")
    assert r.status_code == 202 and r.json()["status"] == "failed" and NODE_SAYS in r.json()["error"]
    return r.json()["id"]


def test_a_failure_reads_neutral_to_alice_and_whole_to_the_admin(world, alice_server):
    from panel.runner import NEUTRAL_FAILURE

    op_id = failed_reboot(world, alice_server)
    alice = world.client(world.alice_key)
    mine = alice.get(f"/api/v1/operations/{op_id}/").json()
    assert mine["error"] == NEUTRAL_FAILURE and NEUTRAL_FAILURE in mine["log"]
    assert leaks(mine["error"] + mine["log"] + mine["requested_by"]) == []
    assert "10.9.9.9" not in mine["log"] and "Traceback" not in mine["log"]
    server = alice.get(f"/api/v1/servers/{alice_server.id}/").json()
    assert leaks(server["error"]) == [] and "10.9.9.9" not in server["error"]
    full = world.client(world.admin_key).get(f"/api/v1/operations/{op_id}/").json()
    assert NODE_SAYS in full["error"] and NODE_SAYS in full["log"] and "reboot on node fake1" in full["log"]


def test_webhook_payloads_carry_the_customers_reason(world, alice_server, monkeypatch):
    from panel.api.models import Event
    from panel.webhooks import delivery as wd
    from panel.webhooks.models import Delivery

    monkeypatch.setattr(wd, "enqueue", lambda _id: None)
    r = world.client(world.alice_key).post("/api/v1/webhooks/", {"url": "http://93.184.216.34/hook",
                                                                 "events": ["*"]}, format="json")
    assert r.status_code == 201, r.content
    from nodes.connection import driver_for
    from nodes.driver import DriverError

    driver_for("fake://fake1").fail_next["start"] = DriverError(NODE_SAYS)
    r = world.client(world.admin_key).post(f"/api/v1/servers/{alice_server.id}/reinstall/", {}, format="json")
    assert r.status_code == 202 and r.json()["status"] == "failed"
    failed = Event.objects.get(event="server.failed")
    bodies = [wd.payload(row).decode() for row in Delivery.objects.filter(webhook__customer=world.alice_customer)]
    assert any('"server.failed"' in body for body in bodies)
    for body in bodies:
        assert NODE_SAYS not in body and "10.9.9.9" not in body and "fake1" not in body, body
    assert failed.data["error"] and NODE_SAYS not in failed.data["error"]


def test_the_operation_page_shows_alice_only_her_lines(world, alice_server):
    from django.test import Client

    op = create_op(alice_server)
    client = Client()
    client.force_login(world.alice)
    page = client.get(f"/operations/{op.id}/").content.decode()
    assert "install complete" in page and leaks(page.split("<main", 1)[-1].split("</main>")[0]) == [], leaks(page)
    server_page = client.get(f"/servers/{alice_server.id}/").content.decode()
    table = server_page.split('id="operations"', 1)[1].split("</table>", 1)[0]
    assert "<td>provider</td>" in table and "<td>system</td>" not in table and "panel.test" not in server_page
    client.force_login(world.admin)
    assert "panel.test" in client.get(f"/operations/{op.id}/").content.decode()


# The consumer reaches the database through database_sync_to_async, which closes connections
# around each call: on MariaDB that needs committed data, hence transaction=True.
@pytest.mark.django_db(transaction=True)
def test_the_live_tail_shows_alice_her_lines_and_the_admin_all(world, alice_server, monkeypatch):
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer
    from channels.routing import URLRouter
    from channels.testing import WebsocketCommunicator

    from panel import progress
    from panel.runner import NEUTRAL_FAILURE
    from panel.ui.consumers import ServerConsumer
    from panel.ui.routing import websocket_urlpatterns
    from panel.vps.models import Operation

    monkeypatch.setattr(ServerConsumer, "poll_seconds", 60)  # only the first look and the worker's message
    op = Operation.objects.get(pk=failed_reboot(world, alice_server))
    # The worker's message while it ran, as panel/progress.py publishes it.
    message = {"type": "server.update", "state": "running",
               "operation": {**progress.operation_payload(op), "status": "running", "progress": 42}}

    async def watch(user) -> list[dict]:
        communicator = WebsocketCommunicator(URLRouter(websocket_urlpatterns), f"/ws/servers/{alice_server.pk}/")
        communicator.scope["user"] = user
        connected, _ = await communicator.connect()
        assert connected
        first = await communicator.receive_json_from(timeout=5)  # from the database
        await get_channel_layer().group_send(progress.server_group(alice_server.pk), message)
        pushed = await communicator.receive_json_from(timeout=5)  # from the worker
        await communicator.disconnect()
        return [first["operation"], pushed["operation"]]

    for seen in async_to_sync(watch)(world.alice):
        assert seen["error"] == NEUTRAL_FAILURE and leaks(seen["log_tail"] + seen["error"]) == []
        assert NEUTRAL_FAILURE in seen["log_tail"] and "10.9.9.9" not in seen["log_tail"]
    for seen in async_to_sync(watch)(world.admin):
        assert NODE_SAYS in seen["error"]

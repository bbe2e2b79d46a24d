"""Tenancy in the web UI: every page that names an object answers 404 to another customer,
the admin area answers 404 to customers, and the live-progress websocket follows the same rules."""

from dataclasses import dataclass

import pytest

from tests.conftest import fake_node, install_by_fake_guest, tiny_template_share
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser
from django.test import Client

from nodes.connection import driver_for, forget_fake_nodes
from panel.accounts.models import ApiKey, AuditEntry, Customer, User
from panel.vps.models import Operation, Plan, VirtualServer

pytestmark = pytest.mark.django_db


@dataclass
class UiWorld:
    admin: User
    alice: User
    bob: User
    alice_customer: Customer
    bob_customer: Customer
    plan: Plan
    node: object
    alice_server: VirtualServer
    bob_server: VirtualServer
    alice_key: ApiKey

    def client(self, user: User | None) -> Client:
        client = Client()
        if user is not None:
            client.force_login(user)
        return client


@pytest.fixture
def ui_inline(monkeypatch, settings, tmp_path):
    """Operations run inline on the in-memory driver, with the demo boot image present."""
    from panel import jobs, operations

    monkeypatch.setattr(operations, "enqueue", jobs.run_operation)
    monkeypatch.setattr(operations, "after_commit", lambda fn: fn())
    tiny_template_share(settings, tmp_path)
    install_by_fake_guest(monkeypatch)
    settings.STOP_TIMEOUT_SECONDS = 1
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast test users
    forget_fake_nodes()
    yield
    forget_fake_nodes()


@pytest.fixture
def ui_world(db, ui_inline) -> UiWorld:
    from panel.accounts.tenancy import SYSTEM
    from panel.vps import lifecycle
    from templates_os.repository import scan

    admin = User.objects.create_user("ui-admin", password="admin-pass-123", role=User.Role.ADMIN)
    alice_customer = Customer.objects.create(name="Alice UI Ltd", email="alice@example.com", external_id="UI-A")
    bob_customer = Customer.objects.create(name="Bob UI GmbH", email="bob@example.com", external_id="UI-B")
    alice = User.objects.create_user("ui-alice", password="alice-pass-123", customer=alice_customer)
    bob = User.objects.create_user("ui-bob", password="bob-pass-1234", customer=bob_customer)
    plan = Plan.objects.create(name="ui-small", vcpus=1, ram_mib=256, disk_gib=1)
    node = fake_node("ui-fake")
    scan()
    alice_server, _, _ = lifecycle.create_server(SYSTEM, customer=alice_customer, plan=plan, hostname="alice-web",
                                                 os_template="tiny")
    bob_server, _, _ = lifecycle.create_server(SYSTEM, customer=bob_customer, plan=plan, hostname="bob-db",
                                               os_template="tiny")
    alice_server.refresh_from_db()
    bob_server.refresh_from_db()
    assert alice_server.state == "running", alice_server.error
    alice_key, _raw = ApiKey.issue(name="alice-script", scope="customer", customer=alice_customer)
    return UiWorld(admin, alice, bob, alice_customer, bob_customer, plan, node, alice_server, bob_server, alice_key)


# --- Pages that name an object -------------------------------------------------------------

def test_bob_gets_404_on_alices_server_page_and_alice_does_not(ui_world):
    url = f"/servers/{ui_world.alice_server.pk}/"
    assert ui_world.client(ui_world.bob).get(url).status_code == 404
    r = ui_world.client(ui_world.alice).get(url)
    assert r.status_code == 200 and "alice-web" in r.content.decode()
    assert ui_world.client(ui_world.admin).get(url).status_code == 200


@pytest.mark.parametrize("action", ["start", "stop", "force-stop", "reboot", "suspend", "unsuspend", "delete"])
def test_bob_gets_404_on_every_action_on_alices_server(ui_world, action):
    before = Operation.objects.count()
    r = ui_world.client(ui_world.bob).post(f"/servers/{ui_world.alice_server.pk}/actions/{action}/")
    assert r.status_code == 404
    assert Operation.objects.count() == before
    ui_world.alice_server.refresh_from_db()
    assert ui_world.alice_server.state == "running"
    assert driver_for("fake://ui-fake").state(ui_world.alice_server.domain_name) == "running"


def test_bob_gets_404_on_alices_operation(ui_world):
    op = Operation.objects.filter(server=ui_world.alice_server).first()
    assert ui_world.client(ui_world.bob).get(f"/operations/{op.pk}/").status_code == 404
    r = ui_world.client(ui_world.alice).get(f"/operations/{op.pk}/")
    assert r.status_code == 200 and "alice-web" in r.content.decode()


def test_bob_cannot_revoke_alices_api_key(ui_world):
    r = ui_world.client(ui_world.bob).post(f"/api-keys/{ui_world.alice_key.pk}/revoke/")
    assert r.status_code == 404
    ui_world.alice_key.refresh_from_db()
    assert ui_world.alice_key.is_active


def test_lists_show_only_the_customers_own_objects(ui_world):
    bob = ui_world.client(ui_world.bob)
    page = bob.get("/servers/").content.decode()
    assert "bob-db" in page and "alice-web" not in page
    # The node is the provider's business.
    assert "ui-fake" not in page
    keys = bob.get("/api-keys/").content.decode()
    assert "alice-script" not in keys
    page = ui_world.client(ui_world.alice).get("/servers/").content.decode()
    assert "alice-web" in page and "bob-db" not in page


def test_the_customers_server_page_hides_the_node_and_provider_actions(ui_world):
    page = ui_world.client(ui_world.alice).get(f"/servers/{ui_world.alice_server.pk}/").content.decode()
    assert "ui-fake" not in page
    assert 'id="action-reboot"' in page and 'id="action-force-stop"' in page
    assert 'id="action-suspend"' not in page and 'id="action-delete"' not in page
    admin_page = ui_world.client(ui_world.admin).get(f"/servers/{ui_world.alice_server.pk}/").content.decode()
    assert "ui-fake" in admin_page and 'id="action-suspend"' in admin_page and 'id="action-delete"' in admin_page


def test_customer_cannot_use_provider_actions_on_own_server(ui_world):
    alice = ui_world.client(ui_world.alice)
    r = alice.post(f"/servers/{ui_world.alice_server.pk}/actions/suspend/", {"reason": "x"}, follow=True)
    assert r.status_code == 200
    assert "Only the provider can do this." in r.content.decode()
    ui_world.alice_server.refresh_from_db()
    assert ui_world.alice_server.state == "running"


# --- The admin area ------------------------------------------------------------------------

def admin_urls(w: UiWorld) -> list[str]:
    op = Operation.objects.filter(server=w.alice_server).first()
    assert op is not None
    return [
        "/admin/", "/admin/customers/", "/admin/customers/new/", f"/admin/customers/{w.alice_customer.pk}/",
        f"/admin/customers/{w.alice_customer.pk}/edit/", f"/admin/customers/{w.bob_customer.pk}/",
        "/admin/users/", "/admin/users/new/", "/admin/plans/", "/admin/plans/new/",
        f"/admin/plans/{w.plan.pk}/edit/", "/admin/nodes/", f"/admin/nodes/{w.node.pk}/", "/admin/servers/",
        "/admin/servers/new/", "/admin/operations/", "/admin/audit/", "/admin/api-keys/", "/admin/api-keys/new/",
    ]


def test_customers_get_404_on_every_admin_page(ui_world):
    for user in (ui_world.alice, ui_world.bob):
        client = ui_world.client(user)
        for url in admin_urls(ui_world):
            assert client.get(url).status_code == 404, url


def test_customers_cannot_post_to_admin_forms(ui_world):
    client = ui_world.client(ui_world.alice)
    customers, users, plans, keys = Customer.objects.count(), User.objects.count(), Plan.objects.count(), ApiKey.objects.count()
    assert client.post("/admin/customers/new/", {"name": "Evil", "email": "e@example.com", "language": "en"}).status_code == 404
    assert client.post("/admin/users/new/", {"username": "evil", "role": "admin", "password1": "x" * 12,
                                              "password2": "x" * 12}).status_code == 404
    assert client.post("/admin/plans/new/", {"name": "evil", "vcpus": 1, "ram_mib": 256, "disk_gib": 1}).status_code == 404
    assert client.post(f"/admin/customers/{ui_world.bob_customer.pk}/edit/",
                       {"name": "Pwned", "email": "p@example.com", "language": "en"}).status_code == 404
    assert client.post("/admin/api-keys/new/", {"name": "evil", "scope": "admin"}).status_code == 404
    assert client.post("/admin/servers/new/", {"customer": ui_world.bob_customer.pk, "plan": ui_world.plan.pk,
                                                "hostname": "evil", "os_template": "tiny"}).status_code == 404
    assert (Customer.objects.count(), User.objects.count(), Plan.objects.count(), ApiKey.objects.count()) == \
        (customers, users, plans, keys)
    ui_world.bob_customer.refresh_from_db()
    assert ui_world.bob_customer.name == "Bob UI GmbH"


def test_admin_sees_every_admin_page(ui_world):
    client = ui_world.client(ui_world.admin)
    for url in admin_urls(ui_world):
        r = client.get(url)
        assert r.status_code == 200, url
    assert "bob-db" in client.get("/admin/servers/").content.decode()


def test_anonymous_visitors_are_sent_to_sign_in(ui_world):
    client = Client()
    for url in ["/", "/servers/", f"/servers/{ui_world.alice_server.pk}/", "/api-keys/", "/admin/", "/account/security/"]:
        r = client.get(url)
        assert r.status_code == 302 and r["Location"].startswith("/login/"), url
    r = client.post(f"/servers/{ui_world.alice_server.pk}/actions/stop/")
    assert r.status_code == 302 and r["Location"].startswith("/login/")
    assert ui_world.alice_server.operations.count() == 1


# --- The websocket ---------------------------------------------------------------------------
# The consumer reaches the database through database_sync_to_async, which closes connections
# around each call: on MariaDB that needs committed data, hence transaction=True.
websocket_db = pytest.mark.django_db(transaction=True)

def _router():
    from panel.ui.routing import websocket_urlpatterns

    return URLRouter(websocket_urlpatterns)


def _connect(user, server_id):
    communicator = WebsocketCommunicator(_router(), f"/ws/servers/{server_id}/")
    communicator.scope["user"] = user
    return communicator


@websocket_db
def test_websocket_refuses_bob_for_alices_server(ui_world):
    async def run():
        communicator = _connect(ui_world.bob, ui_world.alice_server.pk)
        connected, code = await communicator.connect()
        assert not connected and code == 4404
        communicator = _connect(ui_world.bob, 999999)
        connected, code = await communicator.connect()
        assert not connected and code == 4404

    async_to_sync(run)()


@websocket_db
def test_websocket_refuses_anonymous(ui_world):
    async def run():
        communicator = _connect(AnonymousUser(), ui_world.alice_server.pk)
        connected, code = await communicator.connect()
        assert not connected and code == 4401

    async_to_sync(run)()


@websocket_db
def test_websocket_sends_state_to_alice_and_follows_changes(ui_world, monkeypatch):
    from panel.accounts.tenancy import SYSTEM
    from panel.ui.consumers import ServerConsumer
    from panel.vps import lifecycle

    monkeypatch.setattr(ServerConsumer, "poll_seconds", 0.05)
    server = ui_world.alice_server

    async def run():
        communicator = _connect(ui_world.alice, server.pk)
        connected, _ = await communicator.connect()
        assert connected
        first = await communicator.receive_json_from(timeout=5)
        assert first["state"] == "running" and first["state_label"] == "Running"
        assert first["operation"]["kind"] == "create" and first["operation"]["status"] == "succeeded"
        assert set(first["operation"]) >= {"id", "kind", "status", "progress", "error", "log_tail"}
        assert "reboot" in first["actions"] and "stop" in first["actions"] and "suspend" not in first["actions"]
        # A change in the database (the worker in another process) reaches the browser by polling.
        await database_sync_to_async(lifecycle.request_action)(SYSTEM, server.pk, "stop", {"force": True})
        update = await communicator.receive_json_from(timeout=5)
        while update["state"] != "stopped":
            update = await communicator.receive_json_from(timeout=5)
        assert update["operation"]["kind"] == "stop" and update["actions"] == ["start"]
        await communicator.disconnect()

    async_to_sync(run)()


@websocket_db
def test_websocket_forwards_worker_messages(ui_world, monkeypatch):
    from panel.ui.consumers import ServerConsumer
    from panel.progress import server_group

    monkeypatch.setattr(ServerConsumer, "poll_seconds", 60)
    server = ui_world.alice_server
    op = Operation.objects.filter(server=server).first()

    async def run():
        communicator = _connect(ui_world.alice, server.pk)
        connected, _ = await communicator.connect()
        assert connected
        await communicator.receive_json_from(timeout=5)
        await get_channel_layer().group_send(server_group(server.pk), {
            "type": "server.update", "state": "running",
            "operation": {"id": op.pk + 1000, "kind": "reboot", "status": "running", "progress": 42, "error": "",
                          "server": server.pk, "log_tail": "starting again"},
        })
        message = await communicator.receive_json_from(timeout=5)
        assert message["operation"]["progress"] == 42 and message["operation"]["log_tail"] == "starting again"
        assert message["busy"] is True
        await communicator.disconnect()

    async_to_sync(run)()


@websocket_db
def test_websocket_through_the_asgi_application_uses_the_session(ui_world):
    from django.conf import settings

    from panel.asgi import application

    client = ui_world.client(ui_world.alice)
    cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
    headers = [(b"cookie", cookie.encode()), (b"origin", b"http://testserver"), (b"host", b"testserver")]

    async def run():
        communicator = WebsocketCommunicator(application, f"/ws/servers/{ui_world.alice_server.pk}/", headers=headers)
        connected, _ = await communicator.connect()
        assert connected
        assert (await communicator.receive_json_from(timeout=5))["state"] == "running"
        await communicator.disconnect()
        communicator = WebsocketCommunicator(application, f"/ws/servers/{ui_world.bob_server.pk}/", headers=headers)
        connected, code = await communicator.connect()
        assert not connected and code == 4404

    async_to_sync(run)()


def test_audit_entries_of_ui_actions_name_the_user(ui_world):
    ui_world.client(ui_world.alice).post(f"/servers/{ui_world.alice_server.pk}/actions/reboot/")
    entry = AuditEntry.objects.filter(action="server.reboot").get()
    assert entry.user == ui_world.alice and entry.customer_id == ui_world.alice_customer.pk

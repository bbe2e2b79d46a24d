"""The web UI's pages and forms: sign-in, throttling, TOTP, language, power buttons, admin forms."""

import re
from pathlib import Path

import pyotp
import pytest

from tests.conftest import fake_node
from django.conf import settings as django_settings
from django.core.management import call_command
from django.test import Client

from nodes.connection import driver_for
from nodes.models import Drift, Node
from panel.accounts.models import ApiKey, AuditEntry, Customer, User
from panel.vps.models import Operation, Plan, VirtualServer
from tests.test_ui_isolation import ui_inline, ui_world  # noqa: F401  (fixtures)

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="session")
def ui_russian_catalog():
    """The Russian catalogue compiled (the Makefile does it before the suite; this makes sure)."""
    po = Path(django_settings.BASE_DIR) / "locale" / "ru" / "LC_MESSAGES" / "django.po"
    mo = po.with_suffix(".mo")
    if not mo.exists() or mo.stat().st_mtime < po.stat().st_mtime:
        call_command("compilemessages", locale=["ru"], ignore_patterns=[".venv", ".cache", "data"], verbosity=0)
    from django.utils.translation import trans_real

    trans_real._translations = {}  # forget a catalogue loaded before the .mo existed


def login(client, username, password):
    return client.post("/login/", {"username": username, "password": password})


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


# --- Signing in ------------------------------------------------------------------------------

def test_login_sends_customers_to_their_servers_and_admins_to_the_dashboard(ui_world):
    client = Client()
    r = login(client, "ui-alice", "alice-pass-123")
    assert r.status_code == 302 and r["Location"] == "/"
    assert client.get("/")["Location"] == "/servers/"
    admin = Client()
    login(admin, "ui-admin", "admin-pass-123")
    assert admin.get("/")["Location"] == "/admin/"
    assert admin.get("/admin/").status_code == 200


def test_login_follows_a_local_next_only(ui_world):
    client = Client()
    r = client.post("/login/?next=/api-keys/", {"username": "ui-alice", "password": "alice-pass-123", "next": "/api-keys/"})
    assert r["Location"] == "/api-keys/"
    client = Client()
    r = client.post("/login/", {"username": "ui-alice", "password": "alice-pass-123", "next": "https://evil.example/"})
    assert r["Location"] == "/"


def test_wrong_password_is_refused_and_recorded(ui_world):
    from panel.accounts.models import LoginFailure

    client = Client()
    r = login(client, "ui-alice", "wrong")
    assert r.status_code == 200 and "Wrong username or password." in r.content.decode()
    assert LoginFailure.objects.filter(username="ui-alice").count() == 1
    assert client.get("/servers/").status_code == 302


def test_sixth_attempt_is_refused_even_with_the_right_password(ui_world):
    client = Client()
    for _ in range(5):
        assert "Wrong username or password." in login(client, "ui-alice", "wrong").content.decode()
    r = login(client, "ui-alice", "alice-pass-123")
    assert r.status_code == 200
    assert "Too many failed sign-in attempts" in r.content.decode()
    assert "_auth_user_id" not in client.session
    # Another user from another address is not locked out by Alice's failures.
    other = Client(REMOTE_ADDR="10.9.9.9")
    assert login(other, "ui-bob", "bob-pass-1234").status_code == 302


def test_logout_is_a_post(ui_world):
    client = ui_world.client(ui_world.alice)
    assert client.get("/logout/").status_code == 405
    r = client.post("/logout/")
    assert r["Location"] == "/login/"
    assert client.get("/servers/").status_code == 302


# --- TOTP ------------------------------------------------------------------------------------

def test_totp_enable_then_sign_in_with_a_code(ui_world):
    client = ui_world.client(ui_world.alice)
    page = client.get("/account/security/").content.decode()
    secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', page).group(1)
    assert "otpauth://totp/" in page
    # A wrong code does not turn it on.
    r = client.post("/account/security/", {"code": "000000"})
    assert "That code is not valid" in r.content.decode()
    ui_world.alice.refresh_from_db()
    assert ui_world.alice.totp_secret == ""
    # Each step's code is good once: enabling, signing in and disabling use three steps.
    import time

    r = client.post("/account/security/", {"code": pyotp.TOTP(secret).at(time.time() - 30)})
    assert r.status_code == 302
    ui_world.alice.refresh_from_db()
    assert ui_world.alice.totp_secret == secret
    assert AuditEntry.objects.filter(action="user.totp_enable", user=ui_world.alice).exists()

    # Signing in now needs the code; until then only the code page answers.
    fresh = Client()
    r = login(fresh, "ui-alice", "alice-pass-123")
    assert r["Location"] == "/login/code/"
    assert fresh.get("/servers/")["Location"] == "/login/code/"
    assert fresh.get(f"/servers/{ui_world.alice_server.pk}/")["Location"] == "/login/code/"
    r = fresh.post("/login/code/", {"code": "123456" if pyotp.TOTP(secret).now() != "123456" else "654321"})
    assert r.status_code == 200 and "That code is not valid" in r.content.decode()
    r = fresh.post("/login/code/", {"code": pyotp.TOTP(secret).now()})
    assert r.status_code == 302 and r["Location"] == "/"
    assert fresh.get("/servers/").status_code == 200

    # Turning it off needs the password and a code too.
    r = fresh.post("/account/security/", {"password": "alice-pass-123", "code": pyotp.TOTP(secret).at(time.time() + 30)})
    assert r.status_code == 302
    ui_world.alice.refresh_from_db()
    assert ui_world.alice.totp_secret == ""
    assert AuditEntry.objects.filter(action="user.totp_disable").exists()


def test_totp_codes_are_throttled(ui_world):
    ui_world.alice.totp_secret = pyotp.random_base32()
    ui_world.alice.save()
    client = Client()
    login(client, "ui-alice", "alice-pass-123")
    now = pyotp.TOTP(ui_world.alice.totp_secret).now()
    wrong = "000000" if now != "000000" else "111111"
    for _ in range(4):
        client.post("/login/code/", {"code": wrong})
    # The fifth wrong code ends the half-signed-in session: the password is needed again, and
    # then the right code still waits (panel/accounts/throttle.py).
    r = client.post("/login/code/", {"code": wrong})
    assert r["Location"] == "/login/"
    assert client.get("/servers/")["Location"].startswith("/login/")
    login(client, "ui-alice", "alice-pass-123")
    r = client.post("/login/code/", {"code": pyotp.TOTP(ui_world.alice.totp_secret).now()})
    assert r.status_code == 200 and "Too many failed attempts" in r.content.decode()
    assert client.get("/servers/")["Location"] == "/login/code/"


# --- Language --------------------------------------------------------------------------------

def test_language_switch_shows_russian(ui_world, ui_russian_catalog):
    client = ui_world.client(ui_world.alice)
    assert "My servers" in client.get("/servers/").content.decode()
    r = client.post("/language/", {"language": "ru", "next": "/servers/"})
    assert r.status_code == 302 and r["Location"] == "/servers/"
    page = client.get("/servers/").content.decode()
    assert "Мои серверы" in page and "My servers" not in page
    ui_world.alice.refresh_from_db()
    assert ui_world.alice.language == "ru"
    assert AuditEntry.objects.filter(action="user.language", user=ui_world.alice).exists()
    # The choice follows the user to the next sign-in.
    fresh = Client()
    login(fresh, "ui-alice", "alice-pass-123")
    detail = fresh.get(f"/servers/{ui_world.alice_server.pk}/").content.decode()
    assert "Перезагрузить" in detail and "Работает" in detail
    # And back.
    fresh.post("/language/", {"language": "en"})
    assert "My servers" in fresh.get("/servers/").content.decode()


def test_customers_language_applies_at_sign_in(ui_world, ui_russian_catalog):
    ui_world.bob_customer.language = "ru"
    ui_world.bob_customer.save()
    client = Client()
    login(client, "ui-bob", "bob-pass-1234")
    assert "Мои серверы" in client.get("/servers/").content.decode()


def test_russian_tells_a_backup_plan_from_a_customer_plan_and_a_backup_target_from_storage(ui_world,
                                                                                           ui_russian_catalog):
    client = ui_world.client(ui_world.admin)
    client.post("/language/", {"language": "ru"})
    backups = client.get("/admin/backups/").content.decode()
    assert "Новый план" in backups and "Новый тариф" not in backups and "Новое хранилище копий" in backups
    assert "Новый тариф" in client.get("/admin/plans/").content.decode()


def test_unknown_language_is_ignored(ui_world):
    client = ui_world.client(ui_world.alice)
    client.post("/language/", {"language": "xx"})
    ui_world.alice.refresh_from_db()
    assert ui_world.alice.language == ""


# --- The server page and its buttons ---------------------------------------------------------

def test_server_page_shows_state_resources_and_live_hooks(ui_world):
    page = ui_world.client(ui_world.alice).get(f"/servers/{ui_world.alice_server.pk}/").content.decode()
    assert 'id="server-state" data-state="running"' in page
    assert '<progress id="op-progress"' in page and 'id="op-status"' in page
    assert 'data-action="reboot"' in page and 'data-action="stop"' in page and 'data-action="start"' in page
    assert re.search(r'id="action-start"[^>]*disabled', page)
    assert not re.search(r'id="action-reboot"[^>]*disabled', page)
    assert "256 MiB" in page and "1 GiB" in page
    assert "/static/ui/server.js" in page and 'id="server-snapshot"' in page


def test_power_buttons_run_operations_and_the_page_shows_the_new_state(ui_world):
    client = ui_world.client(ui_world.alice)
    server = ui_world.alice_server
    url = f"/servers/{server.pk}/"
    r = client.post(f"{url}actions/force-stop/", follow=True)
    assert r.redirect_chain[-1][0] == url
    assert "Forced power off requested." in messages_of(r)
    page = r.content.decode()
    assert 'id="server-state" data-state="stopped"' in page and ">Stopped<" in page
    assert driver_for("fake://ui-fake").state(server.domain_name) == "shutoff"
    op = Operation.objects.filter(server=server).first()
    assert op.kind == "stop" and op.params == {"force": True} and op.status == "succeeded"

    r = client.post(f"{url}actions/start/", follow=True)
    assert 'data-state="running"' in r.content.decode()
    boot_id = driver_for("fake://ui-fake").info(server.domain_name).boot_id
    r = client.post(f"{url}actions/reboot/", follow=True)
    assert "Reboot requested." in messages_of(r)
    assert driver_for("fake://ui-fake").info(server.domain_name).boot_id != boot_id
    assert Operation.objects.filter(server=server, kind="reboot", status="succeeded").exists()


def test_a_refused_action_shows_the_reason(ui_world):
    client = ui_world.client(ui_world.alice)
    r = client.post(f"/servers/{ui_world.alice_server.pk}/actions/start/", follow=True)
    assert any("Cannot start a server that is running" in m for m in messages_of(r))
    assert client.post(f"/servers/{ui_world.alice_server.pk}/actions/explode/").status_code == 404
    assert client.get(f"/servers/{ui_world.alice_server.pk}/actions/stop/").status_code == 405


def test_suspend_with_reason_is_shown_to_the_customer(ui_world):
    admin = ui_world.client(ui_world.admin)
    server = ui_world.alice_server
    r = admin.post(f"/servers/{server.pk}/actions/suspend/", {"reason": "invoice 42 unpaid"}, follow=True)
    assert "Suspension requested." in messages_of(r)
    server.refresh_from_db()
    assert server.state == "suspended" and server.suspend_reason == "invoice 42 unpaid"
    alice = ui_world.client(ui_world.alice)
    page = alice.get(f"/servers/{server.pk}/").content.decode()
    assert "invoice 42 unpaid" in page and 'data-state="suspended"' in page
    r = alice.post(f"/servers/{server.pk}/actions/start/", follow=True)
    assert any("invoice 42 unpaid" in m for m in messages_of(r))
    r = admin.post(f"/servers/{server.pk}/actions/unsuspend/", follow=True)
    server.refresh_from_db()
    assert server.state == "running"


def test_admin_deletes_a_server(ui_world):
    admin = ui_world.client(ui_world.admin)
    server = ui_world.bob_server
    r = admin.post(f"/servers/{server.pk}/actions/delete/")
    assert r.status_code == 302 and r["Location"] == "/admin/servers/"
    assert not VirtualServer.objects.filter(pk=server.pk).exists()
    op = Operation.objects.filter(kind="delete").get()
    # The customer still sees the operation of the deleted server.
    page = ui_world.client(ui_world.bob).get(f"/operations/{op.pk}/").content.decode()
    assert "bob-db" in page


def test_operation_page_shows_the_log(ui_world):
    op = Operation.objects.filter(server=ui_world.alice_server).first()
    page = ui_world.client(ui_world.alice).get(f"/operations/{op.pk}/").content.decode()
    assert 'id="operation-log"' in page and "done" in page


# --- Admin forms -----------------------------------------------------------------------------

def test_admin_creates_and_edits_a_customer(ui_world):
    admin = ui_world.client(ui_world.admin)
    r = admin.post("/admin/customers/new/", {"name": "Carol AG", "email": "carol@example.com", "external_id": "",
                                             "language": "ru"})
    carol = Customer.objects.get(name="Carol AG")
    assert r["Location"] == f"/admin/customers/{carol.pk}/"
    assert carol.external_id is None
    assert AuditEntry.objects.filter(action="customer.create", object_id=str(carol.pk)).exists()
    r = admin.post(f"/admin/customers/{carol.pk}/edit/", {"name": "Carol AG", "email": "billing@carol.example",
                                                           "external_id": "C-9", "language": "en"})
    carol.refresh_from_db()
    assert carol.email == "billing@carol.example" and carol.external_id == "C-9"
    entry = AuditEntry.objects.get(action="customer.update")
    assert entry.detail["email"] == "billing@carol.example"
    r = admin.post("/admin/customers/new/", {"name": "Dup", "email": "not-an-email", "external_id": "C-9", "language": "en"})
    assert r.status_code == 200 and not Customer.objects.filter(name="Dup").exists()
    page = admin.get(f"/admin/customers/{ui_world.alice_customer.pk}/").content.decode()
    assert "ui-alice" in page and "alice-web" in page


def test_admin_creates_users(ui_world):
    admin = ui_world.client(ui_world.admin)
    r = admin.post("/admin/users/new/", {"username": "carol", "role": "customer", "customer": ui_world.alice_customer.pk,
                                         "password1": "a-long-passphrase-1", "password2": "a-long-passphrase-1"})
    assert r.status_code == 302
    carol = User.objects.get(username="carol")
    assert carol.customer == ui_world.alice_customer and carol.check_password("a-long-passphrase-1")
    assert AuditEntry.objects.filter(action="user.create", object_id=str(carol.pk)).exists()
    r = admin.post("/admin/users/new/", {"username": "ops", "role": "admin", "password1": "another-long-pass-2",
                                         "password2": "another-long-pass-2"})
    assert r.status_code == 302 and User.objects.get(username="ops").is_provider_admin
    # A customer's user needs a customer; passwords are validated.
    r = admin.post("/admin/users/new/", {"username": "orphan", "role": "customer", "password1": "a-long-passphrase-1",
                                         "password2": "a-long-passphrase-1"})
    assert r.status_code == 200 and "needs a customer" in r.content.decode()
    r = admin.post("/admin/users/new/", {"username": "weak", "role": "admin", "password1": "short", "password2": "short"})
    assert r.status_code == 200 and not User.objects.filter(username__in=["orphan", "weak"]).exists()
    assert "carol" in admin.get("/admin/users/").content.decode()


def test_admin_creates_and_edits_plans_with_validation(ui_world):
    admin = ui_world.client(ui_world.admin)
    data = {"name": "large", "vcpus": 4, "ram_mib": 4096, "disk_gib": 80, "traffic_gib": 0, "bandwidth_mbit": 0,
            "ipv4_count": 1, "ipv6_count": 1, "backups": 2}
    assert admin.post("/admin/plans/new/", data).status_code == 302
    plan = Plan.objects.get(name="large")
    assert AuditEntry.objects.filter(action="plan.create", object_id=str(plan.pk)).exists()
    r = admin.post("/admin/plans/new/", {**data, "name": "broken", "vcpus": 0, "ram_mib": 10})
    assert r.status_code == 200 and not Plan.objects.filter(name="broken").exists()
    assert admin.post(f"/admin/plans/{plan.pk}/edit/", {**data, "vcpus": 8}).status_code == 302
    plan.refresh_from_db()
    assert plan.vcpus == 8 and AuditEntry.objects.filter(action="plan.update").exists()
    assert admin.get("/admin/plans/999999/edit/").status_code == 404


def test_admin_creates_a_server_and_sees_refusals_as_form_errors(ui_world):
    admin = ui_world.client(ui_world.admin)
    data = {"customer": ui_world.bob_customer.pk, "plan": ui_world.plan.pk, "hostname": "bob-new", "os_template": "tiny"}
    r = admin.post("/admin/servers/new/", data)
    server = VirtualServer.objects.get(hostname="bob-new")
    assert r["Location"] == f"/servers/{server.pk}/"
    assert server.state == "running" and server.node == ui_world.node
    offline = fake_node("down", state=Node.State.OFFLINE)
    r = admin.post("/admin/servers/new/", {**data, "hostname": "bob-two", "node": offline.pk})
    assert r.status_code == 200 and "offline" in r.content.decode()
    r = admin.post("/admin/servers/new/", {**data, "hostname": "bad;rm -rf"})
    assert r.status_code == 200 and not VirtualServer.objects.filter(hostname__startswith="bad").exists()
    listing = admin.get(f"/admin/servers/?customer={ui_world.bob_customer.pk}&state=running").content.decode()
    assert "bob-new" in listing and "alice-web" not in listing


def test_admin_api_keys_show_the_raw_key_once_and_revoke(ui_world):
    admin = ui_world.client(ui_world.admin)
    r = admin.post("/admin/api-keys/new/", {"name": "billing-sync", "scope": "billing"})
    raw = re.search(r'id="raw-key">(pk_[^<]+)<', r.content.decode()).group(1)
    key = ApiKey.objects.get(name="billing-sync")
    assert key.key_hash == ApiKey.hash(raw) and r["Cache-Control"] == "no-store"
    assert raw not in admin.get("/admin/api-keys/").content.decode()
    assert AuditEntry.objects.filter(action="apikey.create", object_id=str(key.pk)).exists()
    # A customer key needs a customer.
    r = admin.post("/admin/api-keys/new/", {"name": "orphan", "scope": "customer"})
    assert r.status_code == 200 and not ApiKey.objects.filter(name="orphan").exists()
    assert admin.post(f"/api-keys/{key.pk}/revoke/")["Location"] == "/admin/api-keys/"
    key.refresh_from_db()
    assert not key.is_active and AuditEntry.objects.filter(action="apikey.revoke").exists()


def test_customer_manages_own_api_keys(ui_world):
    alice = ui_world.client(ui_world.alice)
    r = alice.post("/api-keys/", {"name": "deploy"})
    raw = re.search(r'id="raw-key">(pk_[^<]+)<', r.content.decode()).group(1)
    key = ApiKey.objects.get(name="deploy")
    assert key.scope == "customer" and key.customer == ui_world.alice_customer and key.created_by == ui_world.alice
    assert key.key_hash == ApiKey.hash(raw)
    page = alice.get("/api-keys/").content.decode()
    assert "deploy" in page and "alice-script" in page and raw not in page
    assert alice.post(f"/api-keys/{key.pk}/revoke/")["Location"] == "/api-keys/"
    key.refresh_from_db()
    assert not key.is_active


def test_dashboard_nodes_drift_and_audit(ui_world):
    Drift.objects.create(node=ui_world.node, kind=Drift.Kind.UNKNOWN_DOMAIN, domain_name="stray-vm", detail="not ours")
    Drift.objects.create(node=ui_world.node, kind=Drift.Kind.STATE_MISMATCH, detail="fixed already", repaired=True)
    admin = ui_world.client(ui_world.admin)
    page = admin.get("/admin/").content.decode()
    assert "stray-vm" in page and "fixed already" not in page
    assert 'id="count-servers">2<' in page
    node_page = admin.get(f"/admin/nodes/{ui_world.node.pk}/").content.decode()
    assert "stray-vm" in node_page and "fixed already" not in node_page
    assert "fixed already" in admin.get(f"/admin/nodes/{ui_world.node.pk}/?show=all").content.decode()
    nodes = admin.get("/admin/nodes/").content.decode()
    assert "ui-fake" in nodes and "qemu" in nodes
    audit = admin.get("/admin/audit/?action=server.").content.decode()
    assert "server.create" in audit


def test_lists_are_paginated(ui_world):
    Customer.objects.bulk_create(Customer(name=f"Bulk {i:03}", email=f"b{i}@example.com") for i in range(60))
    admin = ui_world.client(ui_world.admin)
    first = admin.get("/admin/customers/").content.decode()
    assert "Bulk 000" in first and "Bulk 050" not in first and "page=2" in first
    third = admin.get("/admin/customers/?page=3").content.decode()
    assert "Bulk 059" in third
    assert admin.get("/admin/customers/?page=99").status_code == 200
    ops = admin.get("/admin/operations/?status=succeeded&kind=create").content.decode()
    assert "alice-web" in ops and "bob-db" in ops


def test_buttons_posted_in_the_background_answer_json(ui_world):
    client = ui_world.client(ui_world.alice)
    ajax = {"HTTP_X_REQUESTED_WITH": "XMLHttpRequest"}
    url = f"/servers/{ui_world.alice_server.pk}/actions/"
    r = client.post(url + "reboot/", **ajax)
    assert r.status_code == 200 and r.json()["ok"] is True and r.json()["message"] == "Reboot requested."
    snap = r.json()["snapshot"]
    assert snap["state"] == "running" and snap["operation"]["kind"] == "reboot" and "stop" in snap["actions"]
    r = client.post(url + "start/", **ajax)
    assert r.status_code == 409 and r.json()["ok"] is False and r.json()["code"] == "invalid_state"
    # Nothing is left in the message queue for the next page.
    assert not messages_of(client.get(f"/servers/{ui_world.alice_server.pk}/"))
    assert ui_world.client(ui_world.bob).post(url + "reboot/", **ajax).status_code == 404

"""Accounts and sessions hardening (issue 19): the sign-in throttle, the second factor, the
admins' 2FA requirement, cookies and HSTS behind TLS, session lifetimes, the sessions page, and
websockets that close when their user, session or API key loses access.

On MariaDB through Django's test client, and channels' communicator against the real ASGI app
(the console's node side is a small RFB server standing in for QEMU's VNC)."""

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from datetime import timedelta

import pyotp
import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.contrib.sessions.models import Session
from django.test import Client

from panel.accounts.models import ApiKey, AuditEntry, LoginFailure, User
from tests.test_ui_isolation import ui_inline, ui_world  # noqa: F401  (fixtures)

pytestmark = pytest.mark.django_db

ADMIN, ADMIN_PW = "ui-admin", "admin-pass-123"
ALICE, ALICE_PW = "ui-alice", "alice-pass-123"


def login(client, username, password):
    return client.post("/login/", {"username": username, "password": password})


def signed_in(client) -> bool:
    return "_auth_user_id" in client.session


def at(address: str, agent: str = "test-browser") -> Client:
    return Client(REMOTE_ADDR=address, HTTP_USER_AGENT=agent)


def age_failures(seconds: int, **lookup) -> None:
    """Move recorded failures back in time (the lock's delays are measured from them)."""
    for failure in LoginFailure.objects.filter(**lookup):
        LoginFailure.objects.filter(pk=failure.pk).update(created_at=failure.created_at - timedelta(seconds=seconds))


def wrong_code(secret: str) -> str:
    now = pyotp.TOTP(secret).now()
    return "000000" if now != "000000" else "111111"


def with_totp(user) -> str:
    user.totp_secret = pyotp.random_base32()
    user.save()
    return user.totp_secret


# --- Passwords ---------------------------------------------------------------------------------

def test_signing_in_as_oneself_between_guesses_does_not_reset_them(ui_world):
    """A customer signing in as themselves between guesses at the admin's password (one address)."""
    attacker = at("10.0.0.50")
    for _ in range(10):
        for _ in range(4):
            login(attacker, ADMIN, "guess-wrong")
        assert login(attacker, ALICE, ALICE_PW).status_code == 302
        attacker.post("/logout/")
    r = login(attacker, ADMIN, ADMIN_PW)
    assert "Too many failed sign-in attempts" in r.content.decode() and not signed_in(attacker)
    # Alice's own sign-ins cleared only her own failures: none of the admin's guesses went.
    assert LoginFailure.objects.filter(username=ADMIN, address="10.0.0.50").count() >= 5


def test_failures_elsewhere_do_not_lock_the_owner_out(ui_world):
    attacker = at("10.0.0.66")
    for _ in range(8):
        login(attacker, ADMIN, "guess-wrong")
    assert "Too many failed sign-in attempts" in login(attacker, ADMIN, ADMIN_PW).content.decode()
    owner = at("192.0.2.10")
    assert login(owner, ADMIN, ADMIN_PW).status_code == 302 and signed_in(owner)


def test_the_lock_of_a_user_and_address_grows(ui_world, settings):
    settings.LOGIN_LOCK_SECONDS = 60
    client = at("10.0.0.70")
    for _ in range(5):
        assert "Wrong username or password." in login(client, ADMIN, "guess-wrong").content.decode()
    assert "Too many failed" in login(client, ADMIN, ADMIN_PW).content.decode()
    age_failures(61)
    # 60 s after the fifth failure: one more try; it fails, and the next wait is 120 s.
    assert "Wrong username or password." in login(client, ADMIN, "guess-wrong").content.decode()
    age_failures(61)
    assert "Too many failed" in login(client, ADMIN, ADMIN_PW).content.decode()
    age_failures(60)
    assert login(client, ADMIN, ADMIN_PW).status_code == 302
    assert not LoginFailure.objects.filter(username=ADMIN, address="10.0.0.70").exists()


def test_one_address_spraying_usernames_is_stopped(ui_world, settings):
    client = at("10.0.0.80")
    for n in range(settings.LOGIN_ADDRESS_MAX_FAILURES):
        login(client, f"nobody-{n}", "guess-wrong")
    assert "Too many failed" in login(client, ALICE, ALICE_PW).content.decode()
    assert login(at("10.0.0.81"), ALICE, ALICE_PW).status_code == 302


def test_a_distributed_guesser_is_stopped_but_the_owners_usual_address_still_signs_in(ui_world, settings):
    settings.LOGIN_USER_MAX_FAILURES = 20
    assert login(at("192.0.2.10"), ADMIN, ADMIN_PW).status_code == 302  # the owner's usual address
    for n in range(20):
        assert "Wrong username" in login(at(f"10.1.0.{n + 1}"), ADMIN, "guess-wrong").content.decode()
    # A new address, even with the right password, is refused now...
    fresh = at("10.2.0.1")
    assert "Too many failed" in login(fresh, ADMIN, ADMIN_PW).content.decode() and not signed_in(fresh)
    # ...while the owner's usual address, which never failed, signs in.
    owner = at("192.0.2.10")
    assert login(owner, ADMIN, ADMIN_PW).status_code == 302 and signed_in(owner)


# --- The second factor -------------------------------------------------------------------------

def test_the_second_factor_is_not_reset_by_the_password(ui_world):
    """40 wrong codes, the password re-entered every 4, then the right code: refused."""
    secret = with_totp(ui_world.admin)
    client = at("10.0.0.90")
    for _ in range(10):
        client.post("/logout/")
        assert login(client, ADMIN, ADMIN_PW)["Location"] == "/login/code/"
        for _ in range(4):
            client.post("/login/code/", {"code": wrong_code(secret)})
    client.post("/logout/")
    assert login(client, ADMIN, ADMIN_PW)["Location"] == "/login/code/"
    r = client.post("/login/code/", {"code": pyotp.TOTP(secret).now()})
    assert r.status_code == 200 and "Too many failed attempts" in r.content.decode()
    assert client.get("/admin/")["Location"] == "/login/code/"
    # Only OTP_MAX_FAILURES codes were ever checked: the rest were refused unread, and the
    # fifth ended the half-signed-in session.
    assert LoginFailure.objects.filter(kind="code", username=ADMIN).count() == 5
    assert AuditEntry.objects.filter(action="user.otp_lockout", user=ui_world.admin).count() == 1


def test_after_the_wait_a_right_code_signs_in_and_clears_the_count(ui_world, settings):
    settings.LOGIN_LOCK_SECONDS = 60
    secret = with_totp(ui_world.admin)
    client = at("10.0.0.91")
    login(client, ADMIN, ADMIN_PW)
    for _ in range(5):
        r = client.post("/login/code/", {"code": wrong_code(secret)})
    assert r["Location"] == "/login/"
    login(client, ADMIN, ADMIN_PW)
    assert "Too many failed attempts" in client.post("/login/code/", {"code": pyotp.TOTP(secret).now()}).content.decode()
    age_failures(61, kind="code")
    r = client.post("/login/code/", {"code": pyotp.TOTP(secret).now()})
    assert r.status_code == 302 and r["Location"] == "/"
    assert not LoginFailure.objects.filter(kind="code", username=ADMIN).exists()


def test_a_totp_code_opens_one_session_only(ui_world):
    secret = with_totp(ui_world.alice)
    first, second = at("10.0.0.92"), at("10.0.0.93")
    login(first, ALICE, ALICE_PW)
    login(second, ALICE, ALICE_PW)
    code = pyotp.TOTP(secret).now()
    assert first.post("/login/code/", {"code": code})["Location"] == "/"
    r = second.post("/login/code/", {"code": code})
    assert r.status_code == 200 and "That code is not valid" in r.content.decode()
    assert second.get("/servers/")["Location"] == "/login/code/"
    # An earlier step's code is refused too once a later one was used.
    r = second.post("/login/code/", {"code": pyotp.TOTP(secret).at(time.time() - 30)})
    assert r.status_code == 200


def test_turning_the_second_factor_off_needs_the_password(ui_world):
    secret = with_totp(ui_world.alice)
    client = ui_world.client(ui_world.alice)
    codes = iter(pyotp.TOTP(secret).at(time.time() + 30 * n) for n in (-1, 0, 1))
    r = client.post("/account/security/", {"code": next(codes)})
    assert r.status_code == 200 and "This field is required." in r.content.decode()
    r = client.post("/account/security/", {"password": "not-her-password", "code": next(codes)})
    assert r.status_code == 200 and "Wrong password." in r.content.decode()
    ui_world.alice.refresh_from_db()
    assert ui_world.alice.totp_secret == secret
    assert LoginFailure.objects.filter(kind="password", username=ALICE).count() == 1
    r = client.post("/account/security/", {"password": ALICE_PW, "code": next(codes)})
    assert r.status_code == 302
    ui_world.alice.refresh_from_db()
    assert ui_world.alice.totp_secret == ""


def test_admins_can_be_required_to_set_up_a_second_factor(ui_world, settings):
    settings.REQUIRE_ADMIN_2FA = True
    admin = ui_world.client(ui_world.admin)
    for url in ("/admin/", "/servers/", "/account/sessions/", f"/servers/{ui_world.alice_server.pk}/"):
        assert admin.get(url)["Location"] == "/account/security/", url
    assert admin.post(f"/servers/{ui_world.alice_server.pk}/actions/stop/")["Location"] == "/account/security/"
    ui_world.alice_server.refresh_from_db()
    assert ui_world.alice_server.state == "running"
    r = admin.get("/api/v1/servers/")
    assert r.status_code == 403 and r.json()["code"] == "totp_setup_required"
    page = admin.get("/account/security/")
    assert page.status_code == 200 and 'id="totp-required"' in page.content.decode()
    # Set up, the admin reaches everything again; customers were never asked.
    secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', page.content.decode()).group(1)
    assert admin.post("/account/security/", {"code": pyotp.TOTP(secret).now()}).status_code == 302
    assert admin.get("/admin/").status_code == 200
    assert ui_world.client(ui_world.alice).get("/servers/").status_code == 200


# --- Cookies, HSTS, lifetimes ------------------------------------------------------------------

def _settings_in(env: dict) -> dict:
    code = ("import json, panel.settings as s; print(json.dumps([s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, "
            "s.SECURE_HSTS_SECONDS, s.SESSION_COOKIE_AGE, s.SESSION_IDLE_SECONDS]))")
    clean = {k: v for k, v in os.environ.items() if k not in ("BEHIND_TLS_PROXY", "HSTS_SECONDS",
                                                             "SESSION_COOKIE_SECURE", "SESSION_IDLE_SECONDS")}
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, cwd=django_settings.BASE_DIR,
                         capture_output=True, text=True, check=True).stdout
    return dict(zip(["session_secure", "csrf_secure", "hsts", "cookie_age", "idle"], json.loads(out)))


def test_behind_tls_cookies_are_secure_and_hsts_is_on_by_default():
    behind = _settings_in({"BEHIND_TLS_PROXY": "1"})
    assert behind["session_secure"] and behind["csrf_secure"] and behind["hsts"] >= 180 * 86400
    plain = _settings_in({})
    assert not plain["session_secure"] and plain["hsts"] == 0  # plain http (make run): no HSTS
    # The idle lifetime is short, and the cookie does not outlive it by more than the touch step.
    assert plain["idle"] <= 3600 and plain["cookie_age"] <= plain["idle"] + 60


def test_hsts_header_on_https_requests(ui_world, settings):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.SECURE_HSTS_SECONDS = 31536000
    r = Client().get("/login/", HTTP_X_FORWARDED_PROTO="https")
    assert r["Strict-Transport-Security"].startswith("max-age=31536000")


def _shift(client, key: str, seconds: int) -> None:
    from panel.accounts import sessions

    key = getattr(sessions, key)
    session = client.session
    session[key] = session[key] - seconds
    session.save()


def test_an_idle_session_ends_and_activity_keeps_it(ui_world, settings):
    client = at("10.0.0.94")
    login(client, ALICE, ALICE_PW)
    assert client.get("/servers/").status_code == 200
    _shift(client, "SEEN", settings.SESSION_IDLE_SECONDS - 100)
    assert client.get("/servers/").status_code == 200  # used in time: it slides on
    assert time.time() - client.session["panel_session_seen"] < 5
    key = client.session.session_key
    _shift(client, "SEEN", settings.SESSION_IDLE_SECONDS + 1)
    r = client.get("/servers/")
    assert r.status_code == 302 and r["Location"].startswith("/login/")
    assert not Session.objects.filter(session_key=key).exists()


def test_a_session_ends_after_its_absolute_lifetime(ui_world, settings):
    client = at("10.0.0.95")
    login(client, ALICE, ALICE_PW)
    client.get("/servers/")
    _shift(client, "SINCE", settings.SESSION_MAX_SECONDS + 1)
    assert client.get("/servers/")["Location"].startswith("/login/")


# --- The sessions page -------------------------------------------------------------------------

def test_the_sessions_page_lists_ones_own_sessions_and_ends_one_or_all(ui_world):
    from panel.accounts.models import UserSession

    laptop, phone = at("192.0.2.21", "Firefox on the laptop"), at("198.51.100.7", "Safari on the phone")
    for client in (laptop, phone):
        login(client, ALICE, ALICE_PW)
        client.get("/servers/")
    bob = at("192.0.2.99")
    login(bob, "ui-bob", "bob-pass-1234")
    page = laptop.get("/account/sessions/").content.decode()
    assert "192.0.2.21" in page and "198.51.100.7" in page and "Safari on the phone" in page
    assert "192.0.2.99" not in page and page.count("data-session-id=") == 2
    assert page.count("This session") == 1
    phones = UserSession.objects.get(user=ui_world.alice, address="198.51.100.7")
    # Bob cannot end Alice's session.
    assert bob.post(f"/account/sessions/{phones.pk}/end/").status_code == 404
    assert phone.get("/servers/").status_code == 200
    # Alice ends the phone's from the laptop.
    assert laptop.post(f"/account/sessions/{phones.pk}/end/")["Location"] == "/account/sessions/"
    assert phone.get("/servers/")["Location"].startswith("/login/")
    assert laptop.get("/servers/").status_code == 200
    # Everywhere: every session of hers, this one included; Bob's stays.
    login(phone, ALICE, ALICE_PW)
    phone.get("/servers/")
    assert laptop.post("/account/sessions/end-all/")["Location"] == "/login/"
    for client in (laptop, phone):
        assert client.get("/servers/")["Location"].startswith("/login/")
    assert bob.get("/servers/").status_code == 200
    assert not UserSession.objects.filter(user=ui_world.alice).exists()
    assert AuditEntry.objects.filter(action="user.sessions_end_all", user=ui_world.alice).exists()
    assert laptop.get("/account/sessions/end-all/").status_code in (302, 405)  # never a GET


def test_sign_out_everywhere_reaches_a_session_the_list_never_saw(ui_world):
    from panel.accounts.models import UserSession

    old = ui_world.client(ui_world.alice)  # as if signed in before the sessions list existed
    UserSession.objects.filter(user=ui_world.alice).delete()
    other = ui_world.client(ui_world.alice)
    other.get("/servers/")
    other.post("/account/sessions/end-all/")
    assert old.get("/servers/")["Location"].startswith("/login/")


# --- Websockets close when access is lost ------------------------------------------------------
websocket_db = pytest.mark.django_db(transaction=True)


def _cookie_headers(client) -> list:
    cookie = f"{django_settings.SESSION_COOKIE_NAME}={client.cookies[django_settings.SESSION_COOKIE_NAME].value}"
    return [(b"cookie", cookie.encode()), (b"origin", b"http://testserver"), (b"host", b"testserver")]


async def _closed_within(communicator, seconds: float) -> int | None:
    """The close code the socket got within `seconds` (other messages skipped), else None.
    A timeout cancels the application (asgiref's communicator): use it last."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            message = await communicator.receive_output(timeout=max(0.05, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            return None
        if message["type"] == "websocket.close":
            return message.get("code")
    return None


@websocket_db
@pytest.mark.parametrize("how", ["deactivated", "signed_out_everywhere", "password_changed"])
def test_live_progress_socket_closes_when_the_user_loses_the_session(ui_world, how):
    from panel.asgi import application

    client = ui_world.client(ui_world.alice)
    headers = _cookie_headers(client)

    def lose():
        from panel.accounts import sessions

        if how == "deactivated":
            User.objects.filter(pk=ui_world.alice.pk).update(is_active=False)
        elif how == "signed_out_everywhere":
            sessions.end_all(ui_world.alice)
        else:
            ui_world.alice.set_password("a-new-password-456")
            ui_world.alice.save()

    async def run():
        communicator = WebsocketCommunicator(application, f"/ws/servers/{ui_world.alice_server.pk}/", headers=headers)
        connected, _ = await communicator.connect()
        assert connected
        assert (await communicator.receive_json_from(timeout=5))["state"] == "running"
        assert await communicator.receive_nothing(1.5)  # open while nothing changes
        await database_sync_to_async(lose)()
        assert await _closed_within(communicator, 4) == 4401
        await communicator.wait()

    async_to_sync(run)()


class StandInVnc:
    """A VNC server that offers 'no authentication' and then just keeps the line open."""

    async def start(self):
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def handle(self, reader, writer):
        writer.write(b"RFB 003.008\n")
        await reader.readexactly(12)
        writer.write(bytes([1, 1]))
        await reader.readexactly(1)
        writer.write(b"\0\0\0\0")
        await writer.drain()
        while await reader.read(65536):
            pass
        writer.close()

    def stop(self):
        self.server.close()


@websocket_db
@pytest.mark.parametrize("holder", ["api_key_revoked", "user_deactivated"])
def test_console_socket_closes_when_its_key_is_revoked_or_its_user_deactivated(ui_world, monkeypatch, holder):
    from nodes.fake import FakeDriver
    from nodes.models import Node
    from novnc import consumers, tokens
    from panel.accounts.tenancy import actor_for_user
    from panel.asgi import application
    from rest_framework.test import APIClient

    monkeypatch.setattr(consumers, "WATCH_SECONDS", 0.5)
    Node.objects.filter(pk=ui_world.node.pk).update(address="127.0.0.1")
    server = ui_world.alice_server
    key, raw = ApiKey.issue(name="billing-bridge", scope="customer", customer=ui_world.alice_customer)
    headers = [(b"origin", b"http://testserver"), (b"host", b"testserver")]
    if holder == "api_key_revoked":
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
        r = api.post(f"/api/v1/servers/{server.pk}/console/")
        assert r.status_code == 201, r.content
        token = r.json()["url"].rstrip("/").rsplit("/", 1)[-1]
        lose = key.revoke
    else:
        client = ui_world.client(ui_world.alice)
        headers = _cookie_headers(client)
        _, token = tokens.issue(actor_for_user(ui_world.alice), server.pk)
        lose = lambda: User.objects.filter(pk=ui_world.alice.pk).update(is_active=False)  # noqa: E731

    async def run():
        vnc = StandInVnc()
        port = await vnc.start()
        monkeypatch.setattr(FakeDriver, "vnc_port", lambda self, name: port)
        try:
            communicator = WebsocketCommunicator(application, f"/ws/console/{token}/", headers=headers,
                                                 subprotocols=["binary"])
            connected, _ = await communicator.connect()
            assert connected
            assert await communicator.receive_from(timeout=5) == b"RFB 003.008\n"
            assert await communicator.receive_nothing(1.5)
            await database_sync_to_async(lose)()
            assert await _closed_within(communicator, 4) == 4401
            await communicator.wait()
        finally:
            vnc.stop()

    async_to_sync(run)()


@websocket_db
def test_a_console_token_of_a_revoked_key_does_not_connect(ui_world):
    from novnc import tokens
    from panel.accounts.tenancy import Actor
    from panel.asgi import application

    key, _raw = ApiKey.issue(name="gone-soon", scope="customer", customer=ui_world.alice_customer)
    actor = Actor(user=None, api_key=key, customer_id=ui_world.alice_customer.pk, is_admin=False)
    _, token = tokens.issue(actor, ui_world.alice_server.pk)
    key.revoke()

    async def run():
        communicator = WebsocketCommunicator(application, f"/ws/console/{token}/",
                                             headers=[(b"origin", b"http://testserver"), (b"host", b"testserver")])
        connected, _ = await communicator.connect()
        assert connected  # accepted, then closed with the reason's code
        assert await _closed_within(communicator, 3) == 4401

    async_to_sync(run)()


def test_the_sessions_page_in_russian(ui_world):
    from django.core.management import call_command
    from django.utils.translation import trans_real

    call_command("compilemessages", locale=["ru"], ignore_patterns=[".venv", ".cache", "data"], verbosity=0)
    trans_real._translations = {}
    client = at("10.0.0.96")
    login(client, ALICE, ALICE_PW)
    client.post("/language/", {"language": "ru"})
    page = client.get("/account/sessions/").content.decode()
    assert "Ваши сеансы" in page and "Выйти везде" in page and "30 мин. бездействия" in page
    assert "Этот сеанс" in page

"""The websockets' Origin check, on the real ASGI application (panel.asgi: the proxy headers,
the origin check, the session from the cookie, the live-progress consumer on MariaDB).

A page on another origin opening /ws/servers/<id>/ gets the customer's cookie sent along by the
browser: it must be refused before the consumer reads anything, whatever ALLOWED_HOSTS says
(its default '*' let channels' AllowedHostsOriginValidator take any Origin)."""

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings

from tests.test_ui_isolation import ui_inline, ui_world  # noqa: F401  (fixtures)

pytestmark = pytest.mark.django_db(transaction=True)  # the consumer reads committed rows


def _open(world, origin: str | None, *, host="testserver", scheme="ws", client=("127.0.0.1", 50000), extra=()):
    """(connected, the first message or the close code) for Alice's cookie on her server."""
    from panel.asgi import application

    session = world.client(world.alice).cookies[django_settings.SESSION_COOKIE_NAME].value
    headers = [(b"host", host.encode()), (b"cookie", f"{django_settings.SESSION_COOKIE_NAME}={session}".encode()),
               *extra]
    if origin is not None:
        headers.append((b"origin", origin.encode()))

    async def run():
        communicator = WebsocketCommunicator(application, f"/ws/servers/{world.alice_server.pk}/", headers=headers)
        # What daphne puts in the scope: the socket's peer and the scheme it was spoken in.
        communicator.scope.update(client=list(client), scheme=scheme)
        connected, code = await communicator.connect(timeout=5)
        if not connected:
            return False, code
        message = await communicator.receive_json_from(timeout=5)
        await communicator.disconnect()
        return True, message

    return async_to_sync(run)()


def test_a_page_on_another_origin_cannot_read_the_live_state_with_the_customers_cookie(ui_world, settings):
    settings.ALLOWED_HOSTS = ["*"]  # the default
    for origin in ("http://evil.example", "null", "http://testserver.evil.example", "http://evil.example:80"):
        connected, code = _open(ui_world, origin)
        assert not connected, f"{origin} read {code}"
        assert code == 1000  # channels' denier: closed before the consumer ran


def test_the_panels_own_origin_reads_it(ui_world, settings):
    settings.ALLOWED_HOSTS = ["*"]
    connected, message = _open(ui_world, "http://testserver")
    assert connected and message["state"] == "running"
    connected, message = _open(ui_world, "HTTP://TestServer:8443", host="testserver:8443")
    assert connected and message["state"] == "running"


def test_the_same_host_on_another_port_or_scheme_is_another_origin(ui_world, settings):
    settings.ALLOWED_HOSTS = ["*"]
    assert not _open(ui_world, "http://testserver:8080")[0]
    assert not _open(ui_world, "https://testserver")[0]  # a wss page is not this ws request's origin
    assert _open(ui_world, "https://testserver", scheme="wss")[0]
    assert not _open(ui_world, "http://testserver", scheme="wss")[0]


def test_csrf_trusted_origins_are_let_in_and_nothing_beside_them(ui_world, settings):
    settings.ALLOWED_HOSTS = ["*"]
    settings.CSRF_TRUSTED_ORIGINS = ["https://app.example.com", "https://*.example.org"]
    assert _open(ui_world, "https://app.example.com")[0]
    assert _open(ui_world, "https://a.b.example.org")[0]
    assert not _open(ui_world, "http://app.example.com")[0]
    assert not _open(ui_world, "https://example.org.evil.example")[0]
    assert not _open(ui_world, "https://evilexample.org")[0]


def test_a_host_outside_allowed_hosts_is_refused_even_from_its_own_origin(ui_world, settings):
    # DNS rebinding: a name the attacker controls pointed at the panel is its own origin.
    settings.ALLOWED_HOSTS = ["panel.example.com"]
    assert not _open(ui_world, "http://rebound.example", host="rebound.example")[0]
    assert _open(ui_world, "http://panel.example.com", host="panel.example.com")[0]


def test_a_client_without_origin_is_not_a_browser_and_passes(ui_world, settings):
    settings.ALLOWED_HOSTS = ["*"]
    connected, message = _open(ui_world, None)
    assert connected and message["state"] == "running"


def test_behind_a_trusted_tls_proxy_the_https_origin_is_the_panels(ui_world, settings):
    """nginx terminates TLS and speaks ws to the panel: X-Forwarded-Proto says the page was https,
    believed only from a trusted proxy's address."""
    settings.ALLOWED_HOSTS = ["*"]
    settings.TRUSTED_PROXY = True
    proto = [(b"x-forwarded-proto", b"https"), (b"x-forwarded-for", b"198.51.100.4")]
    assert _open(ui_world, "https://testserver", extra=proto)[0]
    assert not _open(ui_world, "http://testserver", extra=proto)[0]
    # The same headers from anyone else are their own words: still a ws request.
    assert not _open(ui_world, "https://testserver", extra=proto, client=("203.0.113.8", 4000))[0]
    settings.TRUSTED_PROXY = False
    assert not _open(ui_world, "https://testserver", extra=proto)[0]


def test_behind_a_proxy_with_behind_tls_proxy_the_header_decides(ui_world, settings):
    settings.ALLOWED_HOSTS = ["*"]
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    assert _open(ui_world, "https://testserver", extra=[(b"x-forwarded-proto", b"https")])[0]
    assert not _open(ui_world, "https://testserver")[0]

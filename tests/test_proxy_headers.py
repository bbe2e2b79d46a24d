"""Who the client is behind a reverse proxy (panel/forwarded.py): the right-most X-Forwarded-For
hop that is not one of TRUSTED_PROXIES, read only from a trusted proxy; the same for the views
(tenancy.client_address: the audit log here, on MariaDB) and the ASGI scope (panel.asgi).
tests/e2e/test_proxy_edge.py does it with Debian's nginx in front of a live panel."""

import pytest
from asgiref.sync import async_to_sync
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import CommandError

from panel.accounts.models import AuditEntry
from panel.forwarded import client_of, scheme_of


@pytest.fixture
def behind_proxy(settings):
    settings.TRUSTED_PROXY = True
    settings.TRUSTED_PROXIES = ["127.0.0.1", "::1"]
    return settings


@pytest.mark.parametrize("peer, forwarded, client", [
    ("127.0.0.1", "198.51.100.7", "198.51.100.7"),                  # nginx setting $remote_addr
    ("127.0.0.1", "1.2.3.4, 198.51.100.7", "198.51.100.7"),         # appended to the client's own
    ("127.0.0.1", "1.2.3.4,198.51.100.7 , 127.0.0.1", "198.51.100.7"),  # two local proxies
    ("127.0.0.1", None, "127.0.0.1"),                               # no header: the proxy itself
    ("127.0.0.1", "127.0.0.1", "127.0.0.1"),                        # a client on the proxy's host
    ("127.0.0.1", "1.2.3.4, not-an-address", "127.0.0.1"),          # nothing left of garbage counts
    ("127.0.0.1", "1.2.3.4, ", "127.0.0.1"),
    ("::ffff:127.0.0.1", "2001:db8::5", "2001:db8::5"),             # a dual-stack socket's IPv4 peer
    ("::1", "1.2.3.4, 2001:db8::5", "2001:db8::5"),
    ("198.51.100.20", "1.2.3.4", "198.51.100.20"),                  # not a proxy: its header is its own word
    ("10.0.0.9", "127.0.0.1", "10.0.0.9"),
])
def test_the_client_is_the_right_most_untrusted_hop(behind_proxy, peer, forwarded, client):
    assert client_of(peer, forwarded) == client


def test_proxies_in_front_of_nginx_are_skipped_when_trusted(behind_proxy):
    # A CDN (203.0.113.0/24) in front of nginx: the hop before it is the client.
    behind_proxy.TRUSTED_PROXIES = ["127.0.0.1", "203.0.113.0/24"]
    assert client_of("127.0.0.1", "1.2.3.4, 198.51.100.7, 203.0.113.5") == "198.51.100.7"
    behind_proxy.TRUSTED_PROXIES = ["127.0.0.1"]
    assert client_of("127.0.0.1", "1.2.3.4, 198.51.100.7, 203.0.113.5") == "203.0.113.5"


def test_without_trusted_proxy_no_header_counts(settings):
    settings.TRUSTED_PROXY = False
    assert client_of("127.0.0.1", "1.2.3.4") == "127.0.0.1"
    assert scheme_of("127.0.0.1", "https") is None


def test_the_scheme_only_from_a_trusted_proxy(behind_proxy):
    assert scheme_of("127.0.0.1", "https") == "https"
    assert scheme_of("127.0.0.1", "gopher") is None
    assert scheme_of("198.51.100.20", "https") is None


def test_a_bad_trusted_proxies_entry_is_a_clear_error(behind_proxy):
    behind_proxy.TRUSTED_PROXIES = ["127.0.0.1", "nginx.local"]
    with pytest.raises(ImproperlyConfigured, match="TRUSTED_PROXIES: 'nginx.local' is not an IP address"):
        client_of("127.0.0.1", "1.2.3.4")


def test_runpanel_refuses_a_bad_trusted_proxies_before_starting_anything(behind_proxy, monkeypatch):
    import nodes.local

    def started(*_args, **_kwargs):
        raise AssertionError("runpanel went on to register the local node")

    monkeypatch.setattr(nodes.local, "register_local_node", started)
    behind_proxy.TRUSTED_PROXIES = ["10.0.0.0/33"]
    with pytest.raises(CommandError, match="TRUSTED_PROXIES: '10.0.0.0/33'"):
        call_command("runpanel", "--port", "1")


# --- the views: the audit log's address ----------------------------------------------------

def _create_customer(world, external_id: str, **extra) -> str:
    r = world.client(world.billing_key).post("/api/v1/customers/", {"email": f"{external_id}@example.com",
                                             "name": external_id, "external_id": external_id}, format="json", **extra)
    assert r.status_code == 201, r.content
    return AuditEntry.objects.filter(action="customer.create").order_by("-id").first().address


def test_a_client_reaching_the_panel_directly_cannot_choose_its_recorded_address(world, behind_proxy):
    # TRUSTED_PROXY=1 but this peer is not the proxy: before, any peer's X-Forwarded-For counted.
    assert _create_customer(world, "E-1", REMOTE_ADDR="198.51.100.20", HTTP_X_FORWARDED_FOR="1.2.3.4") == \
        "198.51.100.20"
    assert _create_customer(world, "E-2", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="1.2.3.4, 198.51.100.7") == \
        "198.51.100.7"


# --- the ASGI scope ----------------------------------------------------------------------------

def _scope_seen(scope: dict) -> dict:
    from panel.asgi import ProxyHeaders

    seen = {}

    async def inner(scope, receive, send):
        seen.update(scope)

    async_to_sync(ProxyHeaders(inner))(scope, None, None)
    return seen


def _scope(kind: str, peer: str, *headers: tuple[bytes, bytes]) -> dict:
    return {"type": kind, "client": [peer, 40000], "scheme": "http" if kind == "http" else "ws",
            "headers": [(b"host", b"panel.example.com"), *headers]}


def test_the_asgi_scope_takes_the_same_client_and_scheme(behind_proxy):
    forwarded = [(b"x-forwarded-for", b"1.2.3.4, 198.51.100.7"), (b"x-forwarded-proto", b"https")]
    http = _scope_seen(_scope("http", "127.0.0.1", *forwarded))
    assert (http["client"][0], http["scheme"]) == ("198.51.100.7", "https")
    ws = _scope_seen(_scope("websocket", "127.0.0.1", *forwarded))
    assert (ws["client"][0], ws["scheme"]) == ("198.51.100.7", "wss")
    direct = _scope_seen(_scope("http", "198.51.100.20", *forwarded))
    assert (direct["client"][0], direct["scheme"]) == ("198.51.100.20", "http")
    behind_proxy.TRUSTED_PROXY = False
    off = _scope_seen(_scope("websocket", "127.0.0.1", *forwarded))
    assert (off["client"][0], off["scheme"]) == ("127.0.0.1", "ws")
    assert _scope_seen({"type": "lifespan"}) == {"type": "lifespan"}

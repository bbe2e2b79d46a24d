"""Console tokens and the proxy's RFB handshake, without a browser."""

from datetime import timedelta

import pytest
from django.utils import timezone

from novnc import rfb, tokens
from novnc.models import ConsoleToken
from panel.accounts.tenancy import actor_for_user
from panel.vps.lifecycle import Refused

pytestmark = pytest.mark.django_db


def test_a_token_is_used_once_by_its_own_user(world, alice_server):
    token, raw = tokens.issue(actor_for_user(world.alice), alice_server.id)
    assert token.key_hash != raw and not ConsoleToken.objects.filter(key_hash=raw).exists()
    assert tokens.consume(raw, world.bob) is None  # Bob's session with Alice's token
    assert tokens.consume(raw, world.alice).pk == token.pk
    assert tokens.consume(raw, world.alice) is None  # used


def test_an_expired_token_is_refused(world, alice_server):
    _token, raw = tokens.issue(actor_for_user(world.alice), alice_server.id)
    ConsoleToken.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert tokens.peek(raw) is None and tokens.consume(raw, world.alice) is None


def test_no_token_for_others_servers_or_suspended_ones(world, alice_server):
    from django.http import Http404

    with pytest.raises(Http404):
        tokens.issue(actor_for_user(world.bob), alice_server.id)
    world.client(world.billing_key).post(f"/api/v1/servers/{alice_server.id}/suspend/", {"reason": "unpaid"},
                                         format="json")
    with pytest.raises(Refused, match="unpaid"):
        tokens.issue(actor_for_user(world.alice), alice_server.id)


def test_a_session_ends_when_the_server_changes_hands(world, alice_server):
    token, _raw = tokens.issue(actor_for_user(world.alice), alice_server.id)
    assert tokens.still_allowed(token)
    alice_server.customer = world.bob_customer
    alice_server.save()
    assert not tokens.still_allowed(token)


def test_the_api_gives_a_console_url_and_bob_a_404(world, alice_server):
    r = world.client(world.alice_key).post(f"/api/v1/servers/{alice_server.id}/console/")
    assert r.status_code == 201 and "/console/" in r.data["url"] and r.data["expires_at"]
    assert world.client(world.bob_key).post(f"/api/v1/servers/{alice_server.id}/console/").status_code == 404


def test_the_browser_side_offers_no_authentication_and_passes_the_rest_on():
    side = rfb.BrowserSide()
    assert side.greeting() == b"RFB 003.008\n"
    reply, onward = side.feed(b"RFB 003.0")
    assert (reply, onward) == (b"", b"")
    reply, onward = side.feed(b"08\n")
    assert reply == bytes([1, rfb.SECURITY_NONE]) and onward == b""
    reply, onward = side.feed(bytes([rfb.SECURITY_NONE, 1]))  # choice + ClientInit in one frame
    assert reply == b"\0\0\0\0" and onward == bytes([1]) and side.done
    assert side.feed(b"key events") == (b"", b"key events")


def test_the_browser_cannot_pick_another_security_type():
    side = rfb.BrowserSide()
    side.feed(b"RFB 003.008\n")
    with pytest.raises(rfb.RfbError):
        side.feed(bytes([rfb.SECURITY_VNC]))


def test_vnc_authentication_matches_the_des_of_the_protocol():
    # RFB's VNC authentication: DES with the password's bits mirrored per byte. Decrypting the
    # response with the same key must give the challenge back.
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    challenge = bytes(range(16))
    response = rfb.vnc_response(challenge, "secret")
    key = bytes(int(f"{b:08b}"[::-1], 2) for b in b"secret\0\0")
    decryptor = Cipher(TripleDES(key), modes.ECB()).decryptor()
    assert decryptor.update(response) + decryptor.finalize() == challenge
    assert response != rfb.vnc_response(challenge, "other")

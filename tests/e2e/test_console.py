"""The console proxy on real QEMU: an RFB session through the panel's websocket with a
one-time token, and every way in that must be refused."""

import asyncio
import re
import struct
from urllib.parse import urlsplit

import pytest
import websockets

from tests.e2e.conftest import make_tenant, panel_db_rows, serial_log, wait_for


def ws_url(panel, path: str) -> str:
    return panel.url.replace("http://", "ws://") + path


def page_origin(url: str) -> str:
    """The Origin a browser sends from the console page: the panel's own (scheme, host, port)."""
    return "http://" + urlsplit(url).netloc


async def rfb_session(url: str, cookie: str = "") -> dict:
    """Speak RFB through the proxy up to ServerInit; returns what the server said."""
    headers = {"Cookie": cookie} if cookie else {}
    async with websockets.connect(url, subprotocols=["binary"], additional_headers=headers,
                                  origin=page_origin(url)) as ws:
        version = await ws.recv()
        assert version == b"RFB 003.008\n"
        await ws.send(b"RFB 003.008\n")
        types = await ws.recv()
        assert types == bytes([1, 1])  # one security type: None — the proxy did the VNC password
        await ws.send(bytes([1]))
        result = await ws.recv()
        assert result == b"\0\0\0\0"
        await ws.send(bytes([1]))  # ClientInit, shared
        data = b""
        while len(data) < 24:
            data += await ws.recv()
        width, height = struct.unpack(">HH", data[:4])
        name_len = struct.unpack(">I", data[20:24])[0]
        while len(data) < 24 + name_len:
            data += await ws.recv()
        return {"width": width, "height": height, "name": data[24:24 + name_len].decode()}


async def refused_with(url: str, cookie: str = "") -> int:
    headers = {"Cookie": cookie} if cookie else {}
    try:
        async with websockets.connect(url, subprotocols=["binary"], additional_headers=headers,
                                      origin=page_origin(url)) as ws:
            await asyncio.wait_for(ws.recv(), 10)
            await asyncio.wait_for(ws.recv(), 10)
    except websockets.ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else 1006
    except websockets.InvalidStatus as exc:
        return exc.response.status_code
    return 0


def console_url(panel, key, server_id) -> tuple[str, str]:
    r = panel.call(key, "POST", f"/api/v1/servers/{server_id}/console/")
    assert r.status_code == 201, r.text
    token = r.json()["url"].rstrip("/").rsplit("/", 1)[-1]
    return r.json()["url"], ws_url(panel, f"/ws/console/{token}/")


@pytest.fixture(scope="module")
def running(live_panel, plan_id):
    panel = live_panel
    alice, bob = make_tenant(panel, "con-alice"), make_tenant(panel, "con-bob")
    r = panel.call(alice.key, "POST", "/api/v1/servers/", json={"plan": plan_id, "os_template": "tiny", "hostname": "console-1"})
    op = panel.wait_operation(alice.key, r.json()["id"])
    assert op["status"] == "succeeded", op
    server = panel.call(alice.key, "GET", f"/api/v1/servers/{op['server']}/").json()
    wait_for(lambda: "TINY-GUEST booted" in serial_log(server["uuid"].replace("-", "")), 90, "the guest to boot")
    yield {"alice": alice, "bob": bob, "server": server}
    panel.wait_operation(panel.admin_key, panel.call(panel.admin_key, "DELETE",
                                                     f"/api/v1/servers/{server['id']}/").json()["id"])


def test_a_token_opens_one_rfb_session_to_the_guests_screen(live_panel, running):
    panel, alice, server = live_panel, running["alice"], running["server"]
    page, url = console_url(panel, alice.key, server["id"])
    import requests

    assert requests.get(page, timeout=10).status_code == 200  # the page that hosts noVNC
    init = asyncio.run(rfb_session(url))
    assert init["width"] >= 640 and init["height"] >= 400
    assert "vps-" in init["name"]  # QEMU names the desktop after the domain
    # The same token again: refused.
    assert asyncio.run(refused_with(url)) == 4401


def test_every_other_way_in_is_refused(live_panel, running):
    panel, alice, bob, server = live_panel, running["alice"], running["bob"], running["server"]
    assert asyncio.run(refused_with(ws_url(panel, "/ws/console/not-a-token/"))) == 4401
    # Expired before use.
    _page, url = console_url(panel, alice.key, server["id"])
    token_hash_count = panel_db_rows(panel, "SELECT COUNT(*) FROM novnc_consoletoken")[0][0]
    panel_db_rows(panel, "UPDATE novnc_consoletoken SET expires_at = NOW() - INTERVAL 1 MINUTE WHERE used_at IS NULL")
    assert token_hash_count >= 1
    assert asyncio.run(refused_with(url)) == 4401
    # Bob cannot get a token for Alice's server.
    r = panel.call(bob.key, "POST", f"/api/v1/servers/{server['id']}/console/")
    assert r.status_code == 404
    # A token bound to Alice's session does not work for Bob's session.
    alice_cookie, alice_ws = session_console(panel, alice)
    bob_cookie, _ = session_login(panel, bob), None
    assert asyncio.run(refused_with(alice_ws, bob_cookie)) == 4401
    # …but it does for Alice.
    _c, alice_ws = session_console(panel, alice)
    assert asyncio.run(rfb_session(alice_ws, alice_cookie))["width"] > 0


def test_suspension_refuses_new_sessions_and_ends_an_open_one(live_panel, running):
    panel, alice, server = live_panel, running["alice"], running["server"]
    _page, url = console_url(panel, alice.key, server["id"])

    async def open_then_suspend() -> int:
        async with websockets.connect(url, subprotocols=["binary"], origin=page_origin(url)) as ws:
            await ws.recv()
            r = await asyncio.to_thread(panel.call, panel.admin_key, "POST", f"/api/v1/servers/{server['id']}/suspend/",
                                        json={"reason": "abuse report 9"})
            assert r.status_code == 202, r.text
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 30)
            except websockets.ConnectionClosed as exc:
                return exc.rcvd.code if exc.rcvd else 1006

    assert asyncio.run(open_then_suspend()) == 4403
    op = panel.call(panel.admin_key, "GET", f"/api/v1/operations/?server={server['id']}&kind=suspend").json()
    panel.wait_operation(panel.admin_key, op["results"][0]["id"])
    r = panel.call(alice.key, "POST", f"/api/v1/servers/{server['id']}/console/")
    assert r.status_code == 409 and "abuse report 9" in r.json()["detail"]
    r = panel.call(panel.admin_key, "POST", f"/api/v1/servers/{server['id']}/unsuspend/")
    assert panel.wait_operation(panel.admin_key, r.json()["id"])["status"] == "succeeded"


def session_login(panel, tenant) -> str:
    import requests

    s = requests.Session()
    s.get(panel.url + "/login/", timeout=10)
    r = s.post(panel.url + "/login/", data={"username": tenant.username, "password": tenant.password,
                                            "csrfmiddlewaretoken": s.cookies["csrftoken"]},
               headers={"Referer": panel.url + "/login/"}, timeout=10)
    assert r.status_code == 200 and "sessionid" in s.cookies, r.text[:300]
    return "; ".join(f"{k}={v}" for k, v in s.cookies.items())


def session_console(panel, tenant) -> tuple[str, str]:
    """Open the console page as `tenant` (a browser session); returns (cookie, websocket URL)."""
    import requests

    cookie = session_login(panel, tenant)
    server = panel.call(tenant.key, "GET", "/api/v1/servers/").json()["results"][0]
    r = requests.get(f"{panel.url}/servers/{server['id']}/console/", headers={"Cookie": cookie}, timeout=10)
    assert r.status_code == 200, r.text[:300]
    path = re.search(r"/ws/console/[A-Za-z0-9_-]+/", r.text).group(0)
    return cookie, ws_url(panel, path)

"""The console behind a TLS-terminating reverse proxy (Debian's nginx), as the panel is usually
deployed: the API hands out a console URL on the proxy's https origin, the page loads through
the proxy, and the RFB session runs over wss through it — from a websocket client and from
Debian's chromium."""

import asyncio
import ssl
import struct
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
import websockets

from tests.e2e.conftest import CHROMIUM_ARGS, ROOT, make_tenant, serial_log, wait_for
from tests.e2e.tls_proxy import TlsProxy

CONSOLE_TEMPLATE = ROOT / "novnc" / "templates" / "novnc" / "console.html"


@pytest.fixture(scope="module")
def proxy(live_panel):
    with TlsProxy(live_panel.url) as tls:
        yield tls


def call(proxy, key: str, method: str, path: str, **kwargs) -> requests.Response:
    """The API through the HTTPS proxy, trusting only its certificate."""
    return requests.request(method, proxy.url + path, headers={"Authorization": f"Token {key}"}, timeout=30,
                            verify=proxy.cafile, **kwargs)


def wait_operation(proxy, key: str, op_id: int, timeout: float = 90) -> dict:
    def finished():
        op = call(proxy, key, "GET", f"/api/v1/operations/{op_id}/").json()
        return op if op["status"] in ("succeeded", "failed") else None

    return wait_for(finished, timeout, f"operation {op_id}", interval=0.3)


def ssl_context(proxy) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=proxy.cafile)


async def rfb_session(url: str, ctx: ssl.SSLContext, origin: str) -> dict:
    """Speak RFB over wss up to ServerInit; returns what the server said."""
    async with websockets.connect(url, ssl=ctx, subprotocols=["binary"], origin=origin) as ws:
        assert await ws.recv() == b"RFB 003.008\n"
        await ws.send(b"RFB 003.008\n")
        assert await ws.recv() == bytes([1, 1])  # one security type: None (the proxy did the VNC auth)
        await ws.send(bytes([1]))
        assert await ws.recv() == b"\0\0\0\0"
        await ws.send(bytes([1]))  # ClientInit, shared
        data = b""
        while len(data) < 24:
            data += await ws.recv()
        width, height = struct.unpack(">HH", data[:4])
        name_len = struct.unpack(">I", data[20:24])[0]
        while len(data) < 24 + name_len:
            data += await ws.recv()
        return {"width": width, "height": height, "name": data[24:24 + name_len].decode()}


async def refused_with(url: str, ctx: ssl.SSLContext, origin: str) -> int:
    try:
        async with websockets.connect(url, ssl=ctx, subprotocols=["binary"], origin=origin) as ws:
            await asyncio.wait_for(ws.recv(), 10)
            await asyncio.wait_for(ws.recv(), 10)
    except websockets.ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else 1006
    except websockets.InvalidStatus as exc:
        return exc.response.status_code
    return 0


@pytest.fixture(scope="module")
def running(live_panel, plan_id, proxy):
    """A customer's running tiny guest, made through the HTTPS proxy."""
    dora = make_tenant(live_panel, "tls-dora")
    r = call(proxy, dora.key, "POST", "/api/v1/servers/", json={"plan": plan_id, "os_template": "tiny", "hostname": "console-tls-1"})
    assert r.status_code == 202, r.text
    op = wait_operation(proxy, dora.key, r.json()["id"])
    assert op["status"] == "succeeded", op
    server = call(proxy, dora.key, "GET", f"/api/v1/servers/{op['server']}/").json()
    try:
        wait_for(lambda: "TINY-GUEST booted" in serial_log(server["uuid"].replace("-", "")), 90, "the guest to boot")
        yield {"dora": dora, "server": server}
    finally:
        r = call(proxy, live_panel.admin_key, "DELETE", f"/api/v1/servers/{server['id']}/")
        if r.status_code == 202:
            wait_operation(proxy, live_panel.admin_key, r.json()["id"])


def console_link(proxy, running) -> str:
    r = call(proxy, running["dora"].key, "POST", f"/api/v1/servers/{running['server']['id']}/console/")
    assert r.status_code == 201, r.text
    return r.json()["url"]


def on_proxy(proxy, url: str) -> tuple[str, str]:
    """(page URL, wss URL) on the proxy's origin for a console link, whatever origin it names
    (that the link names the right one is asserted by its own test)."""
    path = urlsplit(url).path
    token = path.rstrip("/").rsplit("/", 1)[-1]
    return proxy.url + path, proxy.url.replace("https://", "wss://") + f"/ws/console/{token}/"


def test_the_api_hands_out_a_console_link_on_the_proxys_https_origin(proxy, running):
    url = console_link(proxy, running)
    got, want = urlsplit(url), urlsplit(proxy.url)
    assert (got.scheme, got.netloc) == (want.scheme, want.netloc), (
        f"PRODUCT: the console link the API returned through the TLS proxy is {url!r}, but a user can only "
        f"reach the panel at {proxy.url}: the link must be on the origin the request came in on "
        f"(X-Forwarded-Proto https, Host with its port)")
    assert got.path.startswith("/console/")
    r = requests.get(url, timeout=10, verify=proxy.cafile)
    assert r.status_code == 200, r.text[:300]
    assert "console-tls-1" in r.text
    assert r.headers.get("Cache-Control") == "no-store"


def test_an_rfb_session_over_wss_through_the_proxy_reaches_the_guests_screen(proxy, running):
    page, ws_url = on_proxy(proxy, console_link(proxy, running))
    r = requests.get(page, timeout=10, verify=proxy.cafile)
    assert r.status_code == 200, r.text[:300]  # the page that hosts noVNC, through the proxy
    assert urlsplit(ws_url).path in r.text  # it names the websocket path of this token

    ctx = ssl_context(proxy)
    init = asyncio.run(rfb_session(ws_url, ctx, origin=proxy.url))
    assert init["width"] > 0 and init["height"] > 0
    assert "vps-" in init["name"]  # QEMU names the desktop after the domain
    # The same token again: refused, through the proxy as directly.
    assert asyncio.run(refused_with(ws_url, ctx, origin=proxy.url)) == 4401
    # And it did go through nginx as a websocket upgrade.
    token_path = urlsplit(ws_url).path
    log = (Path(proxy.dir) / "access.log").read_text()
    assert f"GET {token_path} HTTP/1.1\" 101" in log, log[-2000:]


def wait_for_console_page(timeout: float = 20 * 60) -> None:
    """The console page is being written alongside: wait until it has the state element."""
    deadline = time.monotonic() + timeout
    while "console-state" not in (CONSOLE_TEMPLATE.read_text() if CONSOLE_TEMPLATE.exists() else ""):
        if time.monotonic() > deadline:
            pytest.fail(f"{CONSOLE_TEMPLATE} has no #console-state after {timeout:.0f} s")
        time.sleep(10)


@pytest.mark.browser
def test_the_console_page_connects_in_chromium_through_the_proxy(proxy, running, tmp_path):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    wait_for_console_page()
    page_url, ws_url = on_proxy(proxy, console_link(proxy, running))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(ignore_https_errors=True)
            page = context.new_page()
            problems = []
            page.on("console", lambda msg: problems.append(f"{msg.type}: {msg.text}") if msg.type == "error" else None)
            page.on("pageerror", lambda exc: problems.append(f"pageerror: {exc}"))
            sockets = []
            page.on("websocket", lambda ws: sockets.append(ws.url))
            response = page.goto(page_url)
            assert response.status == 200
            try:
                page.wait_for_selector("#console-state[data-state=connected]", timeout=30_000)
            except PlaywrightTimeout:
                page.screenshot(path=str(tmp_path / "console-tls.png"))
                state = page.eval_on_selector("#console-state", "el => el.dataset.state + ': ' + el.textContent")
                message = page.text_content("#console-message")
                raise AssertionError(f"the console did not connect through the proxy: {state!r}, {message!r}, "
                                     f"websockets {sockets}, errors {problems}")
            # noVNC drew the guest's screen, over wss on the proxy's origin.
            page.wait_for_function("() => { const c = document.querySelector('#console-screen canvas');"
                                   " return c && c.width > 0 && c.height > 0; }", timeout=15_000)
            assert ws_url in sockets, sockets
        finally:
            browser.close()

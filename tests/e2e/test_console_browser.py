"""The console in Debian's chromium: a customer opens it from the server page, sees the guest's
screen drawn by noVNC, and what they type (on the keyboard, or through the paste box) reaches
the guest's shell on tty1, which writes it to the serial log we can read."""

import secrets

import pytest
import requests

from tests.e2e.conftest import make_tenant, serial_log, wait_for

# The guest has a US keymap, and QEMU takes the scan code of the key that is pressed: a
# character typed with Shift needs Shift held (Playwright's `type` does not hold it).
US_SHIFTED = {">": "Period", "<": "Comma", "_": "Minus", "|": "Backslash", ":": "Semicolon", "&": "Digit7",
              '"': "Quote", "?": "Slash"}

CANVAS_STATS = """() => {
    const canvas = document.querySelector('#console-screen canvas');
    if (!canvas || !canvas.width || !canvas.height) return null;
    const d = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    const colours = new Set();
    let other = 0;
    for (let i = 0; i < d.length; i += 4) {
        if (colours.size < 64) colours.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
        if (d[i] !== d[0] || d[i + 1] !== d[1] || d[i + 2] !== d[2]) other++;
    }
    return {width: canvas.width, height: canvas.height, colours: colours.size, other};
}"""

# A second websocket with the token the page has used already.
REUSE_TOKEN = """() => new Promise((resolve) => {
    const path = document.getElementById('console').dataset.wsPath;
    const ws = new WebSocket((location.protocol === 'https:' ? 'wss:' : 'ws:') + '//' + location.host + path, ['binary']);
    ws.onclose = (event) => resolve(event.code);
    setTimeout(() => resolve(-1), 10000);
})"""


def type_keys(page, text: str) -> None:
    for ch in text:
        if ch == "\n":
            page.keyboard.press("Enter")
        elif ch in US_SHIFTED:
            page.keyboard.press(f"Shift+{US_SHIFTED[ch]}")
        elif "A" <= ch <= "Z":
            page.keyboard.press(f"Shift+Key{ch}")
        else:
            page.keyboard.type(ch)
        page.wait_for_timeout(15)


def canvas_stats(page):
    stats = page.evaluate(CANVAS_STATS)
    return stats if stats and stats["colours"] > 1 and stats["other"] > 300 else None


@pytest.mark.browser
def test_a_customer_uses_the_console_of_a_running_server(live_panel, plan_id, browser, tmp_path):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    panel = live_panel
    dora = make_tenant(panel, "dora")
    r = panel.call(dora.key, "POST", "/api/v1/servers/", json={"plan": plan_id, "os_template": "tiny", "hostname": "console-1"})
    op = panel.wait_operation(dora.key, r.json()["id"])
    assert op["status"] == "succeeded", op
    server = panel.call(dora.key, "GET", f"/api/v1/servers/{op['server']}/").json()
    uuid_hex = server["uuid"].replace("-", "")
    wait_for(lambda: "TINY-GUEST booted" in serial_log(uuid_hex), 60, "the guest to boot")

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    console_errors = []
    page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)
    page.goto(panel.url + "/login/")
    page.fill("input[name=username]", dora.username)
    page.fill("input[name=password]", dora.password)
    page.click("form:has(input[name=password]) button[type=submit]")
    page.wait_for_url("**/servers/")
    page.click("text=console-1")
    page.wait_for_selector("#server-state[data-state=running]")

    page.click("#open-console")
    page.wait_for_url(f"**/servers/{server['id']}/console/")
    try:
        page.wait_for_selector("#console-state[data-state=connected]", timeout=30_000)
    except PlaywrightTimeout:
        page.screenshot(path=str(tmp_path / "console-failed.png"))
        raise AssertionError(f"the console did not connect: {page.inner_text('#console-state')!r}, "
                             f"{page.inner_text('#console-message')!r}, errors {console_errors}") from None
    assert page.is_visible("#console-back")
    assert page.is_hidden("#console-reconnect")

    # (b) Keys typed on the canvas reach the guest's shell.
    marker = f"console-ok-{secrets.token_hex(4)}"
    page.click("#console-screen canvas")
    page.keyboard.press("Enter")
    type_keys(page, f"echo {marker} > /dev/ttyS0\n")
    wait_for(lambda: marker in serial_log(uuid_hex), 30, "the typed command to reach the guest")

    # (a) The canvas shows the guest's screen: the prompt and the command line, not one colour.
    stats = wait_for(lambda: canvas_stats(page), 15, "the console screen to show text")
    assert stats["width"] >= 640 and stats["height"] >= 200, stats
    page.locator("#console-screen canvas").screenshot(path=str(tmp_path / "console-canvas.png"))

    # (c) Ctrl-Alt-Del is offered; the paste box types its text as keystrokes (Shift included).
    assert page.is_enabled("#console-cad")
    page.click("#console-paste summary")
    pasted = f"paste-ok-{secrets.token_hex(4)}"
    page.fill("#paste-text", f"echo {pasted}_Done > /dev/ttyS0\n")
    page.click("#paste-send")
    wait_for(lambda: f"{pasted}_Done" in serial_log(uuid_hex), 30, "the pasted text to reach the guest")
    page.screenshot(path=str(tmp_path / "console.png"), full_page=True)

    # The token was for one connection: using it again is refused with the close code the page explains.
    assert page.evaluate(REUSE_TOKEN) == 4401
    assert page.get_attribute("#console-state", "data-state") == "connected"

    # A console URL from the API opens in a browser without a session (the token is the credential).
    r = panel.call(dora.key, "POST", f"/api/v1/servers/{server['id']}/console/")
    assert r.status_code == 201, r.text
    url = r.json()["url"]
    other = browser.new_context()
    try:
        anon = other.new_page()
        anon.goto(url)
        anon.wait_for_selector("#console-state[data-state=connected]", timeout=30_000)
        assert anon.locator("#console-back").count() == 0
        # The page is no use twice: once connected, its link is spent.
        assert requests.get(url, timeout=10).status_code == 404
    finally:
        other.close()

    # The server is powered off: the open console says it is disconnected and offers to
    # reconnect, which loads the console URL again (a new token); now the panel refuses that.
    r = panel.call(dora.key, "POST", f"/api/v1/servers/{server['id']}/stop/", json={"force": True})
    assert r.status_code == 202, r.text
    page.wait_for_selector("#console-state[data-state=disconnected]", timeout=30_000)
    assert page.is_visible("#console-message") and page.inner_text("#console-message").strip()
    assert page.is_visible("#console-reconnect") and page.is_disabled("#console-cad")
    page.screenshot(path=str(tmp_path / "console-stopped.png"))
    assert panel.wait_operation(dora.key, r.json()["id"])["status"] == "succeeded"
    page.click("#console-reconnect")
    page.wait_for_url(f"**/servers/{server['id']}/")
    assert page.is_hidden("#open-console")  # a stopped server offers no console

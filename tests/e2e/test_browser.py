"""A customer in Debian's chromium: logs in, presses reboot, watches the progress arrive over
the websocket, and sees the server running again."""

import pytest

from tests.e2e.conftest import make_tenant, serial_log, wait_for


@pytest.mark.browser
def test_a_customer_reboots_a_server_and_watches_it_happen(live_panel, plan_id, browser, tmp_path):
    panel = live_panel
    carol = make_tenant(panel, "carol")
    r = panel.call(carol.key, "POST", "/api/v1/servers/", json={"plan": plan_id, "os_template": "tiny", "hostname": "browser-1"})
    op = panel.wait_operation(carol.key, r.json()["id"])
    assert op["status"] == "succeeded", op
    server = panel.call(carol.key, "GET", f"/api/v1/servers/{op['server']}/").json()
    uuid_hex = server["uuid"].replace("-", "")
    wait_for(lambda: "TINY-GUEST booted" in serial_log(uuid_hex), 60, "the guest to boot")

    page = browser.new_page()
    page.on("dialog", lambda dialog: dialog.accept())  # "Reboot this server?"
    page.goto(panel.url + "/login/")
    page.fill("input[name=username]", carol.username)
    page.fill("input[name=password]", carol.password)
    page.click("form:has(input[name=password]) button[type=submit]")
    page.wait_for_url("**/servers/")
    assert "browser-1" in page.content()

    page.click("text=browser-1")
    page.wait_for_selector("#server-state[data-state=running]")
    # On every page load, record everything the status line shows (the reboot button posts a
    # form and lands on this page again; from there on the websocket brings the progress).
    page.add_init_script("""document.addEventListener('DOMContentLoaded', () => {
        const el = document.getElementById('op-status');
        if (!el) return;
        window.seen = [el.textContent];
        new MutationObserver(() => window.seen.push(el.textContent)).observe(el, {childList: true, characterData: true, subtree: true});
    });""")
    page.reload()
    page.click("#action-reboot")
    page.wait_for_function("() => (window.seen || []).some(t => /Reboot/.test(t) && /succeeded/i.test(t))"
                           " || /Reboot.*succeeded/i.test(document.getElementById('op-status').textContent)",
                           timeout=90_000)
    page.wait_for_selector("#server-state[data-state=running]", timeout=30_000)
    seen = page.evaluate("window.seen || []")
    page.screenshot(path=str(tmp_path / "after-reboot.png"))
    # While it ran, the page showed the reboot in progress (with a percentage), live.
    assert any("Reboot" in text and "%" in text for text in seen), seen
    ops = panel.call(carol.key, "GET", f"/api/v1/operations/?server={server['id']}&kind=reboot").json()["results"]
    assert len(ops) == 1 and ops[0]["status"] == "succeeded"

"""The server page's graphs in Debian's chromium, on a live panel: a customer's real server with
six hours of seeded minutes (rolled up into the coarser tiers) and a reboot operation.

The canvas has drawn points, a preset changes the range, a drag zooms in and fetches finer
data, a click pins the details pane whose values are the API's, and the reboot marker is there.
Screenshots go to /tmp/shots/ (looked at by whoever changes the graphs).
"""

import json
from pathlib import Path

import pytest

from tests.e2e.conftest import make_tenant

SHOTS = Path("/tmp/shots")
SEED = """
import datetime as dt
from django.utils import timezone
from panel.metrics import store
from panel.metrics.models import RollupState
from panel.metrics.store import Point
from panel.vps.models import Operation, VirtualServer

server = VirtualServer.objects.get(pk={server_id})
now = timezone.now()
for i in range(360):
    at = now - dt.timedelta(minutes=362 - i)
    if 100 <= i < 110:
        store.record([Point("server", server.pk, gap="stopped")], at)
        continue
    rx = 6e6 + 1000 * i
    store.record([Point("server", server.pk,
                        {{"cpu": 20.0 + i % 30, "steal": 1.5, "mem_used": 150e6, "mem_total": 256e6, "net_rx": rx,
                          "net_tx": 1e6, "disk.vda.rd_bytes": 1e6, "disk.vda.wr_bytes": 3e6, "disk.vda.rd_ops": 600,
                          "disk.vda.wr_ops": 1200}},
                        {{"net_rx": rx / 60, "net_tx": 1e6 / 60, "disk.vda.rd_bytes": 1e6 / 60,
                          "disk.vda.wr_bytes": 3e6 / 60, "disk.vda.rd_ops": 10, "disk.vda.wr_ops": 20}})], at)
# The live panel's worker may have rolled up past these minutes already (roll-ups go forward from
# RollupState): start them again from the oldest minute, recomputing every coarser bucket.
RollupState.objects.all().delete()
store.rollup(now)
op = Operation.objects.create(kind="reboot", status="succeeded", server=server, customer_id=server.customer_id)
Operation.objects.filter(pk=op.pk).update(started_at=now - dt.timedelta(minutes=45),
                                          finished_at=now - dt.timedelta(minutes=44))
print("seeded", op.pk)
"""
# Pixels of the first series' colour (#2f5bd3) on a chart's canvas: the line was drawn.
DRAWN = """(sel) => {
    const c = document.querySelector(sel + ' canvas');
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 0; i < d.length; i += 4) {
        if (d[i + 3] > 200 && Math.abs(d[i] - 47) < 40 && Math.abs(d[i + 1] - 91) < 40 && Math.abs(d[i + 2] - 211) < 40) n++;
    }
    return n;
}"""


def state(page, card: str) -> dict:
    return page.evaluate(f"window.panelMetrics[{json.dumps(card)}]")


@pytest.mark.browser
def test_the_server_page_draws_zooms_and_pins_the_graphs(live_panel, plan_id, browser):
    panel = live_panel
    dora = make_tenant(panel, "dora")
    r = panel.call(dora.key, "POST", "/api/v1/servers/", json={"plan": plan_id, "os_template": "tiny",
                                                               "hostname": "graphs-1"})
    assert r.status_code == 202, r.text
    op = panel.wait_operation(dora.key, r.json()["id"])
    assert op["status"] == "succeeded", op
    server_id = op["server"]
    assert "seeded" in panel.manage("shell", "-c", SEED.format(server_id=server_id))
    SHOTS.mkdir(exist_ok=True)
    card = f"metrics-server-{server_id}"

    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(panel.url + "/login/")
    page.fill("input[name=username]", dora.username)
    page.fill("input[name=password]", dora.password)
    page.click("form:has(input[name=password]) button[type=submit]")
    page.wait_for_url("**/servers/")
    page.goto(f"{panel.url}/servers/{server_id}/")
    page.wait_for_function(f"() => (window.panelMetrics || {{}})[{json.dumps(card)}]?.ready")
    first = state(page, card)
    assert first["step"] == 60 and first["fetches"][0]["points"] >= 60, first
    cpu = f"#{card} [data-chart=cpu]"
    assert page.evaluate(DRAWN, cpu) > 100, "the CPU chart drew no line"
    # The reboot 45 minutes ago is marked on the default hour, named in its flag.
    marker = page.locator(f"{cpu} .metrics-marker[data-kind=reboot]")
    assert marker.count() == 1 and "Reboot" in marker.get_attribute("title")
    page.locator(f"#{card}").screenshot(path=str(SHOTS / "metrics-browser-1h.png"))

    # A preset: seven days, from the hourly tier.
    page.click(f"#{card} [data-preset='604800']")
    page.wait_for_function(f"() => window.panelMetrics[{json.dumps(card)}].fetches.length === 2")
    week = state(page, card)
    fetched = week["fetches"][-1]
    assert fetched["to"] - fetched["from"] == 7 * 86400 and week["step"] == 3600, week
    assert page.get_attribute(f"#{card} [data-preset='604800']", "aria-pressed") == "true"
    assert page.evaluate(DRAWN, cpu) > 20, "the week's CPU chart drew no line"

    # A drag across the last tenth of the week zooms in: a fetch of that range, a finer step.
    over = page.locator(f"{cpu} .u-over").bounding_box()
    y = over["y"] + over["height"] / 2
    page.mouse.move(over["x"] + over["width"] * 0.9, y)
    page.mouse.down()
    page.mouse.move(over["x"] + over["width"] * 0.95, y, steps=5)
    page.mouse.move(over["x"] + over["width"] * 0.999, y, steps=5)
    page.mouse.up()
    page.wait_for_function(f"() => window.panelMetrics[{json.dumps(card)}].fetches.length === 3")
    zoomed = state(page, card)
    span = zoomed["fetches"][-1]["to"] - zoomed["fetches"][-1]["from"]
    assert zoomed["step"] < week["step"] and 12 * 3600 < span < 20 * 3600, zoomed
    assert page.is_visible(f"#{card} [data-zoom-out]")
    page.wait_for_timeout(200)

    # A click pins the bucket under the cursor: its values are the API's for that bucket.
    over = page.locator(f"{cpu} .u-over").bounding_box()
    page.mouse.click(over["x"] + over["width"] * 0.8, over["y"] + over["height"] / 2)
    page.wait_for_selector(f"#{card} .metrics-details:not([hidden])")
    pinned = state(page, card)["pinned"]
    assert pinned and pinned["step"] == zoomed["step"]
    last = zoomed["fetches"][-1]
    api = panel.call(dora.key, "GET", f"/api/v1/servers/{server_id}/metrics/?from={last['from']}&to={last['to']}")
    assert api.status_code == 200, api.text
    body = api.json()
    idx = body["t"].index(pinned["t"])
    rows = page.locator(f"#{card} .metrics-details tr[data-series]")
    seen = {}
    for i in range(rows.count()):
        row = rows.nth(i)
        seen[row.get_attribute("data-series")] = (row.get_attribute("data-avg"), row.get_attribute("data-max"))
    assert {"cpu", "net_rx", "mem_used", "disk.vda.wr_bytes"} <= set(seen), seen
    for name, (avg, peak) in seen.items():
        want = body["series"][name]
        assert (float(avg) if avg else None) == want["avg"][idx], name
        assert (float(peak) if peak else None) == want["max"][idx], name
    assert any(want is not None for want in (body["series"]["cpu"]["avg"][idx],)), "pinned a gap"
    page.locator(f"#{card}").screenshot(path=str(SHOTS / "metrics-browser-zoomed-pinned.png"))

    # The table and the CSV link follow the range shown.
    page.click(f"#{card} .metrics-table-box summary")
    page.wait_for_selector(f"#{card} .metrics-table tbody tr")  # <details> fires its toggle event later
    assert page.locator(f"#{card} .metrics-table tbody tr").count() == len(body["t"])
    href = page.get_attribute(f"#{card} .metrics-csv", "href")
    assert f"from={last['from']}" in href and "format=csv" in href

    # Live: over the page's websocket the real guest's points come every 5 s and are appended to
    # the charts (the last 10 minutes, the x axis at now) without fetching again.
    fetches = len(state(page, card)["fetches"])
    page.click(f"#{card} [data-live]")
    assert page.get_attribute(f"#{card} [data-live]", "aria-pressed") == "true"
    page.wait_for_function(f"() => window.panelMetrics[{json.dumps(card)}].live.points >= 2", timeout=15000)
    shown = state(page, card)
    assert shown["live"]["on"] and shown["live"]["status"] == "on", shown["live"]
    point = shown["live"]["last"]
    assert abs(point["t"] - page.evaluate("Date.now() / 1000")) < 15, point
    assert {"cpu", "net_rx", "net_tx", "disk.vda.rd_bytes", "disk.vda.wr_bytes"} <= set(point["series"]), point
    assert all(v >= 0 for v in point["series"].values()), point
    assert 0 <= point["series"]["cpu"] <= 100
    # Two points 5 s apart span ~1/120 of the width: a short line that grows with each point.
    drawn = page.evaluate(DRAWN, cpu)
    assert drawn > 4, "the live CPU chart drew no line"
    page.wait_for_function(f"() => window.panelMetrics[{json.dumps(card)}].live.points >= 3", timeout=10000)
    assert page.evaluate(DRAWN, cpu) > drawn, "the next live point was not drawn"
    shown = state(page, card)
    # The x axis ends at now and spans ten minutes.
    x0, x1 = shown["live"]["x"]
    assert abs(x1 - x0 - 600) < 1 and abs(x1 - page.evaluate("Date.now() / 1000")) < 10, (x0, x1)
    assert len(state(page, card)["fetches"]) == fetches, "live mode fetched the API again"
    page.locator(f"#{card}").screenshot(path=str(SHOTS / "metrics-browser-live.png"))
    # Off: the toggle stops the points and the hour is shown again.
    page.click(f"#{card} [data-live]")
    page.wait_for_function(f"() => window.panelMetrics[{json.dumps(card)}].fetches.length === {fetches + 1}")
    off = state(page, card)
    assert not off["live"]["on"] and off["step"] == 60
    page.wait_for_timeout(6000)
    assert state(page, card)["live"]["points"] == off["live"]["points"], "points kept coming after off"
    assert not errors, errors
    page.close()

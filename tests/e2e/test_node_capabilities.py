"""The real capability probe on this machine's local node (registered by the live panel at
start), and what placement makes of it: a plan with a bandwidth limit on a node whose kernel
cannot shape traffic is a 409 naming the node and the capability, and nothing is made. The
node page shows the capabilities (a screenshot goes to /tmp/caps-node-page.png)."""

import pytest

from tests.e2e.conftest import make_tenant, panel_db_rows

SCREENSHOT = "/tmp/caps-node-page.png"


def local_node(panel) -> dict:
    nodes = panel.call(panel.admin_key, "GET", "/api/v1/nodes/").json()["results"]
    return next(n for n in nodes if n["name"] == "local")


def counts(panel) -> tuple:
    return (panel_db_rows(panel, "SELECT COUNT(*) FROM vps_virtualserver")[0][0],
            panel_db_rows(panel, "SELECT COUNT(*) FROM vps_operation")[0][0],
            panel_db_rows(panel, "SELECT COUNT(*) FROM ipam_ipaddress WHERE server_id IS NOT NULL")[0][0],
            panel_db_rows(panel, "SELECT alloc_vcpus, alloc_ram_mib, alloc_disk_gib FROM nodes_node WHERE name='local'"))


def test_the_local_node_is_probed_and_a_bandwidth_plan_is_refused_with_the_reason(live_panel):
    panel = live_panel
    node = local_node(panel)
    caps = node["capabilities"]
    print("capabilities of the local node:", caps)
    assert set(caps) == {"kvm", "shaping", "nwfilter", "backup", "guest_agent", "nested"}
    assert all(set(cap) == {"ok", "detail"} for cap in caps.values())
    assert caps["kvm"]["ok"] is (node["virt_type"] == "kvm")
    if caps["shaping"]["ok"] is not False:
        pytest.skip(f"this kernel shapes traffic ({caps['shaping']}): nothing to refuse here")
    assert "tc sfq" in caps["shaping"]["detail"]

    plan = panel.call(panel.admin_key, "POST", "/api/v1/plans/",
                      json={"name": "caps-limited", "vcpus": 1, "ram_mib": 256, "disk_gib": 1, "bandwidth_mbit": 10})
    assert plan.status_code == 201, plan.text
    tenant = make_tenant(panel, "caps")
    before = counts(panel)
    r = panel.call(panel.admin_key, "POST", "/api/v1/servers/", json={
        "customer": tenant.customer_id, "plan": plan.json()["id"], "hostname": "caps-shaped", "os_template": "tiny"})
    print("409:", r.text)
    assert r.status_code == 409, r.text
    body = r.json()
    assert body["code"] == "no_capacity"
    assert f"node local: cannot apply bandwidth limits: {caps['shaping']['detail']}" in body["detail"]
    assert counts(panel) == before  # no server, no operation, no address, no capacity taken
    # the customer's own key: refused too, without the node's name
    r = panel.call(tenant.key, "POST", "/api/v1/servers/", json={
        "plan": plan.json()["id"], "hostname": "caps-shaped", "os_template": "tiny"})
    assert r.status_code == 409 and "local" not in r.json()["detail"], r.text
    assert counts(panel) == before


@pytest.mark.browser
def test_the_node_page_shows_the_capabilities(live_panel, browser):
    panel = live_panel
    node = local_node(panel)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(panel.url + "/login/")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", panel.admin_password)
    page.click("form:has(input[name=password]) button[type=submit]")
    page.wait_for_url("**/admin/")
    page.goto(f"{panel.url}/admin/nodes/{node['id']}/")
    table = page.locator("#node-capabilities")
    for name, cap in node["capabilities"].items():
        row = table.locator(f"tr[data-capability={name}]")
        assert row.get_attribute("data-ok") == {True: "yes", False: "no", None: "unknown"}[cap["ok"]]
        assert cap["detail"] in row.text_content()
    table.scroll_into_view_if_needed()
    page.screenshot(path=SCREENSHOT, full_page=True)
    page.close()

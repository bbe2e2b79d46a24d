"""Usage counters on the test cluster: traffic a real guest makes is counted, and a reboot (QEMU's
counters start again at zero) loses none of it.

(The traffic quota's live bandwidth change is tested on the fake driver only: this machine's
kernel lacks tc's sfq, so libvirt cannot apply <bandwidth> here.)
"""

import pytest

from tests.e2e.conftest import ClusterGuest, cluster_with_node, create_tiny_server, make_tenant

PING = 1400  # payload bytes of each echo request (and of its reply)


@pytest.fixture(scope="module")
def usage_env(live_panel, test_cluster):
    with cluster_with_node(live_panel, test_cluster, "usage", "10.77.1.80", "10.77.1.99", traffic_gib=10) as env:
        yield {**env, "tenant": make_tenant(live_panel, "usage"), "other": make_tenant(live_panel, "usage-other")}


def test_traffic_is_counted_and_a_reboot_loses_none_of_it(live_panel, test_cluster, usage_env):
    panel, tenant = live_panel, usage_env["tenant"]
    server = create_tiny_server(panel, usage_env, tenant, "usage-1")
    url = f"/api/v1/servers/{server['id']}/usage/"
    guest = ClusterGuest(test_cluster, server)

    def traffic() -> int:
        r = panel.call(tenant.key, "GET", url)
        assert r.status_code == 200, r.text
        assert r.json()["traffic_quota_bytes"] == 10 * 1024**3 and r.json()["throttled"] is False
        return r.json()["traffic_rx_bytes"] + r.json()["traffic_tx_bytes"]

    # 20 echo requests out and 20 replies in, each more than PING bytes on the wire.
    guest.sh(f"ping -c 20 -s {PING} -W 2 10.77.1.1 >/dev/null; echo done", timeout=60)
    panel.manage("collect_usage")
    before_reboot = traffic()
    assert before_reboot >= 2 * 20 * PING, before_reboot

    r = panel.call(tenant.key, "POST", f"/api/v1/servers/{server['id']}/reboot/", json={})
    assert r.status_code == 202, r.text
    assert panel.wait_operation(tenant.key, r.json()["id"], timeout=120)["status"] == "succeeded"
    guest.sh(f"ping -c 10 -s {PING} -W 2 10.77.1.1 >/dev/null; echo done", timeout=60)
    panel.manage("collect_usage")
    after = traffic()
    # Nothing from before the reboot is lost, and the new boot's traffic is added to it.
    assert after >= before_reboot + 2 * 10 * PING, (before_reboot, after)

    body = panel.call(tenant.key, "GET", url).json()
    assert body["cpu_seconds"] > 0 and body["uptime_seconds"] >= 0
    assert body["disk_read_bytes"] >= 0 and body["disk_write_bytes"] >= 0
    # Another customer's key: not found; billing keys see it.
    assert panel.call(usage_env["other"].key, "GET", url).status_code == 404
    assert panel.call(panel.admin_key, "GET", url).status_code == 200
    assert panel.call(tenant.key, "GET", url, params={"from": "not-a-date"}).status_code == 400

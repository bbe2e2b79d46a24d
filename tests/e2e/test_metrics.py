"""Monitoring on the test cluster: real counters of a real QEMU guest, across a reboot and a live
migration to another node, through the collector (`manage.py collect_metrics`, what the worker
runs each minute) and the metrics API.

The guest sends a known amount of traffic (echo requests of a known size to the public
network's gateway) and writes a known amount to its disk (synced, above its installed
system); the series' sums grow by it within 5 %. Across the reboot and the migration nothing
goes negative, and the sums equal billing's usage exactly. Another customer gets 404.
"""

import pytest

from tests.e2e.conftest import ClusterGuest, cluster_with_node, create_tiny_server, make_tenant

PING, COUNT = 1400, 20
# What the guest sends for one echo request, as its NIC counts it: Ethernet 14 + IP 20 + ICMP 8.
FRAME = PING + 14 + 20 + 8
WRITE_MIB = 8
SERIES = "net_rx,net_tx,disk.vda.wr_bytes,cpu,cpu_ns"


@pytest.fixture(scope="module")
def metrics_env(live_panel, test_cluster):
    with cluster_with_node(live_panel, test_cluster, "metrics", "10.77.1.120", "10.77.1.139") as env:
        node2 = test_cluster.node(2)
        cluster = live_panel.call(live_panel.admin_key, "GET", f"/api/v1/nodes/{env['node']}/").json()["cluster"]
        r = live_panel.call(live_panel.admin_key, "POST", "/api/v1/nodes/", json={
            "cluster": cluster, "name": f"metrics-{node2.name}", "address": node2.address,
            "ssh_password": node2.root_password})
        assert r.status_code == 202, r.text
        op = live_panel.wait_operation(live_panel.admin_key, r.json()["id"], timeout=180)
        assert op["status"] == "succeeded", op
        try:
            yield {**env, "node2": op["node"], "tenant": make_tenant(live_panel, "metrics"),
                   "other": make_tenant(live_panel, "metrics-other")}
        finally:
            admin = live_panel.admin_key
            for server in live_panel.call(admin, "GET", f"/api/v1/servers/?node={op['node']}").json()["results"]:
                live_panel.wait_operation(admin, live_panel.call(admin, "DELETE", f"/api/v1/servers/{server['id']}/").json()["id"])
            assert live_panel.call(admin, "DELETE", f"/api/v1/nodes/{op['node']}/").status_code == 204


def test_real_counters_survive_a_reboot_and_a_live_migration_and_equal_billing(live_panel, test_cluster, metrics_env):
    panel, tenant = live_panel, metrics_env["tenant"]
    server = create_tiny_server(panel, metrics_env, tenant, "metrics-1")
    guest = ClusterGuest(test_cluster, server)
    url = f"/api/v1/servers/{server['id']}/metrics/"

    def sums() -> dict:
        panel.manage("collect_metrics")
        r = panel.call(tenant.key, "GET", url, params={"series": SERIES})
        assert r.status_code == 200, r.text
        body = r.json()
        for name in ("net_rx", "net_tx", "disk.vda.wr_bytes", "cpu"):
            assert min((v for v in body["series"][name]["avg"] if v is not None), default=0) >= 0, (name, body)
        return {name: body["series"][name]["sum"] for name in ("net_rx", "net_tx", "disk.vda.wr_bytes", "cpu_ns")}

    def traffic_and_writes(seek_mib: int) -> None:
        guest.sh(f"ping -c {COUNT} -s {PING} -W 2 10.77.1.1 >/dev/null; echo done", timeout=60)
        guest.sh(f"dd if=/dev/urandom of=/dev/vda bs=1M seek={seek_mib} count={WRITE_MIB} conv=fsync 2>/dev/null; sync",
                 timeout=60)

    def grew(before: dict, after: dict) -> None:
        sent, received = after["net_tx"] - before["net_tx"], after["net_rx"] - before["net_rx"]
        written = after["disk.vda.wr_bytes"] - before["disk.vda.wr_bytes"]
        assert abs(sent - COUNT * FRAME) <= 0.05 * COUNT * FRAME, (sent, COUNT * FRAME)
        assert abs(received - COUNT * FRAME) <= 0.05 * COUNT * FRAME, (received, COUNT * FRAME)
        assert abs(written - WRITE_MIB * 2**20) <= 0.05 * WRITE_MIB * 2**20, written

    def equals_billing(now: dict) -> None:
        usage = panel.call(tenant.key, "GET", f"/api/v1/servers/{server['id']}/usage/").json()
        assert (now["net_rx"], now["net_tx"]) == (usage["traffic_rx_bytes"], usage["traffic_tx_bytes"]), (now, usage)
        assert now["disk.vda.wr_bytes"] == usage["disk_write_bytes"], (now, usage)

    guest.sh("true")  # the guest's shell answers
    first = sums()
    traffic_and_writes(64)
    second = sums()
    grew(first, second)
    equals_billing(second)

    r = panel.call(tenant.key, "POST", f"/api/v1/servers/{server['id']}/reboot/", json={})
    assert r.status_code == 202, r.text
    assert panel.wait_operation(tenant.key, r.json()["id"], timeout=120)["status"] == "succeeded"
    guest.sh("true")
    third = sums()
    assert all(third[k] >= second[k] for k in third), (second, third)  # nothing lost at the reboot
    traffic_and_writes(80)
    fourth = sums()
    grew(third, fourth)
    equals_billing(fourth)

    r = panel.call(panel.admin_key, "POST", f"/api/v1/servers/{server['id']}/migrate/",
                   json={"node": metrics_env["node2"], "live": True})
    assert r.status_code == 202, r.text
    assert panel.wait_operation(panel.admin_key, r.json()["id"], timeout=180)["status"] == "succeeded"
    guest.run = lambda argv, **kw: test_cluster.run(2, argv, **kw)  # the guest runs on node 2 now
    fifth = sums()
    assert all(fifth[k] >= fourth[k] for k in fifth), (fourth, fifth)  # nothing lost in the move
    traffic_and_writes(96)
    sixth = sums()
    grew(fifth, sixth)
    equals_billing(sixth)
    assert sixth["cpu_ns"] > first["cpu_ns"]

    r = panel.call(tenant.key, "GET", url)
    assert {e["kind"] for e in r.json()["events"]} >= {"reboot", "migration"}, r.json()["events"]
    assert "metrics-node" not in r.text  # customers never see node names
    assert panel.call(metrics_env["other"].key, "GET", url).status_code == 404

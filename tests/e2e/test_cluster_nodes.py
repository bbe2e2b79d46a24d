"""Cluster nodes over SSH, on the test cluster: add, install, place, watch, refuse, remove.

The nodes are network namespaces with their own sshd (root password on first contact) and
libvirtd; the panel adds them through its API exactly as it would real servers.
"""

import time

import pytest

from tests.e2e.conftest import add_nat_network, make_tenant, panel_db_rows, wait_for


@pytest.fixture(scope="module")
def nodes(live_panel, test_cluster):
    """The three nodes added through the API; returns {index: node dict} and the cluster id."""
    panel, admin = live_panel, live_panel.admin_key
    r = panel.call(admin, "POST", "/api/v1/clusters/", json={"name": "e2e", "os_family": "apt",
                                                              "cpu_overcommit": "4", "ram_overcommit": "1"})
    assert r.status_code == 201, r.text
    cluster_id = r.json()["id"]
    remove_network = add_nat_network(panel, cluster_id, "10.77.7.0/24")
    r = panel.call(admin, "POST", "/api/v1/storages/", json={"cluster": cluster_id, "name": "disks", "kind": "dir",
                                                              "path": "/var/lib/libvirt/images/panel"})
    assert r.status_code == 201, r.text
    ops = {}
    for i in (1, 2, 3):
        node = test_cluster.node(i)
        r = panel.call(admin, "POST", "/api/v1/nodes/", json={
            "cluster": cluster_id, "name": node.name, "address": node.address, "ssh_password": node.root_password})
        assert r.status_code == 202, r.text
        assert "secret" not in r.json()["params"]
        ops[i] = r.json()["id"]
    found = {}
    for i, op_id in ops.items():
        op = panel.wait_operation(admin, op_id, timeout=180)
        assert op["status"] == "succeeded", panel.call(admin, "GET", f"/api/v1/operations/{op_id}/").json()
        found[i] = panel.call(admin, "GET", f"/api/v1/nodes/{op['node']}/").json()
    yield {"cluster": cluster_id, **found}
    # The nodes leave the panel with the test cluster, so later tests never place on them
    # (with whatever servers a failed test left there).
    for node in panel.call(admin, "GET", f"/api/v1/nodes/?cluster={cluster_id}").json()["results"]:
        for server in panel.call(admin, "GET", f"/api/v1/servers/?node={node['id']}").json()["results"]:
            panel.wait_operation(admin, panel.call(admin, "DELETE", f"/api/v1/servers/{server['id']}/").json()["id"])
    for node in panel.call(admin, "GET", f"/api/v1/nodes/?cluster={cluster_id}").json()["results"]:
        r = panel.call(admin, "DELETE", f"/api/v1/nodes/{node['id']}/")
        assert r.status_code == 204, r.text
    remove_network()
    assert panel.call(admin, "DELETE", f"/api/v1/clusters/{cluster_id}/").status_code == 204


def test_three_nodes_are_installed_online_with_their_capacity(live_panel, test_cluster, nodes):
    panel, admin = live_panel, live_panel.admin_key
    for i in (1, 2, 3):
        node = nodes[i]
        assert node["state"] == "online", node
        assert node["cpus"] > 0 and node["ram_mib"] > 0 and node["libvirt_version"] and node["qemu_version"]
        assert node["virt_type"] == "qemu"  # no working KVM on these machines
        capacity = list(node["storage_capacity"].values())
        assert capacity and capacity[0]["total_gib"] > 0
        assert node["host_key_fingerprint"] == test_cluster.host_key_fingerprint(i)
        # The password was used once: the panel's own key is now authorized on the node.
        keys = test_cluster.run(i, ["cat", "/root/.ssh/authorized_keys"]).stdout
        assert "kvm-panel" in keys
    # The password is nowhere in the panel's database.
    password = test_cluster.root_password
    assert not panel_db_rows(panel, "SELECT id FROM vps_operation WHERE params LIKE %s OR log LIKE %s",
                             f"%{password}%", f"%{password}%")

    # Adding a node again is refused, never a duplicate.
    r = panel.call(admin, "POST", "/api/v1/nodes/", json={"cluster": nodes["cluster"], "address": "10.77.0.11",
                                                          "ssh_password": "whatever"})
    assert r.status_code == 409 and r.json()["code"] == "node_exists"
    listed = panel.call(admin, "GET", "/api/v1/nodes/?cluster=%d" % nodes["cluster"]).json()
    assert listed["count"] == 3

    # Installing again changes nothing, and says so.
    r = panel.call(admin, "POST", f"/api/v1/nodes/{nodes[1]['id']}/install/")
    assert r.status_code == 202, r.text
    op = panel.wait_operation(admin, r.json()["id"], timeout=120)
    assert op["status"] == "succeeded", op
    log = panel.call(admin, "GET", f"/api/v1/operations/{op['id']}/").json()["log"]
    assert "packages: already installed" in log and "libvirtd: already running" in log
    assert "storage disks: already there" in log


def test_six_servers_spread_over_the_nodes_and_boot(live_panel, test_cluster, nodes, plan_id):
    panel, admin = live_panel, live_panel.admin_key
    tenant = make_tenant(panel, "spread")
    created = []
    for n in range(6):
        r = panel.call(admin, "POST", "/api/v1/servers/", json={
            "customer": tenant.customer_id, "plan": plan_id, "os_template": "tiny", "hostname": f"spread-{n}", "cluster": nodes["cluster"]})
        assert r.status_code == 202, r.text
        created.append(r.json()["id"])
    servers = []
    for op_id in created:
        op = panel.wait_operation(admin, op_id, timeout=180)
        assert op["status"] == "succeeded", panel.call(admin, "GET", f"/api/v1/operations/{op_id}/").json()
        servers.append(panel.call(admin, "GET", f"/api/v1/servers/{op['server']}/").json())
    by_node = {}
    for server in servers:
        by_node.setdefault(server["node"], []).append(server)
    # Spread: identical nodes get two each.
    assert sorted(len(v) for v in by_node.values()) == [2, 2, 2], by_node
    index_of = {nodes[i]["id"]: i for i in (1, 2, 3)}
    for node_id, placed in by_node.items():
        i = index_of[node_id]
        listed = test_cluster.run(i, ["virsh", "-c", "qemu:///system", "list", "--name"]).stdout.split()
        for server in placed:
            name = "vps-" + server["uuid"].replace("-", "")[:12]
            assert name in listed
            wait_for(lambda: "TINY-GUEST booted" in test_cluster.run(
                i, ["cat", f"/var/log/libvirt/qemu/{name}-serial.log"]).stdout, 180, f"{name} to boot on node{i}")
    # The allocation counters follow the servers.
    for i in (1, 2, 3):
        node = panel.call(admin, "GET", f"/api/v1/nodes/{nodes[i]['id']}/").json()
        assert node["alloc_ram_mib"] == 2 * 256 and node["alloc_vcpus"] == 2
    for server in servers:
        r = panel.call(admin, "DELETE", f"/api/v1/servers/{server['id']}/")
        assert panel.wait_operation(admin, r.json()["id"], timeout=120)["status"] == "succeeded"
    for i in (1, 2, 3):
        assert test_cluster.run(i, ["virsh", "-c", "qemu:///system", "list", "--all", "--name"]).stdout.split() == []
        node = panel.call(admin, "GET", f"/api/v1/nodes/{nodes[i]['id']}/").json()
        assert node["alloc_ram_mib"] == 0


def node_state(panel, node_id) -> str:
    return panel.call(panel.admin_key, "GET", f"/api/v1/nodes/{node_id}/").json()["state"]


def test_a_dead_libvirtd_or_a_cut_link_takes_the_node_out_and_back(live_panel, test_cluster, nodes, plan_id):
    panel, admin = live_panel, live_panel.admin_key
    node2, node3 = nodes[2]["id"], nodes[3]["id"]
    test_cluster.kill_libvirtd(2)
    started = time.monotonic()
    wait_for(lambda: node_state(panel, node2) == "offline", 15, "node2 to go offline")
    went_offline = time.monotonic() - started
    down = panel_db_rows(panel, "SELECT data FROM api_event WHERE event='node.down'")
    assert any(f'"node": {node2}' in row[0] for row in down), down
    # No new server lands on it; the admin is told why.
    tenant = make_tenant(panel, "health")
    for n in range(2):
        r = panel.call(admin, "POST", "/api/v1/servers/", json={
            "customer": tenant.customer_id, "plan": plan_id, "os_template": "tiny", "hostname": f"health-{n}", "cluster": nodes["cluster"]})
        assert r.status_code == 202, r.text
        op = panel.wait_operation(admin, r.json()["id"], timeout=120)
        assert op["status"] == "succeeded", op
        server = panel.call(admin, "GET", f"/api/v1/servers/{op['server']}/").json()
        assert server["node"] != node2
        panel.wait_operation(admin, panel.call(admin, "DELETE", f"/api/v1/servers/{server['id']}/").json()["id"])
    r = panel.call(admin, "POST", "/api/v1/servers/", json={
        "customer": tenant.customer_id, "plan": plan_id, "os_template": "tiny", "hostname": "pinned", "node": node2})
    assert r.status_code == 409 and "offline" in r.json()["detail"]

    test_cluster.start_libvirtd(2)
    started = time.monotonic()
    wait_for(lambda: node_state(panel, node2) == "online", 15, "node2 to come back online")
    came_back = time.monotonic() - started
    assert panel_db_rows(panel, "SELECT id FROM api_event WHERE event='node.up' AND data LIKE %s", f'%"node": {node2}%')

    test_cluster.link_down(3)
    try:
        started = time.monotonic()
        wait_for(lambda: node_state(panel, node3) == "offline", 15, "node3 to go offline after its link was cut")
        link_noticed = time.monotonic() - started
    finally:
        test_cluster.link_up(3)
    wait_for(lambda: node_state(panel, node3) == "online", 15, "node3 to come back")
    print(f"\nhealth: libvirtd killed → offline in {went_offline:.1f} s, back online in {came_back:.1f} s; "
          f"link cut → offline in {link_noticed:.1f} s")


def test_bad_nodes_are_refused_with_a_reason_and_leave_nothing(live_panel, test_cluster, nodes):
    panel, admin = live_panel, live_panel.admin_key
    broken = test_cluster.node(4)
    before = panel.call(admin, "GET", "/api/v1/nodes/").json()["count"]
    cases = [
        ({"address": "10.77.0.99", "ssh_password": "x"}, "cannot reach"),
        ({"address": broken.address, "ssh_password": "not-the-password"}, "wrong password"),
        ({"address": broken.address, "ssh_password": broken.root_password}, "installing the virtualization packages failed"),
    ]
    for body, reason in cases:
        r = panel.call(admin, "POST", "/api/v1/nodes/", json={"cluster": nodes["cluster"], **body})
        assert r.status_code == 202, r.text
        op = panel.wait_operation(admin, r.json()["id"], timeout=120)
        assert op["status"] == "failed" and reason in op["error"], op
        assert panel.call(admin, "GET", "/api/v1/nodes/").json()["count"] == before  # no half-registered node
    r = panel.call(admin, "POST", "/api/v1/nodes/", json={"cluster": nodes["cluster"], "address": "bad host;rm",
                                                          "ssh_password": "x"})
    assert r.status_code == 400 and "address" in r.json()["fields"]
    r = panel.call(admin, "POST", "/api/v1/nodes/", json={"cluster": nodes["cluster"], "address": "10.77.0.12"})
    assert r.status_code == 400


def test_a_changed_host_key_is_refused_until_an_admin_accepts_it(live_panel, test_cluster, nodes):
    panel, admin = live_panel, live_panel.admin_key
    node1 = nodes[1]["id"]
    new_fingerprint = test_cluster.replace_host_key(1)
    r = panel.call(admin, "POST", f"/api/v1/nodes/{node1}/install/")
    op = panel.wait_operation(admin, r.json()["id"], timeout=60)
    assert op["status"] == "failed" and "host key changed" in op["error"], op
    node = panel.call(admin, "GET", f"/api/v1/nodes/{node1}/").json()
    assert node["offered_host_key_fingerprint"] == new_fingerprint
    assert "host key changed" in node["last_error"]
    r = panel.call(admin, "POST", f"/api/v1/nodes/{node1}/accept-host-key/", json={"fingerprint": "SHA256:nope"})
    assert r.status_code == 409
    r = panel.call(admin, "POST", f"/api/v1/nodes/{node1}/accept-host-key/", json={"fingerprint": new_fingerprint})
    assert r.status_code == 200 and r.json()["host_key_fingerprint"] == new_fingerprint
    r = panel.call(admin, "POST", f"/api/v1/nodes/{node1}/install/")
    assert panel.wait_operation(admin, r.json()["id"], timeout=120)["status"] == "succeeded"
    wait_for(lambda: node_state(panel, node1) == "online", 20, "node1 online with its new key")


def test_a_node_with_servers_cannot_be_removed_and_an_empty_one_goes(live_panel, test_cluster, nodes, plan_id):
    panel, admin = live_panel, live_panel.admin_key
    node3 = nodes[3]["id"]
    tenant = make_tenant(panel, "remove")
    r = panel.call(admin, "POST", "/api/v1/servers/", json={
        "customer": tenant.customer_id, "plan": plan_id, "os_template": "tiny", "hostname": "stay", "node": node3})
    op = panel.wait_operation(admin, r.json()["id"], timeout=120)
    assert op["status"] == "succeeded", op
    r = panel.call(admin, "DELETE", f"/api/v1/nodes/{node3}/")
    assert r.status_code == 409 and r.json()["code"] == "node_has_servers"
    panel.wait_operation(admin, panel.call(admin, "DELETE", f"/api/v1/servers/{op['server']}/").json()["id"])
    r = panel.call(admin, "DELETE", f"/api/v1/nodes/{node3}/")
    assert r.status_code == 204, r.text
    assert panel.call(admin, "GET", f"/api/v1/nodes/{node3}/").status_code == 404
    assert "kvm-panel" not in test_cluster.run(3, ["cat", "/root/.ssh/authorized_keys"]).stdout

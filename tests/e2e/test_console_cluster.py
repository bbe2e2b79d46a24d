"""The console of a server on a cluster node (a network namespace), before and after a live
migration to another node: the proxy finds the server where it runs now, and keys typed
through it reach the guest."""

import asyncio
import functools
import struct

import pytest
import websockets

from tests.e2e.conftest import add_nat_network, make_tenant, wait_for
from tests.e2e.test_console import console_url, page_origin

SHIFTED = set('~!@#$%^&*()_+{}|:"<>?ABCDEFGHIJKLMNOPQRSTUVWXYZ')
SHIFT, RETURN = 0xFFE1, 0xFF0D


def key(down: bool, keysym: int) -> bytes:
    return struct.pack(">BBxxI", 4, 1 if down else 0, keysym)


async def rfb_type(url: str, text: str) -> dict:
    """An RFB session through the proxy that types `text` as key events."""
    async with websockets.connect(url, subprotocols=["binary"], origin=page_origin(url)) as ws:
        assert await ws.recv() == b"RFB 003.008\n"
        await ws.send(b"RFB 003.008\n")
        assert await ws.recv() == bytes([1, 1])
        await ws.send(bytes([1]))
        assert await ws.recv() == b"\0\0\0\0"
        await ws.send(bytes([1]))
        data = b""
        while len(data) < 24:
            data += await ws.recv()
        width, height = struct.unpack(">HH", data[:4])
        for ch in text:
            keysym = RETURN if ch == "\n" else ord(ch)
            events = [key(True, keysym), key(False, keysym)]
            if ch in SHIFTED:
                events = [key(True, SHIFT), *events, key(False, SHIFT)]
            for event in events:
                await ws.send(event)
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        return {"width": width, "height": height}


@pytest.fixture(scope="module")
def console_cluster(live_panel, test_cluster):
    panel, admin = live_panel, live_panel.admin_key

    def post(path, body, expect=201):
        r = panel.call(admin, "POST", path, json=body)
        assert r.status_code == expect, r.text
        return r.json()

    cluster = post("/api/v1/clusters/", {"name": "consoles", "os_family": "apt"})["id"]
    # /tmp is shared by the namespace nodes: a shared storage, so servers can move live.
    post("/api/v1/storages/", {"cluster": cluster, "name": "shared", "kind": "dir", "path": "/tmp/pnl-e2e-shared-disks"})
    remove_network = add_nat_network(panel, cluster, "10.77.6.0/24")
    nodes = {}
    for i in (1, 2):
        node = test_cluster.node(i)
        op = post("/api/v1/nodes/", {"cluster": cluster, "name": f"con-{node.name}", "address": node.address,
                                     "ssh_password": node.root_password}, expect=202)
        op = panel.wait_operation(admin, op["id"], timeout=180)
        assert op["status"] == "succeeded", panel.call(admin, "GET", f"/api/v1/operations/{op['id']}/").json()
        nodes[i] = op["node"]
    plan = post("/api/v1/plans/", {"name": "console-plan", "vcpus": 1, "ram_mib": 128, "disk_gib": 1,
                                   "ipv4_count": 0})["id"]
    yield {"nodes": nodes, "plan": plan, "tenant": make_tenant(panel, "con-cluster")}
    for node_id in nodes.values():
        for server in panel.call(admin, "GET", f"/api/v1/servers/?node={node_id}").json()["results"]:
            panel.wait_operation(admin, panel.call(admin, "DELETE", f"/api/v1/servers/{server['id']}/").json()["id"])
        assert panel.call(admin, "DELETE", f"/api/v1/nodes/{node_id}/").status_code == 204
    remove_network()
    panel.call(admin, "DELETE", f"/api/v1/clusters/{cluster}/")


def test_the_console_follows_the_server_to_another_node(live_panel, test_cluster, console_cluster):
    panel, admin = live_panel, live_panel.admin_key
    tenant, nodes = console_cluster["tenant"], console_cluster["nodes"]
    r = panel.call(admin, "POST", "/api/v1/servers/", json={
        "customer": tenant.customer_id, "plan": console_cluster["plan"], "os_template": "tiny", "hostname": "moving", "node": nodes[1]})
    op = panel.wait_operation(admin, r.json()["id"], timeout=120)
    assert op["status"] == "succeeded", op
    server = panel.call(admin, "GET", f"/api/v1/servers/{op['server']}/").json()
    name = "vps-" + server["uuid"].replace("-", "")[:12]

    def serial(i):
        return test_cluster.run(i, ["cat", f"/var/log/libvirt/qemu/{name}-serial.log"]).stdout

    wait_for(lambda: "TINY-GUEST booted" in serial(1), 120, "the guest to boot on node1")
    # The node's VNC listens on its own address, behind a password only the proxy knows.
    xml = test_cluster.run(1, ["virsh", "-c", "qemu:///system", "dumpxml", "--security-info", name]).stdout
    assert "listen='10.77.0.11'" in xml and "passwd=" in xml
    _page, url = console_url(panel, tenant.key, server["id"])
    asyncio.run(rfb_type(url, "echo before-move > /dev/ttyS0\n"))
    wait_for(lambda: "before-move" in serial(1), 30, "keys through the proxy to reach the guest on node1")

    r = panel.call(admin, "POST", f"/api/v1/servers/{server['id']}/migrate/", json={"node": nodes[2], "live": True})
    assert r.status_code == 202, r.text
    op = panel.wait_operation(admin, r.json()["id"], timeout=120)
    assert op["status"] == "succeeded", op
    assert panel.call(admin, "GET", f"/api/v1/servers/{server['id']}/").json()["node"] == nodes[2]
    listed = functools.partial(test_cluster.run, 2)(["virsh", "-c", "qemu:///system", "list", "--name"]).stdout
    assert name in listed.split()

    _page, url = console_url(panel, tenant.key, server["id"])
    init = asyncio.run(rfb_type(url, "echo after-move > /dev/ttyS0\n"))
    assert init["width"] > 0
    wait_for(lambda: "after-move" in serial(2), 30, "keys through the proxy to reach the guest on node2")

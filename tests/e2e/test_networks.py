"""Networks and IP pools on the test cluster: addresses from pools reach the guests, guests
reach each other and (through the node's NAT) the host, and a guest cannot send from an
address that is not its own.

The nodes get a public segment (eth1 in a host bridge with 10.77.1.1/24); the panel's
installer makes the bridges of the cluster's networks on them. Commands are typed into the
guests' consoles; their output comes back in the serial logs.
"""

import functools
import ipaddress

import pytest

from tests.e2e.conftest import make_tenant, wait_for
from tests.guest import guest_command, wait_shell


@pytest.fixture(scope="module")
def net(live_panel, test_cluster):
    panel, admin = live_panel, live_panel.admin_key

    def post(path, body, expect=201):
        r = panel.call(admin, "POST", path, json=body)
        assert r.status_code == expect, r.text
        return r.json()

    cluster = post("/api/v1/clusters/", {"name": "nets", "os_family": "apt"})["id"]
    post("/api/v1/storages/", {"cluster": cluster, "name": "disks", "kind": "dir", "path": "/var/lib/libvirt/images/panel"})
    public = post("/api/v1/networks/", {"cluster": cluster, "name": "public", "kind": "bridged", "bridge": "br-pub",
                                        "interface": "eth1"})["id"]
    private = post("/api/v1/networks/", {"cluster": cluster, "name": "private", "kind": "nat", "bridge": "br-nat",
                                         "nat_cidr": "10.77.3.0/24"})["id"]
    pools = [
        post("/api/v1/ip-pools/", {"name": "e2e-public", "network": public, "cidr": "10.77.1.0/24",
                                   "first": "10.77.1.20", "last": "10.77.1.40", "gateway": "10.77.1.1",
                                   "dns": "10.77.1.1", "quarantine_minutes": 0})["id"],
        post("/api/v1/ip-pools/", {"name": "e2e-private", "network": private, "cidr": "10.77.3.0/24",
                                   "first": "10.77.3.10", "last": "10.77.3.50", "gateway": "10.77.3.1",
                                   "quarantine_minutes": 0})["id"],
    ]
    nodes = {}
    for i in (1, 2):
        node = test_cluster.node(i)
        op = post("/api/v1/nodes/", {"cluster": cluster, "name": f"net-{node.name}", "address": node.address,
                                     "ssh_password": node.root_password}, expect=202)
        op = panel.wait_operation(admin, op["id"], timeout=180)
        assert op["status"] == "succeeded", panel.call(admin, "GET", f"/api/v1/operations/{op['id']}/").json()
        log = panel.call(admin, "GET", f"/api/v1/operations/{op['id']}/").json()["log"]
        assert "bridge br-pub over eth1: created" in log and "NAT bridge br-nat for 10.77.3.0/24: created" in log
        nodes[i] = op["node"]
    # No bandwidth limit: libvirt applies it with tc's sfq qdisc, which this machine's kernel
    # lacks (the <bandwidth> element is checked in tests/test_ipam.py and test_domain_xml.py).
    plan = post("/api/v1/plans/", {"name": "net-plan", "vcpus": 1, "ram_mib": 128, "disk_gib": 1})["id"]
    private_plan = post("/api/v1/plans/", {"name": "net-private", "vcpus": 1, "ram_mib": 128, "disk_gib": 1,
                                           "ipv4_count": 0})["id"]
    tenant = make_tenant(panel, "nets")
    yield {"cluster": cluster, "nodes": nodes, "plan": plan, "private_plan": private_plan, "tenant": tenant}
    for node_id in nodes.values():
        for server in panel.call(admin, "GET", f"/api/v1/servers/?node={node_id}").json()["results"]:
            panel.wait_operation(admin, panel.call(admin, "DELETE", f"/api/v1/servers/{server['id']}/").json()["id"])
        assert panel.call(admin, "DELETE", f"/api/v1/nodes/{node_id}/").status_code == 204
    for pool in pools:
        panel.call(admin, "DELETE", f"/api/v1/ip-pools/{pool}/")
    for network in (public, private):
        panel.call(admin, "DELETE", f"/api/v1/networks/{network}/")
    panel.call(admin, "DELETE", f"/api/v1/clusters/{cluster}/")


class Guest:
    """A server's guest on a cluster node: its serial log and its keyboard."""

    def __init__(self, cluster, index: int, server: dict):
        self.server = server
        self.name = "vps-" + server["uuid"].replace("-", "")[:12]
        self.run = functools.partial(cluster.run, index)

    def log(self) -> str:
        return self.run(["cat", f"/var/log/libvirt/qemu/{self.name}-serial.log"]).stdout

    def sh(self, command: str, timeout: float = 40) -> tuple[int, str]:
        return guest_command(self.run, self.name, self.log, command, timeout=timeout)


def make_server(panel, net, test_cluster, index: int, hostname: str, **extra) -> Guest:
    admin = panel.admin_key
    r = panel.call(admin, "POST", "/api/v1/servers/", json={
        "customer": net["tenant"].customer_id, "plan": net["plan"], "os_template": "tiny", "hostname": hostname,
        "node": net["nodes"][index], **extra})
    assert r.status_code == 202, r.text
    op = panel.wait_operation(admin, r.json()["id"], timeout=120)
    assert op["status"] == "succeeded", op
    return Guest(test_cluster, index, panel.call(admin, "GET", f"/api/v1/servers/{op['server']}/").json())


def test_addresses_reach_guests_guests_reach_each_other_nat_works_and_spoofing_does_not(live_panel, test_cluster, net):
    panel = live_panel
    a = make_server(panel, net, test_cluster, 1, "net-a")
    b = make_server(panel, net, test_cluster, 2, "net-b")
    c = make_server(panel, net, test_cluster, 1, "net-c", plan=net["private_plan"], private_network=True)
    a_ip, b_ip, c_ip = a.server["ipv4"], b.server["ipv4"], c.server["ipv4"]
    assert len(a_ip) == len(b_ip) == len(c_ip) == 1 and a_ip != b_ip
    for ip in a_ip + b_ip:
        assert ipaddress.ip_address(ip) in ipaddress.ip_network("10.77.1.0/24")
    assert ipaddress.ip_address(c_ip[0]) in ipaddress.ip_network("10.77.3.0/24")
    for guest, ip in ((a, a_ip[0]), (b, b_ip[0]), (c, c_ip[0])):
        wait_for(lambda: "TINY-GUEST booted" in guest.log(), 120, f"{guest.name} to boot")
        assert f"TINY-GUEST net eth0 {ip}/24" in guest.log()
        wait_shell(guest.run, guest.name, guest.log, timeout=60)
    # The anti-spoofing filter carries the server's address.
    xml = a.run(["virsh", "-c", "qemu:///system", "dumpxml", a.name]).stdout
    assert "<filterref filter='clean-traffic'>" in xml and f"value='{a_ip[0]}'" in xml

    code, out = a.sh(f"ping -c 2 -W 3 {b_ip[0]}")
    assert code == 0, f"A cannot reach B across nodes: {out}"
    code, out = c.sh("ping -c 2 -W 3 10.77.0.1")
    assert code == 0, f"the private server does not reach the host through NAT: {out}"
    code, out = a.sh("ping -c 1 -W 3 10.77.1.1")
    assert code == 0, out
    # A takes an address of the pool that is not its own: the filter drops what it sends.
    code, out = a.sh("ip addr flush dev eth0; ip addr add 10.77.1.39/24 dev eth0; ping -c 2 -W 2 10.77.1.1")
    assert code != 0, f"a spoofed source address got through: {out}"
    code, out = a.sh(f"ip addr flush dev eth0; ip addr add {a_ip[0]}/24 dev eth0; ping -c 1 -W 3 10.77.1.1")
    assert code == 0, f"A's own address works again: {out}"

    # An admin gives A that address as an extra one: the running domain's filter follows.
    admin = panel.admin_key
    pool = panel.call(admin, "GET", "/api/v1/ip-pools/?name=e2e-public").json()["results"][0]
    r = panel.call(admin, "POST", "/api/v1/ip-addresses/", json={"server": a.server["id"], "pool": pool["id"],
                                                                 "address": "10.77.1.39"})
    assert r.status_code == 201, r.text
    ops = panel.call(admin, "GET", f"/api/v1/operations/?server={a.server['id']}&kind=network_update").json()
    assert panel.wait_operation(admin, ops["results"][0]["id"])["status"] == "succeeded"
    live = a.run(["virsh", "-c", "qemu:///system", "dumpxml", a.name]).stdout
    assert "value='10.77.1.39'" in live
    code, out = a.sh("ip addr add 10.77.1.39/24 dev eth0; ping -c 2 -W 3 -I 10.77.1.39 10.77.1.1")
    assert code == 0, f"the extra address does not work after the live filter update: {out}"

"""Networks and IP pools on the test cluster: addresses from pools reach the guests, guests
reach each other and (through the node's NAT) the host, and a guest cannot send from an
address that is not its own (IPv4, ARP, IPv6). On the shared private (NAT) network one
customer's guest reaches neither another customer's guest nor the node's own services.

The nodes get a public segment (eth1 in a host bridge with 10.77.1.1/24); the panel's
installer makes the bridges of the cluster's networks on them. Commands are typed into the
guests' consoles; their output comes back in the serial logs.
"""

import functools
import ipaddress
import socket
import time

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
        post("/api/v1/ip-pools/", {"name": "e2e-public6", "network": public, "cidr": "fd77:1::/64",
                                   "first": "fd77:1::20", "last": "fd77:1::40", "gateway": "fd77:1::1",
                                   "quarantine_minutes": 0})["id"],
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
    plan = post("/api/v1/plans/", {"name": "net-plan", "vcpus": 1, "ram_mib": 128, "disk_gib": 1,
                                   "ipv6_count": 1})["id"]
    private_plan = post("/api/v1/plans/", {"name": "net-private", "vcpus": 1, "ram_mib": 128, "disk_gib": 1,
                                           "ipv4_count": 0})["id"]
    tenant = make_tenant(panel, "nets")
    yield {"cluster": cluster, "nodes": nodes, "plan": plan, "private_plan": private_plan, "tenant": tenant,
           "alice": make_tenant(panel, "nets-alice"), "bob": make_tenant(panel, "nets-bob")}
    for node_id in nodes.values():
        for server in panel.call(admin, "GET", f"/api/v1/servers/?node={node_id}").json()["results"]:
            # a server still being made (a test failed before waiting for it) is busy: ask again
            def delete(server=server):
                r = panel.call(admin, "DELETE", f"/api/v1/servers/{server['id']}/")
                return None if r.status_code == 409 else [r]

            (r,) = wait_for(delete, 180, "the server to be deletable", 2)
            assert r.status_code == 202, r.text
            panel.wait_operation(admin, r.json()["id"])
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


def create_server(panel, net, index: int, hostname: str, customer=None, **extra) -> str:
    """POST a server; returns its create operation's id (waited for by the caller)."""
    r = panel.call(panel.admin_key, "POST", "/api/v1/servers/", json={
        "customer": (customer or net["tenant"]).customer_id, "plan": net["plan"], "os_template": "tiny",
        "hostname": hostname, "node": net["nodes"][index], **extra})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def booted(panel, test_cluster, index: int, op_id: str) -> Guest:
    admin = panel.admin_key
    op = panel.wait_operation(admin, op_id, timeout=180)
    assert op["status"] == "succeeded", op
    guest = Guest(test_cluster, index, panel.call(admin, "GET", f"/api/v1/servers/{op['server']}/").json())
    wait_for(lambda: "TINY-GUEST booted" in guest.log(), 120, f"{guest.name} to boot")
    wait_shell(guest.run, guest.name, guest.log, timeout=60)
    return guest


@pytest.fixture(scope="module")
def guests(live_panel, test_cluster, net):
    """One set of guests for every check: a and b public (IPv4 and IPv6) on node1 and node2; on
    node1's shared private network Alice's pa and Bob's pb (private only: their default route is
    the NAT gateway)."""
    panel = live_panel
    private = dict(plan=net["private_plan"], private_network=True)
    ops = {"a": (1, create_server(panel, net, 1, "net-a")),
           "b": (2, create_server(panel, net, 2, "net-b")),
           "pa": (1, create_server(panel, net, 1, "net-pa", customer=net["alice"], **private)),
           "pb": (1, create_server(panel, net, 1, "net-pb", customer=net["bob"], **private))}
    return {name: booted(panel, test_cluster, index, op) for name, (index, op) in ops.items()}


def test_addresses_reach_guests_guests_reach_each_other_nat_works_and_spoofing_does_not(live_panel, guests):
    panel = live_panel
    a, b, c = guests["a"], guests["b"], guests["pa"]
    a_ip, b_ip, c_ip = a.server["ipv4"], b.server["ipv4"], c.server["ipv4"]
    assert len(a_ip) == len(b_ip) == len(c_ip) == 1 and a_ip != b_ip
    for ip in a_ip + b_ip:
        assert ipaddress.ip_address(ip) in ipaddress.ip_network("10.77.1.0/24")
    assert ipaddress.ip_address(c_ip[0]) in ipaddress.ip_network("10.77.3.0/24")
    for guest, ip in ((a, a_ip[0]), (b, b_ip[0]), (c, c_ip[0])):
        assert f"TINY-GUEST net eth0 {ip}/24" in guest.log()
    # The anti-spoofing filter carries the server's addresses, IPv6 as IPv6.
    xml = a.run(["virsh", "-c", "qemu:///system", "dumpxml", a.name]).stdout
    assert "<filterref filter='panel-clean-traffic'>" in xml and f"name='IP' value='{a_ip[0]}'" in xml
    assert f"name='IPV6' value='{a.server['ipv6'][0]}'" in xml

    code, out = a.sh(f"ping -c 2 -W 3 {b_ip[0]}")
    assert code == 0, f"A cannot reach B across nodes: {out}"
    code, out = c.sh("ping -c 2 -W 3 10.77.0.1")
    assert code == 0, f"the private server does not reach the host through NAT: {out}"
    code, out = a.sh("ping -c 1 -W 3 10.77.1.1")
    assert code == 0, out
    # A takes an address of the pool that is not its own: the filter drops what it sends.
    code, out = a.sh("ip -4 addr flush dev eth0; ip addr add 10.77.1.39/24 dev eth0; ping -c 2 -W 2 10.77.1.1")
    assert code != 0, f"a spoofed source address got through: {out}"
    code, out = a.sh(f"ip -4 addr flush dev eth0; ip addr add {a_ip[0]}/24 dev eth0; ping -c 1 -W 3 10.77.1.1")
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


def vnc_port(guest: Guest) -> int:
    display = guest.run(["virsh", "-c", "qemu:///system", "vncdisplay", guest.name]).stdout.strip()
    return 5900 + int(display.rsplit(":", 1)[1])


def test_tenants_on_the_private_network_are_isolated_and_kept_from_the_nodes_services(test_cluster, guests):
    alice, bob = guests["pa"], guests["pb"]
    node = test_cluster.node(1).address
    port = vnc_port(alice)
    # The panel's side (the management network) still reaches the node's VNC port.
    with socket.create_connection((node, port), timeout=5) as s:
        assert s.recv(12).startswith(b"RFB")
    for guest in (alice, bob):
        code, out = guest.sh("ping -c 1 -W 3 10.77.0.1")
        assert code == 0, f"{guest.name} does not reach the outside through NAT: {out}"
    code, out = bob.sh(f"ping -c 2 -W 2 {alice.server['ipv4'][0]}")
    assert code != 0, f"Bob's guest reaches Alice's on the private network: {out}"
    code, out = alice.sh(f"ping -c 2 -W 2 {bob.server['ipv4'][0]}")
    assert code != 0, f"Alice's guest reaches Bob's on the private network: {out}"
    for target in (f"{node} {port}", f"{node} 22", f"10.77.3.1 {port}"):
        code, out = bob.sh(f"echo | nc -w 3 {target}", timeout=30)
        assert "RFB" not in out and "SSH-" not in out, f"Bob's guest reaches the node's {target}: {out}"
    code, out = bob.sh("ping -c 1 -W 3 10.77.3.1")
    assert code == 0, f"the gateway no longer answers ping: {out}"


def neighbour(guest: Guest, address: str) -> str:
    return guest.sh(f"ip neigh show {address}")[1]


def test_a_guest_claiming_a_neighbours_address_is_dropped_for_arp_and_ipv6(test_cluster, guests):
    a, b = guests["a"], guests["b"]
    a_mac = a.sh("cat /sys/class/net/eth0/address")[1].strip()
    host_mac = open("/sys/class/net/pnltpub0/address").read().strip()
    # IPv6 works at all through the filter (neighbour discovery from the guests' own addresses).
    b6 = b.server["ipv6"][0]
    code, out = a.sh(f"ping6 -c 2 -W 3 {b6}")
    assert code == 0, f"A cannot reach B over IPv6: {out}"
    # ARP: A claims the gateway 10.77.1.1 (the host's) with gratuitous ARP; B's cache keeps the host's MAC.
    code, out = b.sh("ping -c 1 -W 3 10.77.1.1")
    assert code == 0 and host_mac in neighbour(b, "10.77.1.1"), out
    time.sleep(1.5)  # past the neighbour entry's locktime: an update would be taken now
    code, out = a.sh("ip addr add 10.77.1.1/32 dev eth0; arping -U -c 3 -I eth0 10.77.1.1; "
                     "ip addr del 10.77.1.1/32 dev eth0")
    seen = neighbour(b, "10.77.1.1")
    assert host_mac in seen and a_mac not in seen, f"A's gratuitous ARP for the gateway reached B: {seen} ({out})"
    # IPv6: A claims the IPv6 gateway fd77:1::1 (a neighbour no guest owns) and would answer B's
    # neighbour solicitations and pings for it: the filter drops what A sends from that address.
    code, out = a.sh("ip -6 addr add fd77:1::1/64 dev eth0")
    assert code == 0, out
    code, out = b.sh("ping6 -c 2 -W 3 fd77:1::1")
    assert code != 0, f"A answered for a neighbour's IPv6 address: {out}"
    # and a source address of the pool that is not A's own goes nowhere
    code, out = a.sh(f"ping6 -c 2 -W 2 -I fd77:1::1 {b6}")
    assert code != 0, f"a spoofed IPv6 source got through: {out}"
    a.sh("ip -6 addr del fd77:1::1/64 dev eth0")
    code, out = a.sh(f"ping6 -c 1 -W 3 {b6}")
    assert code == 0, f"A's own IPv6 address stops working: {out}"


def firewall(test_cluster, index: int) -> str:
    return "".join(test_cluster.run(index, [tool, "-w", "-S"]).stdout for tool in ("iptables", "ip6tables"))


def test_the_nodes_firewall_is_idempotent_and_keeps_the_panel_in(live_panel, test_cluster, net, guests):
    panel, admin = live_panel, live_panel.admin_key
    before = firewall(test_cluster, 1)
    assert before.count("-A INPUT -j PANEL-GUESTS") == 2, before  # IPv4 and IPv6, once each
    assert "-A PANEL-GUESTS -i br-nat -j DROP" in before
    assert "-m iprange --src-range 10.77.1.20-10.77.1.40" in before
    assert "-m iprange --src-range fd77:1::20-fd77:1::40" in before
    r = panel.call(admin, "POST", f"/api/v1/nodes/{net['nodes'][1]}/install/")
    assert r.status_code == 202, r.text
    op = panel.wait_operation(admin, r.json()["id"], timeout=180)
    assert op["status"] == "succeeded", op  # the panel's SSH and libvirt over SSH came through
    log = panel.call(admin, "GET", f"/api/v1/operations/{op['id']}/").json()["log"]
    assert "firewall: guests kept from the node's own services (unchanged)" in log, log
    assert firewall(test_cluster, 1) == before
    # the console path (the management network to the node's VNC port) still opens
    guest = guests["pa"]
    with socket.create_connection((test_cluster.node(1).address, vnc_port(guest)), timeout=5) as s:
        assert s.recv(12).startswith(b"RFB")

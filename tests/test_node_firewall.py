"""The node's firewall for guests (nodes.installer.GUEST_FIREWALL): what it is given from the
cluster's networks and pools, and the script itself run for real with this machine's iptables
in a network namespace of its own (unshare --net: nothing of the host's rules is touched).
The guests' side of it (a guest kept from the node's VNC and SSH) is tests/e2e/test_networks.py."""

import os
import shutil
import subprocess

import pytest

from nodes import installer
from nodes.ssh import Result
from tests.conftest import fake_node
from tests.test_installer_commands import FakeShell, Steps

needs_netns = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("iptables"),
                                 reason="needs root, unshare and iptables")


def in_fresh_netns(*runs: tuple[str, ...], ssh_client: str = "10.9.9.9 50000 22") -> list[tuple[str, str]]:
    """Run the script once per argument tuple in ONE new network namespace; after each run, its
    output and the full rule set (iptables -S and ip6tables -S)."""
    body = "\n".join(
        f"out=$(sh -c \"$0\" sh {' '.join(_q(a) for a in args)}) || exit 1; echo \"OUT $out\"; "
        "iptables -w -S; ip6tables -w -S; echo ---" for args in runs)
    done = subprocess.run(["unshare", "--net", "sh", "-c", body, installer.GUEST_FIREWALL],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "SSH_CLIENT": ssh_client})
    assert done.returncode == 0, done.stderr
    results = []
    for chunk in done.stdout.split("---\n")[:-1]:
        first, _, rules = chunk.partition("\n")
        results.append((first.removeprefix("OUT "), rules))
    return results


def _q(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


ARGS = ("br-nat br-nat2", "10.0.8.10-10.0.8.50 203.0.113.20-203.0.113.40", "2001:db8:1::20-2001:db8:1::40")


@needs_netns
def test_the_firewall_is_idempotent_the_second_run_gives_the_same_rules():
    (first_out, first), (second_out, second) = in_fresh_netns(ARGS, ARGS)
    assert first_out == "updated" and second_out == "unchanged"
    assert first == second
    assert first.count("-A INPUT -j PANEL-GUESTS") == 2  # IPv4 and IPv6, jumped to once each


@needs_netns
def test_the_rules_keep_guests_from_the_node_and_the_panel_in():
    ((_, rules),) = in_fresh_netns(ARGS)
    v4 = [line for line in rules.splitlines() if line.startswith("-A PANEL-GUESTS")]
    # the panel's own SSH session comes first: no pool range can lock it out
    assert v4[0] == "-A PANEL-GUESTS -s 10.9.9.9/32 -j RETURN"
    for bridge in ("br-nat", "br-nat2"):
        assert f"-A PANEL-GUESTS -i {bridge} -j DROP" in v4
        assert f"-A PANEL-GUESTS -i {bridge} -p icmp -j RETURN" in v4
        assert f"-A PANEL-GUESTS -i {bridge} -j DROP" in rules.split("-P INPUT ACCEPT")[2]  # IPv6: all dropped
    assert ("-A PANEL-GUESTS -m iprange --src-range 203.0.113.20-203.0.113.40 -m conntrack ! --ctstate "
            "RELATED,ESTABLISHED -j DROP") in v4
    assert "-A PANEL-GUESTS -m iprange --src-range 2001:db8:1::20-2001:db8:1::40 -m conntrack ! --ctstate " \
           "RELATED,ESTABLISHED -j DROP" in rules
    # replies before drops, per bridge
    assert v4.index("-A PANEL-GUESTS -i br-nat -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN") < \
        v4.index("-A PANEL-GUESTS -i br-nat -j DROP")


@needs_netns
def test_a_network_gone_from_the_cluster_leaves_no_rule_behind():
    (_, _), (out, rules) = in_fresh_netns(ARGS, ("br-nat", "", ""))
    assert out == "updated" and "br-nat2" not in rules and "iprange" not in rules
    assert rules.count("-A INPUT -j PANEL-GUESTS") == 2


@pytest.mark.django_db
def test_bridges_and_pool_ranges_go_in_as_arguments():
    from nodes.models import Network
    from panel.ipam.models import IpPool

    node = fake_node("n1")
    public = Network.objects.create(cluster=node.cluster, name="public", kind="bridged", bridge="br-pub",
                                    interface="eth1")
    private = Network.objects.create(cluster=node.cluster, name="private", kind="nat", bridge="br-nat",
                                     nat_cidr="10.0.8.0/24")
    IpPool.objects.create(name="v4", network=public, cidr="203.0.113.0/24", first="203.0.113.20",
                          last="203.0.113.40")
    IpPool.objects.create(name="v6", network=public, cidr="2001:db8::/48", assign="prefix64")
    IpPool.objects.create(name="nat", network=private, cidr="10.0.8.0/24")
    shell = FakeShell(default=Result(0, "unchanged\n", ""))
    steps = Steps()
    installer.guest_firewall(shell, node, steps)
    (script,) = shell.scripts()
    assert script[2] == installer.GUEST_FIREWALL
    # a /64 delegation pool's range runs to the end of its last /64
    assert script[4:] == ["br-nat", "203.0.113.20-203.0.113.40 10.0.8.1-10.0.8.254",
                          "2001:db8::-2001:db8:0:ffff:ffff:ffff:ffff:ffff"]
    assert steps.messages == ["firewall: guests kept from the node's own services (unchanged)"]

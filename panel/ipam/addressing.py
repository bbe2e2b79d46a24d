"""A server's NICs with their addresses: the one walk that domain definitions, install configs
and the traffic throttle all read.

Each NIC (eth0, eth1, … in the order they were made) carries the addresses of its network's
pools; each IP version's gateway is given once per NIC, on its first address of that version.
"""

from dataclasses import dataclass

from nodes.domain_xml import Nic, mbit_to_kbytes
from nodes.models import Network
from panel.ipam.models import IpAddress


@dataclass(frozen=True)
class NicAddress:
    address: IpAddress  # with its pool
    gateway: str  # "" but on the NIC's first address of this IP version


@dataclass(frozen=True)
class ServerNic:
    name: str  # eth0, eth1, …
    mac: str
    bridge: str
    addresses: tuple[NicAddress, ...]
    # On the cluster's shared NAT network: an isolated bridge port (tenants never meet there).
    isolated: bool = False


def server_nics(server) -> tuple[list[ServerNic], list[str]]:
    """The server's NICs, in order, with their addresses; and the DNS servers of their pools
    (each once, in order of appearance)."""
    nics, dns = [], []
    for index, nic in enumerate(server.nics.select_related("network")):
        addresses, gateways_given = [], set()
        for address in IpAddress.objects.filter(server=server, pool__network=nic.network).select_related("pool"):
            gateway = address.pool.gateway if address.version not in gateways_given else ""
            gateways_given.add(address.version)
            addresses.append(NicAddress(address, gateway))
            dns += [d for d in address.pool.dns_servers() if d not in dns]
        nics.append(ServerNic(f"eth{index}", nic.mac, nic.network.bridge, tuple(addresses),
                              isolated=nic.network.kind == Network.Kind.NAT))
    return nics, dns


def domain_nics(server, rate_mbit: int | None = None) -> list[Nic]:
    """The server's NICs as its domain has them: anti-spoofing addresses and the bandwidth cap
    (the plan's, or `rate_mbit`)."""
    kbytes = mbit_to_kbytes(server.plan.bandwidth_mbit if rate_mbit is None else rate_mbit)
    return [Nic(bridge=nic.bridge, mac=nic.mac, ips=tuple(a.address.address for a in nic.addresses),
                average_kbytes=kbytes, isolated=nic.isolated) for nic in server_nics(server)[0]]

"""Handing out addresses: lock the pools, re-read what is taken, save, all in one transaction.

Concurrent creates serialize on the pool rows (SELECT … FOR UPDATE), so an address is never
given twice, and an exhausted pool answers 409 with nothing made (the caller's transaction,
which also holds the new server and its placement, rolls back).
"""

import ipaddress
from datetime import timedelta

from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext as _

from nodes.models import Network
from panel.ipam.models import IpAddress, IpPool, ordinal_key
from panel.refusals import Refused
from panel.vps.models import ServerNic, VirtualServer


def _taken(pool: IpPool) -> set[int]:
    cutoff = timezone.now() - timedelta(minutes=pool.quarantine_minutes)
    rows = IpAddress.objects.filter(pool=pool).filter(
        Q(server__isnull=False) | Q(released_at__gte=cutoff) | Q(released_at__isnull=True))
    return {int(v) for v in rows.values_list("ordinal", flat=True)}


def free_ordinals(pool: IpPool, count: int) -> list[int]:
    """Up to `count` free addresses of `pool`, lowest first."""
    taken, excluded = _taken(pool), pool.excluded_ordinals()
    start, end = pool.bounds()
    step, found, value = pool.step(), [], start
    while value <= end and len(found) < count:
        if value not in taken and value not in excluded:
            found.append(value)
        value += step
    return found


def _take(pool: IpPool, server: VirtualServer, ordinal: int) -> IpAddress:
    address = str(ipaddress.ip_address(ordinal) if pool.version == 4 else ipaddress.IPv6Address(ordinal))
    row, _created = IpAddress.objects.update_or_create(
        pool=pool, ordinal=ordinal_key(ordinal),
        defaults={"address": address, "server": server, "allocated_at": timezone.now(), "released_at": None,
                  "ptr": ""},
    )
    return row


def _locked_pools(network: Network, version: int) -> list[IpPool]:
    # All pools of the network are locked in id order, so two allocations never deadlock.
    return [p for p in IpPool.objects.select_for_update().filter(network=network).order_by("id") if p.version == version]


def allocate(server: VirtualServer, network: Network, version: int, count: int) -> list[IpAddress]:
    """Give `server` `count` addresses of IP `version` on `network`. Call inside atomic()."""
    if count <= 0:
        return []
    ServerNic.objects.get_or_create(server=server, network=network)
    got: list[IpAddress] = []
    for pool in _locked_pools(network, version):
        for ordinal in free_ordinals(pool, count - len(got)):
            got.append(_take(pool, server, ordinal))
        if len(got) == count:
            return got
    raise Refused(
        _("No free IPv%(version)s address left on network %(network)s.") % {"version": version, "network": network},
        "pool_exhausted", 409)


def allocate_for_new_server(server: VirtualServer, private_network: bool = False) -> None:
    """The plan's addresses on the cluster's public network, and one on its NAT network if asked
    (or when the cluster has no public network: the local node's demo network)."""
    cluster, plan = server.node.cluster, server.plan
    public = cluster.networks.filter(kind=Network.Kind.BRIDGED).order_by("id").first() if cluster else None
    if public is not None:
        allocate(server, public, 4, plan.ipv4_count)
        allocate(server, public, 6, plan.ipv6_count)
    if private_network or (public is None and cluster and cluster.networks.exists()):
        private = cluster.networks.filter(kind=Network.Kind.NAT).order_by("id").first() if cluster else None
        if private is None:
            raise Refused(_("This server's cluster has no private network."), "invalid", 400,
                          field="private_network")
        allocate(server, private, 4, 1)


def take_specific(server: VirtualServer, pool: IpPool, address: str) -> IpAddress:
    """Give `server` exactly `address` of `pool` (an admin's choice)."""
    try:
        ordinal = int(ipaddress.ip_address(address))
    except ValueError:
        raise Refused(_("Not an IP address."), "invalid", 400, field="address")
    pool = IpPool.objects.select_for_update().get(pk=pool.pk)
    start, end = pool.bounds()
    if not start <= ordinal <= end or (ordinal - start) % pool.step():
        raise Refused(_("%(a)s is not in the range of pool %(p)s.") % {"a": address, "p": pool.name}, "invalid", 400,
                      field="address")
    if ordinal in pool.excluded_ordinals():
        raise Refused(_("%(a)s is excluded from pool %(p)s.") % {"a": address, "p": pool.name}, "address_excluded",
                      409, field="address")
    if ordinal in _taken(pool):
        raise Refused(_("%(a)s is in use or in quarantine.") % {"a": address}, "address_taken", 409, field="address")
    ServerNic.objects.get_or_create(server=server, network=pool.network)
    return _take(pool, server, ordinal)


def release(addresses) -> int:
    """Addresses go back to their pools (after the pool's quarantine)."""
    return addresses.update(server=None, released_at=timezone.now())


def usage(pool: IpPool) -> dict:
    cutoff = timezone.now() - timedelta(minutes=pool.quarantine_minutes)
    rows = IpAddress.objects.filter(pool=pool)
    used = rows.filter(server__isnull=False).count()
    quarantined = rows.filter(server__isnull=True, released_at__gte=cutoff).count()
    total = pool.size()
    return {"total": total, "used": used, "quarantined": quarantined, "free": max(total - used - quarantined, 0)}

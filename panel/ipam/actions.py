"""What admins (and owners, for reverse DNS) do to addresses; each change that affects a
server's NICs runs a `network_update` operation on it."""

from django.db import transaction
from django.utils.translation import gettext as _

from panel.accounts import audit
from panel.accounts.tenancy import Actor
from panel.ipam import allocation
from panel.ipam.models import IpAddress, IpPool
from panel.operations import hand_over, new_operation
from panel.refusals import Refused
from panel.vps.models import Operation, VirtualServer


def _update_network(actor: Actor, server: VirtualServer) -> Operation | None:
    """Queue the NIC update on a server that exists on a node (serialized like other operations)."""
    if server.node_id is None or server.state in ("creating", "deleting"):
        return None
    op = new_operation(actor, Operation.Kind.NETWORK_UPDATE, server=server)
    hand_over(op)
    return op


def add_address(actor: Actor, server_id: int, pool: IpPool, address: str = "") -> IpAddress:
    """An extra address for a server: the next free one of `pool`, or exactly `address`."""
    with transaction.atomic():
        server = VirtualServer.objects.select_for_update().select_related("node").get(pk=server_id)
        if server.node_id and server.node.cluster_id != pool.network.cluster_id:
            raise Refused(_("That pool serves another cluster."), "invalid", 400, field="pool")
        if address:
            row = allocation.take_specific(server, pool, address)
        else:
            row = allocation.allocate(server, pool.network, pool.version, 1)[0]
            if row.pool_id != pool.pk:  # another pool of the network had the free address
                raise Refused(_("Pool %(name)s is exhausted.") % {"name": pool.name}, "pool_exhausted", 409, field="pool")
        _update_network(actor, server)
        audit.record(actor, "ip.add", row, server=server.id, customer_id=server.customer_id)
    return row


def move_address(actor: Actor, address_id: int, server_id: int) -> IpAddress:
    with transaction.atomic():
        row = IpAddress.objects.select_for_update().select_related("pool__network", "server").get(pk=address_id)
        target = VirtualServer.objects.select_for_update().select_related("node").get(pk=server_id)
        if target.node_id and target.node.cluster_id != row.pool.network.cluster_id:
            raise Refused(_("The server is in another cluster than this address's network."), "invalid", 400,
                          field="server")
        source = row.server
        from panel.vps.models import ServerNic

        ServerNic.objects.get_or_create(server=target, network=row.pool.network)
        row.server, row.ptr = target, ""
        row.save(update_fields=["server", "ptr"])
        for server in {s for s in (source, target) if s is not None}:
            _update_network(actor, server)
        audit.record(actor, "ip.move", row, old_server=source.id if source else None, server=target.id,
                     customer_id=target.customer_id)
    return row


def remove_address(actor: Actor, address_id: int) -> None:
    with transaction.atomic():
        row = IpAddress.objects.select_for_update().select_related("server").get(pk=address_id)
        server = row.server
        allocation.release(IpAddress.objects.filter(pk=row.pk))
        if server is not None:
            _update_network(actor, server)
        audit.record(actor, "ip.remove", row, server=server.id if server else None,
                     customer_id=server.customer_id if server else None)


def delete_pool(pool: IpPool) -> None:
    """Delete a pool that its `delete_refusal()` lets go: its addresses in quarantine go with it."""
    with transaction.atomic():
        pool.addresses.filter(server__isnull=True).delete()
        pool.delete()

"""What admins do to nodes: add (and install), re-install, accept a new host key,
maintenance, remove. Each validates first, then records the audit entry; slow work is an
Operation for the worker."""

from django.db import IntegrityError, transaction
from django.utils.translation import gettext as _

from nodes.models import Cluster, Node
from nodes.hostkeys import fingerprint
from nodes.sshfiles import node_uri
from panel.accounts import audit
from panel.accounts.tenancy import Actor
from panel.crypto import encrypt
from panel.operations import hand_over, new_operation
from panel.refusals import Refused
from panel.vps.models import Operation


def _install_operation(actor: Actor, node: Node, params: dict) -> Operation:
    op = new_operation(actor, Operation.Kind.NODE_INSTALL, node=node, params=params)
    hand_over(op)
    return op


def add_node(actor: Actor, *, cluster: Cluster, address: str, ssh_port: int = 22, ssh_user: str = "root",
             ssh_password: str = "", ssh_private_key: str = "", name: str = "") -> tuple[Node, Operation]:
    """Register a node and start its install. The same address and port twice is refused."""
    name = name or address
    if Node.objects.filter(address=address, ssh_port=ssh_port).exists():
        raise Refused(_("A node at %(address)s:%(port)s is already registered.") % {"address": address, "port": ssh_port},
                      "node_exists", 409, field="address")
    if Node.objects.filter(name=name).exists():
        raise Refused(_("A node named %(name)s exists.") % {"name": name}, "node_exists", 409, field="name")
    secret, auth = (ssh_password, "password") if ssh_password else (ssh_private_key, "key")
    try:
        with transaction.atomic():
            node = Node.objects.create(name=name, cluster=cluster, address=address, ssh_port=ssh_port,
                                       ssh_user=ssh_user, uri=node_uri(address, ssh_port, ssh_user),
                                       state=Node.State.INSTALLING, storage_dir="")
            # The credential travels to the worker encrypted and is dropped after first use.
            op = _install_operation(actor, node, {"auth": auth, "secret": encrypt(secret), "first_install": True})
            audit.record(actor, "node.add", node, address=address, port=ssh_port, cluster=cluster.name)
    except IntegrityError:  # a concurrent add of the same node won the race
        raise Refused(_("A node at %(address)s:%(port)s is already registered.") % {"address": address, "port": ssh_port},
                      "node_exists", 409, field="address")
    return node, op


def reinstall_node(actor: Actor, node_id: int) -> Operation:
    with transaction.atomic():
        node = Node.objects.select_for_update().get(pk=node_id)
        if not node.address:
            raise Refused(_("The panel's own host is not installed over SSH."), "not_remote", 409)
        op = _install_operation(actor, node, {})
        audit.record(actor, "node.install", node)
    return op


def accept_host_key(actor: Actor, node_id: int, offered_fingerprint: str) -> Node:
    """Trust the key the node now offers, if it is the one the admin checked."""
    with transaction.atomic():
        node = Node.objects.select_for_update().get(pk=node_id)
        if not node.offered_host_key:
            raise Refused(_("The node offers no new host key."), "no_offered_key", 409)
        if fingerprint(node.offered_host_key) != offered_fingerprint.strip():
            raise Refused(_("That fingerprint is not the offered key's."), "fingerprint_mismatch", 409,
                          field="fingerprint")
        old = node.host_key_fingerprint
        node.host_key, node.offered_host_key = node.offered_host_key, ""
        node.save(update_fields=["host_key", "offered_host_key"])
        audit.record(actor, "node.accept_host_key", node, old=old, new=offered_fingerprint)
    from nodes.sshfiles import write_client_files

    write_client_files()
    return node


def set_maintenance(actor: Actor, node_id: int, enabled: bool) -> Node:
    with transaction.atomic():
        node = Node.objects.select_for_update().get(pk=node_id)
        if enabled and node.state != Node.State.MAINTENANCE:
            node.state = Node.State.MAINTENANCE
        elif not enabled and node.state == Node.State.MAINTENANCE:
            node.state = Node.State.OFFLINE  # the monitor's next check sets the real state
        node.save(update_fields=["state"])
        audit.record(actor, "node.maintenance", node, enabled=enabled)
    return node


def remove_node(actor: Actor, node_id: int) -> None:
    """Remove a node without servers: its records go, and the panel's key leaves the node."""
    with transaction.atomic():
        node = Node.objects.select_for_update().get(pk=node_id)
        if node.servers.exists():
            raise Refused(_("The node still has servers; move or delete them first."), "node_has_servers", 409)
        if node.operations.filter(status__in=Operation.ACTIVE).exists():
            raise Refused(_("An operation is already running on this node."), "operation_in_progress", 409)
        audit.record(actor, "node.remove", node, address=node.address)
        address, port, user, host_key, uri = node.address, node.ssh_port, node.ssh_user, node.host_key, node.uri
        node.delete()
    from nodes.connection import forget
    from nodes.sshfiles import write_client_files

    forget(uri)
    if address and host_key:
        _remove_panel_key(address, port, user, host_key)
    write_client_files()


def _remove_panel_key(address: str, port: int, user: str, host_key: str) -> None:
    """Best effort: a node that is down keeps the key until someone removes it by hand."""
    from nodes.ssh import NodeShell, SshError, panel_identity

    public = panel_identity()[1]
    try:
        with NodeShell(address, port, user, host_key) as shell:
            shell.script('f=~/.ssh/authorized_keys; [ -f "$f" ] || exit 0; grep -vxF "$1" "$f" > "$f.panel-tmp"; '
                         'mv "$f.panel-tmp" "$f"; chmod 600 "$f"', public)
    except SshError:
        pass



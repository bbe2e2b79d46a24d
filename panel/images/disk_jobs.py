"""Data disks: the requests that add, grow and delete one, and the worker's jobs that do it.

A request checks everything before any side effect (the plan's count and total GiB, a free
name, the server's and its node's state), records the row (state "creating" or "deleting")
and the audit entry, takes the node's capacity and hands the operation to the worker, like
panel/vps/lifecycle.py. The plan bounds everyone, the provider too: it is what the server was
sold with (change the plan to give more).

The jobs hot-plug on a running server (nodes/libvirt_disks.py) and change only the definition
of a stopped one. A delete asks the guest to release the disk and waits for it; a guest that
does not is reported and the disk stays, attached and whole. DELETE detaches and deletes in
one operation: there is no detached-but-kept state (a disk kept off its server would need
its own quota and owner; a backup is the way to keep its data).
"""

import re

from django.conf import settings
from django.db import transaction
from django.utils.translation import gettext as _

from nodes import placement
from nodes.domain_xml import Disk
from nodes.driver import DomainState, Driver, DriverError
from nodes.models import Node
from panel.accounts import audit
from panel.accounts.tenancy import Actor
from panel.images.disks import TARGETS, DataDisk
from panel.operations import hand_over, new_operation
from panel.refusals import Refused
from panel.runner import Step, for_customer
from panel.vps.domain import volume_path
from panel.vps.models import Operation, ServerState, VirtualServer
from panel.vps.server_jobs import settle_state

ADD, GROW, DELETE = Operation.Kind.DISK_ADD, Operation.Kind.DISK_GROW, Operation.Kind.DISK_DELETE
# A disk is plugged into a running guest or into a stopped server's definition.
CHANGEABLE = frozenset({ServerState.RUNNING, ServerState.STOPPED})
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_DISK_GIB = 16384


def device(disk: DataDisk) -> Disk:
    return Disk(path=volume_path(disk.storage, disk.volume), target=disk.target)


def _server(actor: Actor, server_id) -> VirtualServer:
    """The server, row-locked, in a state and on a node where its disks can change; else Refused."""
    server = actor.get_or_404(VirtualServer.objects.select_for_update().select_related("plan", "node", "storage"),
                              pk=server_id)
    if server.state not in CHANGEABLE:
        raise Refused(_("Cannot change the disks of a server that is %(state)s.")
                      % {"state": server.get_state_display().lower()}, "invalid_state")
    if server.node is None or server.node.state != Node.State.ONLINE:
        raise Refused(_("The server's node is not online; its disks cannot change now."), "node_unavailable")
    return server


def _size(value, field: str = "size_gib") -> int:
    try:
        size = int(value)
    except (TypeError, ValueError):
        size = 0
    if not 1 <= size <= MAX_DISK_GIB or str(value).strip() != str(size):
        raise Refused(_("The size is a whole number of GiB from 1 to %(max)s.") % {"max": MAX_DISK_GIB},
                      "invalid", 400, field=field)
    return size


def _check_plan(server: VirtualServer, count: int, total_gib: int) -> None:
    plan = server.plan
    if count > plan.data_disks:
        raise Refused(_("The plan %(plan)s allows %(n)s data disk(s).") % {"plan": plan.name, "n": plan.data_disks},
                      "data_disk_limit", 409)
    if total_gib > plan.data_disk_gib:
        raise Refused(_("The plan %(plan)s allows %(gib)s GiB of data disks in all; this would make %(total)s GiB.")
                      % {"plan": plan.name, "gib": plan.data_disk_gib, "total": total_gib}, "data_disk_limit", 409,
                      field="size_gib")


def _disk(server: VirtualServer, disk_id) -> DataDisk:
    disk = DataDisk.objects.select_related("storage").filter(
        server=server, pk=disk_id if str(disk_id).isdigit() else -1).first()
    if disk is None:
        raise Refused(_("The server has no such data disk."), "not_found", 404)
    if disk.state != DataDisk.State.ATTACHED:
        raise Refused(_("The disk is %(state)s.") % {"state": disk.get_state_display().lower()}, "invalid_state")
    return disk


def request_add(actor: Actor, server_id, name: str, size_gib) -> Operation:
    """Add a data disk of `size_gib` named `name` to the server (hot-plugged when it runs)."""
    name = str(name or "").strip()
    if not NAME.match(name):
        raise Refused(_("A disk's name is 1 to 64 letters, digits, dots, dashes or underscores."), "invalid", 400,
                      field="name")
    size = _size(size_gib)
    with transaction.atomic():
        server = _server(actor, server_id)
        disks = list(DataDisk.objects.filter(server=server))
        if any(d.name == name for d in disks):
            raise Refused(_("The server already has a disk named %(name)s.") % {"name": name}, "name_taken", 409,
                          field="name")
        _check_plan(server, len(disks) + 1, sum(d.size_gib for d in disks) + size)
        target = next(t for t in TARGETS if t not in {d.target for d in disks})
        op = new_operation(actor, ADD, server=server)
        disk = DataDisk.objects.create(server=server, name=name, target=target, size_gib=size,
                                       storage=server.storage, state=DataDisk.State.CREATING)
        op.params = {"disk": disk.pk, "name": name, "target": target, "size_gib": size}
        op.save(update_fields=["params"])
        Node.objects.select_for_update().filter(pk=server.node_id).first()
        placement.adjust(server.node_id, 0, 0, size)
        audit.record(actor, "server.disk_add", server, operation=op.id, disk=name, size_gib=size)
        hand_over(op)
    return op


def request_grow(actor: Actor, server_id, disk_id, size_gib) -> Operation:
    """Grow a data disk to `size_gib` (never smaller: a guest's file system does not shrink)."""
    size = _size(size_gib)
    with transaction.atomic():
        server = _server(actor, server_id)
        disk = _disk(server, disk_id)
        if size <= disk.size_gib:
            raise Refused(_("A disk only grows: %(name)s has %(gib)s GiB; ask for more.")
                          % {"name": disk.name, "gib": disk.size_gib}, "invalid", 400, field="size_gib")
        others = sum(d.size_gib for d in DataDisk.objects.filter(server=server).exclude(pk=disk.pk))
        _check_plan(server, 0, others + size)
        op = new_operation(actor, GROW, server=server,
                           params={"disk": disk.pk, "name": disk.name, "from_gib": disk.size_gib, "size_gib": size})
        Node.objects.select_for_update().filter(pk=server.node_id).first()
        placement.adjust(server.node_id, 0, 0, size - disk.size_gib)
        audit.record(actor, "server.disk_grow", server, operation=op.id, disk=disk.name, size_gib=size)
        hand_over(op)
    return op


def request_delete(actor: Actor, server_id, disk_id) -> Operation:
    """Detach a data disk (the guest must release it) and delete its volume."""
    with transaction.atomic():
        server = _server(actor, server_id)
        disk = _disk(server, disk_id)
        op = new_operation(actor, DELETE, server=server, params={"disk": disk.pk, "name": disk.name})
        disk.state = DataDisk.State.DELETING
        disk.save(update_fields=["state"])
        audit.record(actor, "server.disk_delete", server, operation=op.id, disk=disk.name)
        hand_over(op)
    return op


# -- the worker's jobs ---------------------------------------------------------------------------
def _running(server: VirtualServer, driver: Driver) -> bool:
    return driver.state(server.domain_name) == DomainState.RUNNING


def add(step: Step, server: VirtualServer, driver: Driver) -> None:
    disk = DataDisk.objects.select_related("storage").get(pk=step.op.params["disk"])
    step(20, f"creating the {disk.size_gib} GiB volume {disk.volume}", customer=f"creating the {disk.size_gib} GiB disk")
    driver.create_volume(disk.storage.pool_name, disk.volume, disk.size_gib)
    running = _running(server, driver)
    step(60, f"plugging it in as {disk.target}" + (" (live)" if running else ""), customer=True)
    live = driver.attach_disk(server.domain_name, device(disk))
    disk.state, disk.error = DataDisk.State.ATTACHED, ""
    disk.save(update_fields=["state", "error"])
    step(90, f"the guest sees {disk.target} now" if live else f"the server has {disk.target} from its next start",
         customer=True)


def add_failed(op: Operation, server: VirtualServer, driver: Driver) -> None:
    """A failed add leaves nothing: the device, the volume, the row and the capacity go."""
    disk = DataDisk.objects.select_related("storage").filter(pk=op.params.get("disk")).first()
    if disk is not None:
        try:
            driver.detach_disk(server.domain_name, device(disk), settings.DISK_DETACH_TIMEOUT_SECONDS)
            driver.delete_volume(disk.storage.pool_name, disk.volume)
        except DriverError:
            disk.error = op.customer_error
            disk.save(update_fields=["error"])  # the node did not answer: the row says what is there
        else:
            with transaction.atomic():
                placement.release(server.node_id, 0, 0, disk.size_gib)
                disk.delete()
    settle_state(op, server, driver)


def grow(step: Step, server: VirtualServer, driver: Driver) -> None:
    disk = DataDisk.objects.select_related("storage").get(pk=step.op.params["disk"])
    size = step.op.params["size_gib"]
    running = _running(server, driver)
    step(30, f"growing {disk.name} ({disk.target}) from {disk.size_gib} to {size} GiB", customer=True)
    live = driver.grow_volume(disk.storage.pool_name, disk.volume, size,
                              domain_name=server.domain_name if running else None)
    disk.size_gib = size
    disk.save(update_fields=["size_gib"])
    step(90, "the running guest sees the larger disk now; grow its file system inside the guest" if live else
         "the disk is larger; the guest sees it at its next start", customer=True)


def grow_failed(op: Operation, server: VirtualServer, driver: Driver) -> None:
    disk = DataDisk.objects.filter(pk=op.params.get("disk")).first()
    if disk is None or disk.size_gib != op.params["size_gib"]:  # not grown: its capacity goes back
        placement.release(server.node_id, 0, 0, op.params["size_gib"] - op.params["from_gib"])
    settle_state(op, server, driver)


def delete(step: Step, server: VirtualServer, driver: Driver) -> None:
    disk = DataDisk.objects.select_related("storage").get(pk=step.op.params["disk"])
    timeout = settings.DISK_DETACH_TIMEOUT_SECONDS
    if _running(server, driver):
        step(20, f"asking the guest to release {disk.target} (up to {timeout} s)", customer=True)
    try:
        driver.detach_disk(server.domain_name, device(disk), timeout, step.heartbeat)
    except DriverError as exc:
        raise for_customer(exc) if "did not release" in str(exc) else exc
    step(60, f"deleting the volume {disk.volume}", customer="deleting the disk")
    driver.delete_volume(disk.storage.pool_name, disk.volume)
    with transaction.atomic():
        placement.release(server.node_id, 0, 0, disk.size_gib)
        disk.delete()


def delete_failed(op: Operation, server: VirtualServer, driver: Driver) -> None:
    """The disk stays as it was: attached, its data whole; the row says why it is still there."""
    DataDisk.objects.filter(pk=op.params.get("disk")).update(state=DataDisk.State.ATTACHED,
                                                             error=op.customer_error)
    settle_state(op, server, driver)


def remove_with_server(step: Step, server: VirtualServer, driver: Driver) -> None:
    """A server's delete, after its domain is gone: its data disks' volumes, rows and capacity."""
    disks = list(DataDisk.objects.select_related("storage").filter(server=server))
    if disks:
        step(65, f"removing {len(disks)} data disk(s)", customer=True)
    for disk in disks:
        driver.delete_volume(disk.storage.pool_name, disk.volume)
        with transaction.atomic():
            placement.release(server.node_id, 0, 0, disk.size_gib)
            disk.delete()

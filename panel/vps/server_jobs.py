"""The worker's jobs on one server, each through the driver of the server's node.

`ServerJob` is the runner's job for every server operation: it loads the server, runs the
kind's work function, and on a failure makes the server's state say what the node really has;
at the end it publishes the new state and raises the operation's events. The work functions
take (step, server, driver) and are safe to run twice. Installs are in installing.py.
"""

from functools import partial
from typing import Callable

from django.conf import settings
from django.db import transaction

from nodes import placement
from nodes.connection import driver_for
from nodes.driver import DomainState, Driver, DriverError
from nodes.models import Node, Storage
from panel import progress
from panel.crypto import decrypt
from panel.events import emit
from panel.images.models import Snapshot
from panel.ipam.allocation import release
from panel.ipam.models import IpAddress
from panel.metrics.collector import collect_server
from panel.runner import Job, Step, for_customer
from panel.vps.domain import disk_path, domain_spec
from panel.vps.models import Operation, Plan, ServerState, VirtualServer

Kind = Operation.Kind
Work = Callable[[Step, VirtualServer, Driver], None]


def settle_state(op: Operation, server: VirtualServer, driver: Driver) -> None:
    """After a failure: make the server's state say what the node really has."""
    try:
        state = driver.state(server.domain_name)
    except DriverError:
        state = None
    if server.state == ServerState.SUSPENDED or (server.state == ServerState.DELETING and state is not None):
        return
    if state == DomainState.RUNNING:
        server.set_state(ServerState.RUNNING)
    elif state == DomainState.SHUTOFF and server.state != ServerState.CREATING:
        server.set_state(ServerState.STOPPED)
    else:
        server.set_state(ServerState.ERROR)


class ServerJob(Job):
    """An operation on one server: `work` does it; `settle` repairs the state after a failure."""

    expected = (DriverError,)

    def __init__(self, op: Operation, work: Work, settle=settle_state):
        super().__init__(op)
        self.work, self.settle = work, settle
        self.server = VirtualServer.objects.select_related("node", "storage").filter(pk=op.server_id).first()
        self.state_before = self.server.state if self.server is not None else None

    @classmethod
    def of(cls, work: Work, settle=settle_state):
        """The job table's entry for a kind whose work is `work`."""
        return partial(cls, work=work, settle=settle)

    @property
    def exists(self) -> bool:
        return self.server is not None and self.server.pk is not None

    def run(self, step: Step) -> None:
        if self.server is None:
            raise for_customer(DriverError("the server no longer exists"))
        driver = driver_for(self.server.node.uri)
        step(5, f"{self.op.kind} on node {self.server.node.name}", customer=f"{self.op.kind}: started")
        self.work(step, self.server, driver)

    def failed(self, exc: Exception) -> None:
        if self.exists:
            self.server.error = self.op.customer_error  # the server's customer reads it; the log has the rest
            self.server.save(update_fields=["error"])
            self.settle(self.op, self.server, driver_for(self.server.node.uri))

    def ended(self) -> None:
        progress.publish(self.op, self.server.state if self.exists else None)
        tell(self.op, self.server if self.exists else None, self.state_before)


# Events for billing systems (API.md "Webhooks"), by what an operation did.
EVENT_OF_SUCCESS = {Kind.DELETE: "server.deleted", Kind.SUSPEND: "server.suspended",
                    Kind.UNSUSPEND: "server.unsuspended"}


def tell(op: Operation, server: VirtualServer | None, state_before: str | None) -> None:
    """Raise the events of an ended server operation (`server` None: it is gone)."""
    about = {"server": op.server_id, "hostname": op.target_repr, "operation": op.id}
    if op.status == Operation.Status.SUCCEEDED and op.kind in EVENT_OF_SUCCESS:
        emit(EVENT_OF_SUCCESS[op.kind], customer_id=op.customer_id, **about,
             **({"reason": server.suspend_reason} if op.kind == Kind.SUSPEND and server else {}))
    if op.status == Operation.Status.FAILED and op.kind in (Kind.CREATE, Kind.REINSTALL):
        emit("server.failed", customer_id=op.customer_id, **about, error=op.customer_error)
    if server is not None and server.state != state_before:
        emit("server.state_changed", customer_id=op.customer_id, **about, state=server.state, previous=state_before)
    emit("operation.finished", customer_id=op.customer_id, **about, kind=op.kind, status=op.status,
         error=op.customer_error)


# -- power ---------------------------------------------------------------------------------------
def start(step: Step, server: VirtualServer, driver: Driver) -> None:
    if step.op.params.get("define"):  # the boot media changed (panel/images/isos.py)
        step(15, f"defining the domain to boot {step.op.params.get('boot', 'normal')}", customer=True)
        driver.define(domain_spec(server, disk_path(server, driver)))
    step(30, "starting", customer=True)
    driver.start(server.domain_name)
    server.set_state(ServerState.RUNNING, error="")


def _power_off(step: Step, server: VirtualServer, driver: Driver, force: bool) -> None:
    collect_server(server, driver)  # the usage since the last sample; never raises
    timeout = 0 if force else step.op.params.get("timeout", settings.STOP_TIMEOUT_SECONDS)
    step(20, "forcing power off" if force else f"asking the guest to shut down (up to {timeout} s)", customer=True)

    def tick(elapsed: float) -> None:
        step.op.progress = 20 + int(50 * elapsed / max(timeout, 1))
        step.heartbeat()

    if driver.stop(server.domain_name, timeout, tick) and not force:
        step(75, f"the guest did not shut down within {timeout} s; forced off", customer=True)


def stop(step: Step, server: VirtualServer, driver: Driver) -> None:
    _power_off(step, server, driver, bool(step.op.params.get("force")))
    server.set_state(ServerState.STOPPED, error="")


def reboot(step: Step, server: VirtualServer, driver: Driver) -> None:
    before = driver.info(server.domain_name)
    _power_off(step, server, driver, bool(step.op.params.get("force")))
    step(80, "starting again", customer=True)
    driver.start(server.domain_name)
    after = driver.info(server.domain_name)
    if after is None or after.state != DomainState.RUNNING or (before and after.boot_id == before.boot_id):
        raise for_customer(DriverError("the domain did not come back after the reboot"),
                           "the server did not come back after the reboot")
    server.set_state(ServerState.RUNNING, error="")


def suspend(step: Step, server: VirtualServer, driver: Driver) -> None:
    _power_off(step, server, driver, force=False)
    server.set_state(ServerState.SUSPENDED)


def unsuspend(step: Step, server: VirtualServer, driver: Driver) -> None:
    if server.state_before_suspend == ServerState.RUNNING:
        step(40, "starting (it was running when suspended)", customer=True)
        driver.start(server.domain_name)
        target = ServerState.RUNNING
    else:
        target = ServerState.STOPPED
    server.set_state(target, suspend_reason="", state_before_suspend="")


# -- delete --------------------------------------------------------------------------------------
def remove_domain(step: Step, server: VirtualServer, driver: Driver) -> None:
    """The first part of a delete: the domain and its disks leave the node."""
    step(20, "removing the domain", customer="removing the server")
    driver.undefine(server.domain_name)
    step(60, "removing the disk", customer=True)
    driver.delete_volume(server.storage.pool_name, server.disk_volume)
    driver.delete_volume(server.storage.pool_name, server.seed_volume)
    Snapshot.discard_all(server, driver)  # their overlays and memory files


def delete_record(server: VirtualServer) -> None:
    """Remove a server whose domain and disk are gone; its capacity and addresses go back."""
    with transaction.atomic():
        placement.release(server.node_id, server.vcpus, server.ram_mib, server.disk_gib)
        release(IpAddress.objects.filter(server=server))
        server.delete()


# -- configuration -------------------------------------------------------------------------------
def network_update(step: Step, server: VirtualServer, driver: Driver) -> None:
    """Addresses changed: redefine the domain (next boot) and update its NICs' filters live."""
    step(30, "updating the domain's network settings", customer="updating the server's network settings")
    spec = domain_spec(server, disk_path(server, driver))
    driver.define(spec)
    if driver.state(server.domain_name) == DomainState.RUNNING:
        for nic in spec.nics:
            driver.update_nic(server.domain_name, nic)
        step(70, "anti-spoofing filters updated live; the guest configures new addresses itself", customer=True)


def migrate(step: Step, server: VirtualServer, driver: Driver) -> None:
    collect_server(server, driver)  # the usage since the last sample; never raises
    dest = Node.objects.get(pk=step.op.params["node"])
    live = step.op.params.get("live", True)
    dest_driver = driver_for(dest.uri)
    try:
        step(15, f"preparing storage {server.storage.name} on {dest}")
        dest_driver.ensure_pool(server.storage.pool_name, server.storage.path)
        spec = domain_spec(server, disk_path(server, dest_driver), node=dest)
        if driver.checkpoints(server.domain_name):
            # Backup checkpoints stay with the source's libvirt: the next backup is a full one.
            driver.drop_checkpoints(server.domain_name)
            step(25, "backup checkpoints dropped: the next backup after the move is a full one", customer=True)
        if live:
            step(30, f"live migration to {dest}", customer="live migration to another node")
            driver.migrate(server.domain_name, dest_driver, dest.address or "127.0.0.1", spec.to_xml(),
                           unsafe=server.storage.kind == Storage.Kind.DIR)
        else:
            step(30, f"moving the stopped server's definition to {dest}",
                 customer="moving the stopped server to another node")
            dest_driver.define(spec)
            driver.undefine(server.domain_name)
    except Exception:
        placement.release(dest.pk, server.vcpus, server.ram_mib, server.disk_gib)
        server.set_state(step.op.params.get("state", ServerState.RUNNING))
        raise
    source = server.node_id
    server.node = dest
    server.state = ServerState.RUNNING if live else ServerState.STOPPED
    server.save(update_fields=["node", "state", "updated_at"])
    placement.release(source, server.vcpus, server.ram_mib, server.disk_gib)
    step(95, f"now on {dest}", customer="moved")


def change_plan(step: Step, server: VirtualServer, driver: Driver) -> None:
    """Apply a new plan: grow the disk, redefine the domain with the new vCPUs and RAM (the
    next boot), and apply them live where the running domain's maximums allow. The params'
    `applies` says, per size, "now", "next_boot" or "unchanged". The capacity was taken by
    the request; what is not applied when this fails is given back."""
    params = step.op.params
    before, after = params["before"], params["after"]
    delta = {k: after[k] - before[k] for k in after}
    running = driver.state(server.domain_name) == DomainState.RUNNING
    applies = params["applies"] = {k: "unchanged" for k in after}  # filled in as the work goes on
    disk_done = resources_done = False
    try:
        if delta["disk_gib"] > 0:
            step(20, f"growing the disk from {before['disk_gib']} to {after['disk_gib']} GiB", customer=True)
            live_disk = driver.grow_volume(server.storage.pool_name, Snapshot.top_volume(server), after["disk_gib"],
                                           domain_name=server.domain_name if running else None)
            disk_done = True
            server.disk_gib = after["disk_gib"]
            server.save(update_fields=["disk_gib", "updated_at"])
            applies["disk_gib"] = "now" if live_disk else "next_boot"
            step(40, "the running guest sees the larger disk now; its partition and file system are grown "
                     "inside the guest (cloud-init's growpart does it at boot)" if live_disk else
                     "the disk is larger; the guest sees it at its next boot", customer=True)
        old_bandwidth = server.plan.bandwidth_mbit
        server.plan = Plan.objects.get(pk=params["plan"])
        server.vcpus, server.ram_mib = after["vcpus"], after["ram_mib"]
        step(50, f"redefining the domain with {after['vcpus']} vCPUs and {after['ram_mib']} MiB RAM", customer=True)
        spec = domain_spec(server, disk_path(server, driver))
        driver.define(spec)
        resources_done = True
        server.save(update_fields=["plan", "vcpus", "ram_mib", "updated_at"])
    except Exception:
        placement.adjust(server.node_id, 0 if resources_done else -delta["vcpus"],
                         0 if resources_done else -delta["ram_mib"], 0 if disk_done else -delta["disk_gib"])
        raise
    if delta["vcpus"] or delta["ram_mib"]:
        live = driver.set_resources(server.domain_name, after["vcpus"], after["ram_mib"], live=running)
        for k in ("vcpus", "ram_mib"):
            if delta[k]:
                applies[k] = "now" if live else "next_boot"
        if live:
            step(80, "vCPUs and RAM applied live", customer=True)
        elif running:
            step(80, "vCPUs and RAM: the running domain's maximum does not allow the change live; "
                     "it applies at the next boot (a reboot from the panel, not from inside the guest)", customer=True)
        else:
            step(80, "vCPUs and RAM apply at the next boot", customer=True)
    if running and server.plan.bandwidth_mbit != old_bandwidth:
        for nic in spec.nics:
            driver.update_nic(server.domain_name, nic)
        step(90, "the bandwidth limit is updated live", customer=True)


def reset_password(step: Step, server: VirtualServer, driver: Driver) -> None:
    """Set root's password through the guest agent; without one, fail and say so."""
    params = step.op.params
    # Used once, then forgotten: a retried operation has no password left to set.
    password = decrypt(params.pop("secret", ""))
    Operation.objects.filter(pk=step.op.pk).update(params=params)
    if not password:
        params["applies"] = "agent_required"
        raise for_customer(DriverError("the new password is no longer available (the operation was interrupted); "
                                       "request it again"))
    user = params.get("user", "root")
    step(30, "asking the guest agent to set the password", customer=True)
    if not driver.set_user_password(server.domain_name, user, password):
        params["applies"] = "agent_required"
        raise for_customer(DriverError("the guest agent is not running in this server; reinstall or use the console "
                                       "to change the password"))
    params["applies"] = "now"
    step(90, f"the guest agent set {user}'s password", customer=True)

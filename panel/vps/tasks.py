"""The worker side of operations: each function takes an id and is safe to run twice."""

import logging
import time
import traceback
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from nodes.connection import driver_for
from nodes.domain_xml import Disk, DomainSpec, KernelBoot, Nic
from nodes.driver import DomainState, Driver, DriverError
from nodes import placement
from panel.crypto import decrypt
from panel.vps import progress
from panel.vps.models import Operation, ServerState, VirtualServer

log = logging.getLogger(__name__)
S = ServerState
K = Operation.Kind


class Step:
    """Writes an operation's progress, log and heartbeat as the work goes on."""

    def __init__(self, op: Operation):
        self.op = op

    def __call__(self, percent: int, message: str) -> None:
        now = timezone.now()
        self.op.progress = max(self.op.progress, min(percent, 100))
        self.op.log += f"{now:%H:%M:%S} {message}\n"
        self.op.heartbeat_at = now
        self.op.save(update_fields=["progress", "log", "heartbeat_at"])
        progress.publish(self.op)

    def heartbeat(self, _elapsed: float = 0) -> None:
        self.op.heartbeat_at = timezone.now()
        Operation.objects.filter(pk=self.op.pk).update(heartbeat_at=self.op.heartbeat_at, progress=self.op.progress)


def _set_state(server: VirtualServer, state: str, **fields) -> None:
    server.state = state
    for name, value in fields.items():
        setattr(server, name, value)
    server.save(update_fields=["state", "updated_at", *fields])


def nics_of(server: VirtualServer) -> tuple[list[Nic], list[str]]:
    """The server's NICs (in order: eth0, eth1, …) and the kernel arguments that tell the guest
    its addresses (`panel.ip=<dev>,<address/prefix>,<gateway>` and `panel.dns=`)."""
    from panel.ipam.models import IpAddress

    nics, args, dns = [], [], []
    # The plan's bandwidth in Mbit/s as libvirt's KiB/s (1 Mbit/s = 125 kB/s ≈ 122 KiB/s).
    kbytes = server.plan.bandwidth_mbit * 1000 // 8 * 1000 // 1024 if server.plan.bandwidth_mbit else 0
    for index, nic in enumerate(server.nics.select_related("network")):
        addresses = list(IpAddress.objects.filter(server=server, pool__network=nic.network).select_related("pool"))
        nics.append(Nic(bridge=nic.network.bridge, mac=nic.mac, ips=tuple(a.address for a in addresses),
                        average_kbytes=kbytes))
        gateways_given = set()
        for address in addresses:
            gateway = address.pool.gateway if address.version not in gateways_given else ""
            gateways_given.add(address.version)
            args.append(f"panel.ip=eth{index},{address.with_prefix},{gateway}")
            dns += [d for d in address.pool.dns_servers() if d not in dns]
    if dns:
        args.append("panel.dns=" + ",".join(dns))
    return nics, args


def domain_spec(server: VirtualServer, node=None, install: "InstallBoot | None" = None) -> DomainSpec:
    """The server's domain as `node` (default: its own) would run it: booting its installed
    system, or (with `install`) its template's installer. Creates the disk when it is missing."""
    from templates_os import provisioning
    from templates_os.repository import file_path

    node = node or server.node
    template = server.os_template
    if template is None:
        raise DriverError("the server has no OS template")
    boot = template.boot
    driver = driver_for(node.uri)
    backing = file_path(template, boot["image"]) if boot.get("image") else None
    disks = [Disk(path=driver.create_volume(server.storage.pool_name, server.disk_volume, server.disk_gib,
                                            backing=backing))]
    if install and install.seed_path:
        disks.append(Disk(path=install.seed_path, target="hdc", format="raw", device="cdrom"))
    kernel_boot = None
    key = "install_cmdline" if install else "cmdline"
    if boot.get("kernel") and boot.get(key):
        context = provisioning.boot_context(server, install.config_url if install else "")
        kernel_boot = KernelBoot(file_path(template, boot["kernel"]), file_path(template, boot["initrd"]),
                                 provisioning.render_cmdline(template, key, context))
    nics, _ = nics_of(server)
    return DomainSpec(
        name=server.domain_name,
        uuid=str(server.uuid),
        vcpus=server.vcpus,
        ram_mib=server.ram_mib,
        virt_type=node.virt_type or "qemu",
        disks=tuple(disks),
        kernel_boot=kernel_boot,
        nics=tuple(nics),
        serial_log=server.serial_log,
        # VNC listens only where the panel reaches it: the node's management address (or
        # loopback on the panel's own host), with the server's own password.
        vnc_listen=node.address or "127.0.0.1",
        vnc_password=decrypt(server.vnc_password),
        panel_instance=settings.PANEL_INSTANCE_ID,
        server_id=server.id,
    )


@dataclass(frozen=True)
class InstallBoot:
    config_url: str
    seed_path: str = ""


def _create(step: Step, server: VirtualServer, driver: Driver) -> None:
    step(10, f"preparing storage {server.storage.name} on the node")
    driver.ensure_pool(server.storage.pool_name, server.storage.path)
    _install(step, server, driver)


def _reinstall(step: Step, server: VirtualServer, driver: Driver) -> None:
    step(10, "powering off and removing the old disk")
    driver.destroy(server.domain_name)
    driver.delete_volume(server.storage.pool_name, server.disk_volume)
    driver.delete_volume(server.storage.pool_name, server.seed_volume)
    driver.drop_checkpoints(server.domain_name, metadata_only=True)  # their bitmaps were on that disk
    driver.ensure_pool(server.storage.pool_name, server.storage.path)
    _install(step, server, driver)


def _install(step: Step, server: VirtualServer, driver: Driver) -> None:
    """Boot the template's installer with a one-time config URL, wait for the call-back, then
    boot the installed system. The server's addresses stay what they are."""
    from panel.api.events import emit
    from templates_os import provisioning
    from templates_os.models import Installation
    from templates_os.seed import seed_iso

    installation = Installation.objects.select_related("template", "recipe").get(operation=step.op)
    template = installation.template
    if template is None or not template.valid:
        raise DriverError("the OS template is no longer available")
    token = provisioning.begin(installation)
    url = provisioning.config_url(server, token)
    seed = ""
    if template.metadata.get("seed") == "iso":
        step(20, "writing the cloud-init seed")
        seed = driver.upload_volume(server.storage.pool_name, server.seed_volume,
                                    seed_iso(provisioning.seed_files(server, installation, url)))
    what = "an overlay of the template's image" if template.boot.get("image") else "empty"
    step(30, f"creating a {server.disk_gib} GiB disk ({what})")
    spec = domain_spec(server, install=InstallBoot(url, seed))
    panel_at = url.split("/provision/")[0]
    step(40, f"booting the {template.name} installer ({spec.virt_type}); it fetches its config from {panel_at}")
    if not spec.nics:
        step(41, "warning: the server has no network card, so its installer cannot reach the panel "
                 "(give its cluster a network with an IP pool)")
    try:
        driver.define(spec)
        driver.start(server.domain_name)
    except DriverError:
        # A failed boot leaves nothing behind on the node.
        driver.undefine(server.domain_name)
        driver.delete_volume(server.storage.pool_name, server.disk_volume)
        driver.delete_volume(server.storage.pool_name, server.seed_volume)
        raise
    _set_state(server, S.INSTALLING)
    installation = _wait_for_callback(step, server, driver, installation)
    code = installation.recipe_exit_code
    recipe = f"; recipe {installation.recipe.slug} exited with {code}" if installation.recipe else ""
    step(85, f"install complete{recipe}")
    installed = domain_spec(server)
    if spec.kernel_boot and not installed.kernel_boot:
        step(88, "waiting for the installer to power off, then booting from disk")
        if driver.stop(server.domain_name, settings.STOP_TIMEOUT_SECONDS * 5, step.heartbeat):
            step(89, "the installer did not power off; forced")
        driver.define(installed)
        driver.start(server.domain_name)
    else:
        driver.define(installed)  # the next boot leaves out the installer's arguments and seed
    _set_state(server, S.RUNNING, error="")
    emit("server.active", customer_id=server.customer_id, server=server.id, hostname=server.hostname,
         os_template=template.slug, recipe=installation.recipe.slug if installation.recipe else None,
         recipe_exit_code=code)


def _wait_for_callback(step: Step, server: VirtualServer, driver: Driver, installation):
    from templates_os.models import Installation

    timeout = installation.template.install_timeout
    started, said_fetched, checked = time.monotonic(), False, 0.0
    while True:
        installation.refresh_from_db()
        elapsed = time.monotonic() - started
        if installation.config_served_at and not said_fetched:
            said_fetched = True
            step(55, f"the installer fetched its config from {installation.config_served_to}; installing")
        if installation.status == Installation.Status.DONE:
            return installation
        if elapsed - checked >= 5:
            checked = elapsed
            if driver.state(server.domain_name) != DomainState.RUNNING:
                raise DriverError("the installer stopped without calling back" +
                                  ("" if said_fetched else " (it never fetched its config)"))
        if elapsed > timeout:
            raise DriverError(f"no call-back from the installer within {timeout} s" +
                              ("" if said_fetched else "; it never fetched its config (can it reach the panel?)"))
        step.op.progress = min(80, 55 + int(25 * elapsed / timeout)) if said_fetched else 45
        step.heartbeat()
        time.sleep(0.25)  # one indexed row read: the call-back is noticed within a quarter second


def _start(step: Step, server: VirtualServer, driver: Driver) -> None:
    step(30, "starting")
    driver.start(server.domain_name)
    _set_state(server, S.RUNNING, error="")


def _power_off(step: Step, server: VirtualServer, driver: Driver, force: bool) -> None:
    from panel.usage.collector import collect_server
    collect_server(server, driver)  # the usage since the last sample; never raises
    timeout = 0 if force else step.op.params.get("timeout", settings.STOP_TIMEOUT_SECONDS)
    step(20, "forcing power off" if force else f"asking the guest to shut down (up to {timeout} s)")

    def tick(elapsed: float) -> None:
        step.op.progress = 20 + int(50 * elapsed / max(timeout, 1))
        step.heartbeat()

    if driver.stop(server.domain_name, timeout, tick) and not force:
        step(75, f"the guest did not shut down within {timeout} s; forced off")


def _stop(step: Step, server: VirtualServer, driver: Driver) -> None:
    _power_off(step, server, driver, bool(step.op.params.get("force")))
    _set_state(server, S.STOPPED, error="")


def _reboot(step: Step, server: VirtualServer, driver: Driver) -> None:
    before = driver.info(server.domain_name)
    _power_off(step, server, driver, bool(step.op.params.get("force")))
    step(80, "starting again")
    driver.start(server.domain_name)
    after = driver.info(server.domain_name)
    if after is None or after.state != DomainState.RUNNING or (before and after.boot_id == before.boot_id):
        raise DriverError("the domain did not come back after the reboot")
    _set_state(server, S.RUNNING, error="")


def _suspend(step: Step, server: VirtualServer, driver: Driver) -> None:
    _power_off(step, server, driver, force=False)
    _set_state(server, S.SUSPENDED)


def _unsuspend(step: Step, server: VirtualServer, driver: Driver) -> None:
    if server.state_before_suspend == S.RUNNING:
        step(40, "starting (it was running when suspended)")
        driver.start(server.domain_name)
        target = S.RUNNING
    else:
        target = S.STOPPED
    _set_state(server, target, suspend_reason="", state_before_suspend="")


def _delete(step: Step, server: VirtualServer, driver: Driver) -> None:
    from backup.retention import delete_server_backups

    step(20, "removing the domain")
    driver.undefine(server.domain_name)
    step(60, "removing the disk")
    driver.delete_volume(server.storage.pool_name, server.disk_volume)
    driver.delete_volume(server.storage.pool_name, server.seed_volume)
    if step.op.params.get("keep_backups"):
        step(80, "keeping the server's backups (keep_backups)")
    else:
        removed = delete_server_backups(server)
        step(80, f"removed {len(removed)} backup(s)")
    delete_record(server)


def delete_record(server: VirtualServer) -> None:
    """Remove a server whose domain and disk are gone; its capacity and addresses go back."""
    from panel.ipam.allocation import release
    from panel.ipam.models import IpAddress

    with transaction.atomic():
        placement.release(server.node_id, server.vcpus, server.ram_mib, server.disk_gib)
        release(IpAddress.objects.filter(server=server))
        server.delete()


def _network_update(step: Step, server: VirtualServer, driver: Driver) -> None:
    """Addresses changed: redefine the domain (next boot) and update its NICs' filters live."""
    step(30, "updating the domain's network settings")
    spec = domain_spec(server)
    driver.define(spec)
    if driver.state(server.domain_name) == DomainState.RUNNING:
        for nic in spec.nics:
            driver.update_nic(server.domain_name, nic)
        step(70, "anti-spoofing filters updated live; the guest configures new addresses itself")


def _migrate(step: Step, server: VirtualServer, driver: Driver) -> None:
    from nodes.models import Node, Storage

    from panel.usage.collector import collect_server
    collect_server(server, driver)  # the usage since the last sample; never raises
    dest = Node.objects.get(pk=step.op.params["node"])
    live = step.op.params.get("live", True)
    dest_driver = driver_for(dest.uri)
    try:
        step(15, f"preparing storage {server.storage.name} on {dest}")
        dest_driver.ensure_pool(server.storage.pool_name, server.storage.path)
        spec = domain_spec(server, node=dest)
        if driver.checkpoints(server.domain_name):
            # Backup checkpoints stay with the source's libvirt: the next backup is a full one.
            driver.drop_checkpoints(server.domain_name)
            step(25, "backup checkpoints dropped: the next backup after the move is a full one")
        if live:
            step(30, f"live migration to {dest}")
            driver.migrate(server.domain_name, dest_driver, dest.address or "127.0.0.1", spec.to_xml(),
                           unsafe=server.storage.kind == Storage.Kind.DIR)
        else:
            step(30, f"moving the stopped server's definition to {dest}")
            dest_driver.define(spec)
            driver.undefine(server.domain_name)
    except Exception:
        placement.release(dest.pk, server.vcpus, server.ram_mib, server.disk_gib)
        _set_state(server, step.op.params.get("state", S.RUNNING))
        raise
    source = server.node_id
    server.node = dest
    server.state = S.RUNNING if live else S.STOPPED
    server.save(update_fields=["node", "state", "updated_at"])
    placement.release(source, server.vcpus, server.ram_mib, server.disk_gib)
    step(95, f"now on {dest}")


def _change_plan(step: Step, server: VirtualServer, driver: Driver) -> None:
    """Apply a new plan: grow the disk, redefine the domain with the new vCPUs and RAM (the
    next boot), and apply them live where the running domain's maximums allow. The params'
    `applies` says, per size, "now", "next_boot" or "unchanged". The capacity was taken by
    the request; what is not applied when this fails is given back."""
    from panel.vps.lifecycle import _adjust_node
    from panel.vps.models import Plan

    params = step.op.params
    before, after = params["before"], params["after"]
    delta = {k: after[k] - before[k] for k in after}
    running = driver.state(server.domain_name) == DomainState.RUNNING
    applies = params["applies"] = {k: "unchanged" for k in after}  # filled in as the work goes on
    disk_done = resources_done = False
    try:
        if delta["disk_gib"] > 0:
            step(20, f"growing the disk from {before['disk_gib']} to {after['disk_gib']} GiB")
            live_disk = driver.grow_volume(server.storage.pool_name, server.disk_volume, after["disk_gib"],
                                           domain_name=server.domain_name if running else None)
            disk_done = True
            server.disk_gib = after["disk_gib"]
            server.save(update_fields=["disk_gib", "updated_at"])
            applies["disk_gib"] = "now" if live_disk else "next_boot"
            step(40, "the running guest sees the larger disk now; its partition and file system are grown "
                     "inside the guest (cloud-init's growpart does it at boot)" if live_disk else
                     "the disk is larger; the guest sees it at its next boot")
        old_bandwidth = server.plan.bandwidth_mbit
        server.plan = Plan.objects.get(pk=params["plan"])
        server.vcpus, server.ram_mib = after["vcpus"], after["ram_mib"]
        step(50, f"redefining the domain with {after['vcpus']} vCPUs and {after['ram_mib']} MiB RAM")
        spec = domain_spec(server)
        driver.define(spec)
        resources_done = True
        server.save(update_fields=["plan", "vcpus", "ram_mib", "updated_at"])
    except Exception:
        _adjust_node(server.node_id, 0 if resources_done else -delta["vcpus"],
                     0 if resources_done else -delta["ram_mib"], 0 if disk_done else -delta["disk_gib"])
        raise
    if delta["vcpus"] or delta["ram_mib"]:
        live = driver.set_resources(server.domain_name, after["vcpus"], after["ram_mib"], live=running)
        for k in ("vcpus", "ram_mib"):
            if delta[k]:
                applies[k] = "now" if live else "next_boot"
        if live:
            step(80, "vCPUs and RAM applied live")
        elif running:
            step(80, "vCPUs and RAM: the running domain's maximum does not allow the change live; "
                     "it applies at the next boot (a reboot from the panel, not from inside the guest)")
        else:
            step(80, "vCPUs and RAM apply at the next boot")
    if running and server.plan.bandwidth_mbit != old_bandwidth:
        for nic in spec.nics:
            driver.update_nic(server.domain_name, nic)
        step(90, "the bandwidth limit is updated live")


def _reset_password(step: Step, server: VirtualServer, driver: Driver) -> None:
    """Set root's password through the guest agent; without one, fail and say so."""
    params = step.op.params
    # Used once, then forgotten: a retried operation has no password left to set.
    password = decrypt(params.pop("secret", ""))
    Operation.objects.filter(pk=step.op.pk).update(params=params)
    if not password:
        params["applies"] = "agent_required"
        raise DriverError("the new password is no longer available (the operation was interrupted); request it again")
    user = params.get("user", "root")
    step(30, "asking the guest agent to set the password")
    if not driver.set_user_password(server.domain_name, user, password):
        params["applies"] = "agent_required"
        raise DriverError("the guest agent is not running in this server; reinstall or use the console to change "
                          "the password")
    params["applies"] = "now"
    step(90, f"the guest agent set {user}'s password")


def _backup(step: Step, server: VirtualServer, driver: Driver) -> None:
    from backup.taking import take

    take(step, server, driver)


def _restore(step: Step, server: VirtualServer, driver: Driver) -> None:
    from backup.restoring import restore

    restore(step, server, driver)


HANDLERS = {K.CREATE: _create, K.START: _start, K.STOP: _stop, K.REBOOT: _reboot,
            K.SUSPEND: _suspend, K.UNSUSPEND: _unsuspend, K.DELETE: _delete, K.NETWORK_UPDATE: _network_update,
            K.MIGRATE: _migrate, K.REINSTALL: _reinstall, K.CHANGE_PLAN: _change_plan,
            K.RESET_PASSWORD: _reset_password, K.BACKUP: _backup, K.RESTORE: _restore}


def _claim(operation_id: int) -> Operation | None:
    """Mark the operation running, unless it is finished or another live worker has it."""
    with transaction.atomic():
        op = Operation.objects.select_for_update().filter(pk=operation_id).first()
        if op is None or op.status not in Operation.ACTIVE:
            return None
        if op.status == Operation.Status.RUNNING and op.heartbeat_at and \
                (timezone.now() - op.heartbeat_at).total_seconds() < settings.OPERATION_STALE_SECONDS:
            return None
        op.status = Operation.Status.RUNNING
        op.started_at = op.started_at or timezone.now()
        op.heartbeat_at = timezone.now()
        op.save(update_fields=["status", "started_at", "heartbeat_at"])
        return op


def fail_install(server: VirtualServer, driver: Driver, op: Operation) -> None:
    """A failed install is an error whatever the domain does: its installer is powered off and
    its disk kept to look at; the customer can reinstall or delete."""
    from templates_os.models import Installation

    Installation.objects.filter(operation=op).exclude(status=Installation.Status.DONE).update(
        status=Installation.Status.FAILED, config_token=None, callback_token=None)
    try:
        driver.destroy(server.domain_name)
    except DriverError:
        pass
    _set_state(server, S.ERROR)


def settle_state(server: VirtualServer, driver: Driver) -> None:
    """After a failure: make the server's state say what the node really has."""
    try:
        state = driver.state(server.domain_name)
    except DriverError:
        state = None
    if server.state == S.SUSPENDED or (server.state == S.DELETING and state is not None):
        return
    if state == DomainState.RUNNING:
        _set_state(server, S.RUNNING)
    elif state == DomainState.SHUTOFF and server.state != S.CREATING:
        _set_state(server, S.STOPPED)
    else:
        _set_state(server, S.ERROR)


def run_operation(operation_id: int) -> str:
    """Carry out one operation. Returns its final status (for django-q2's task result)."""
    op = _claim(operation_id)
    if op is None:
        return "skipped"
    step = Step(op)
    if op.kind == K.NODE_INSTALL:
        return run_node_operation(op, step)
    if op.kind == K.PANEL_BACKUP:
        return run_panel_backup(op, step)
    server = VirtualServer.objects.select_related("node", "storage").filter(pk=op.server_id).first()
    state_before = server.state if server is not None else None
    try:
        if server is None:
            raise DriverError("the server no longer exists")
        driver = driver_for(server.node.uri)
        step(5, f"{op.kind} on node {server.node.name}")
        HANDLERS[op.kind](step, server, driver)
    except Exception as exc:  # every failure ends the operation visibly, with its reason
        log.warning("operation %s failed: %s", op.id, exc)
        op.status = Operation.Status.FAILED
        op.error = str(exc) or exc.__class__.__name__
        op.log += f"{timezone.now():%H:%M:%S} failed: {op.error}\n"
        if not isinstance(exc, DriverError):
            op.log += traceback.format_exc()
        if server is not None and server.pk:
            server.error = op.error
            server.save(update_fields=["error"])
            if op.kind in (K.CREATE, K.REINSTALL):
                fail_install(server, driver_for(server.node.uri), op)
            else:
                settle_state(server, driver_for(server.node.uri))
    else:
        op.status = Operation.Status.SUCCEEDED
        op.progress = 100
        op.log += f"{timezone.now():%H:%M:%S} done\n"
    _finish(op)
    progress.publish(op, server.state if server is not None and server.pk else None)
    _tell(op, server, state_before)
    return op.status


# Events for billing systems (API.md "Webhooks"), by what an operation did.
_EVENT_OF_SUCCESS = {K.DELETE: "server.deleted", K.SUSPEND: "server.suspended", K.UNSUSPEND: "server.unsuspended"}


def _tell(op: Operation, server: VirtualServer | None, state_before: str | None) -> None:
    from panel.api.events import emit

    gone = server is None or server.pk is None
    about = {"server": op.server_id, "hostname": op.target_repr, "operation": op.id}
    if op.status == Operation.Status.SUCCEEDED and op.kind in _EVENT_OF_SUCCESS:
        emit(_EVENT_OF_SUCCESS[op.kind], customer_id=op.customer_id, **about,
             **({"reason": server.suspend_reason} if op.kind == K.SUSPEND and not gone else {}))
    if op.status == Operation.Status.FAILED and op.kind in (K.CREATE, K.REINSTALL):
        emit("server.failed", customer_id=op.customer_id, **about, error=op.error)
    if not gone and server.state != state_before:
        emit("server.state_changed", customer_id=op.customer_id, **about, state=server.state, previous=state_before)
    emit("operation.finished", customer_id=op.customer_id, **about, kind=op.kind, status=op.status, error=op.error)


def _finish(op: Operation) -> None:
    op.finished_at = timezone.now()
    op.save(update_fields=["status", "progress", "error", "log", "finished_at", "params"])


def run_panel_backup(op: Operation, step: Step) -> str:
    """The panel's own backup: no server, no node."""
    from backup.taking import take_panel

    try:
        take_panel(step, op)
    except Exception as exc:  # every failure ends the operation visibly, with its reason
        op.status, op.error = Operation.Status.FAILED, str(exc) or exc.__class__.__name__
        op.log += f"{timezone.now():%H:%M:%S} failed: {op.error}\n"
    else:
        op.status, op.progress = Operation.Status.SUCCEEDED, 100
        op.log += f"{timezone.now():%H:%M:%S} done\n"
    _finish(op)
    return op.status


def run_node_operation(op: Operation, step: Step) -> str:
    """Install (or re-install) a node. A node whose first install fails is removed again:
    the operation keeps the reason, and no half-registered node is left."""
    from nodes.installer import install
    from nodes.models import Node
    from nodes.ssh import HostKeyChanged

    # The password or key given for the first contact is used once and then forgotten.
    secret = decrypt(op.params.pop("secret", ""))
    Operation.objects.filter(pk=op.pk).update(params=op.params)
    kind = op.params.get("auth", "")
    node = Node.objects.select_related("cluster").filter(pk=op.node_id).first()
    first = op.params.get("first_install", False)
    try:
        if node is None:
            raise DriverError("the node no longer exists")
        install(step, node, password=secret if kind == "password" else "",
                private_key=secret if kind == "key" else "")
    except Exception as exc:  # every failure ends the operation visibly, with its reason
        op.status, op.error = Operation.Status.FAILED, str(exc) or exc.__class__.__name__
        op.log += f"{timezone.now():%H:%M:%S} failed: {op.error}\n"
        if node is not None:
            if first:
                op.log += f"{timezone.now():%H:%M:%S} removed the node: its first install did not finish\n"
                node.delete()
            else:
                Node.objects.filter(pk=node.pk, state=Node.State.INSTALLING).update(state=Node.State.OFFLINE)
                offered = {"offered_host_key": exc.offered} if isinstance(exc, HostKeyChanged) else {}
                Node.objects.filter(pk=node.pk).update(last_error=op.error[:2000], **offered)
    else:
        op.status, op.progress = Operation.Status.SUCCEEDED, 100
        op.log += f"{timezone.now():%H:%M:%S} done\n"
    _finish(op)
    return op.status

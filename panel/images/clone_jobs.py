"""The clone job: the `create` operation of a server made by cloning (panel/images/cloning.py).

Instead of an installer, the new server's disk comes from its stopped source: a thin qcow2
overlay backed by a frozen copy of the source's disk (a `CloneBase`, shared by later thin clones
while the source is unchanged), or a full copy. The guest learns its new identity at its first
boot: the demo guest's kernel command line is rendered from the clone's own rows (its MACs
and addresses), and a cloud-init image gets a seed with a new instance-id, hostname and
network settings, so cloud-init configures it again (hostname, network, SSH host keys).
Safe to run twice: an existing base or disk is kept.
"""

import dataclasses
import secrets

from django.db.models import Q

from nodes.domain_xml import Disk
from nodes.driver import DomainState, Driver, DriverError
from panel.events import emit
from panel.images.golden import CloneBase, CloneOrigin
from panel.runner import Step, for_customer
from panel.vps.domain import domain_spec
from panel.vps.models import ServerState, VirtualServer
from templates_os import provisioning, render
from templates_os.seed import seed_iso


def frozen_base(step: Step, source: VirtualServer, driver: Driver) -> CloneBase:
    """A frozen copy of `source`'s disk: the latest one while the disk is unchanged since, else a new copy."""
    pool = source.storage.pool_name
    stamp = driver.disk_stamp(pool, source.disk_volume)
    if stamp:
        base = CloneBase.objects.filter(source=source, node=source.node_id, storage=source.storage_id,
                                        source_stamp=stamp).last()
        if base is not None and driver.volume_exists(pool, base.volume):
            step(30, f"the source's disk is unchanged since base {base.volume}: sharing it",
                 customer="the source's disk is unchanged since its last clone: sharing its frozen copy")
            return base
    volume = f"{source.domain_name}-base-{secrets.token_hex(4)}.qcow2"
    step(30, f"freezing a copy of {source.hostname}'s disk as {volume}", customer="freezing a copy of the source's disk")
    driver.copy_volume(pool, source.disk_volume, pool, volume)
    path = driver.create_volume(pool, volume, source.disk_gib)  # the copy exists: this gives its path
    return CloneBase.objects.create(node_id=source.node_id, storage_id=source.storage_id, volume=volume, path=path,
                                    source=source, source_stamp=stamp)


def _identity_seed(server: VirtualServer, driver: Driver) -> str:
    """A cloud-init seed telling a cloned image its own identity: the new instance-id makes
    cloud-init run its per-instance modules again. "" for a template without a seed."""
    template = server.os_template
    if template is None or template.metadata.get("seed") != "iso":
        return ""
    files = {"meta-data": f"instance-id: {server.uuid}-clone\nlocal-hostname: {render.yaml_scalar(server.hostname)}\n",
             "user-data": "#cloud-config\n{}\n"}
    if template.file_path("network-config").is_file():
        files["network-config"] = provisioning.render_file(template, "network-config",
                                                           provisioning.boot_context(server, ""))
    return driver.upload_volume(server.storage.pool_name, server.seed_volume, seed_iso(files))


def clone(step: Step, server: VirtualServer, driver: Driver) -> None:
    origin = CloneOrigin.objects.select_related("source__storage", "source__node").get(server=server)
    source = origin.source
    if source is None:
        raise for_customer(DriverError("the source server no longer exists"))
    step(10, f"preparing storage {server.storage.name} on the node", customer="preparing the disk")
    driver.ensure_pool(server.storage.pool_name, server.storage.path)
    if driver.state(source.domain_name) not in (DomainState.SHUTOFF, None):
        raise for_customer(DriverError(f"the source {source.hostname} is running; clones are made of stopped servers"))
    pool = server.storage.pool_name
    if origin.mode == CloneOrigin.Mode.THIN:
        base = origin.base or frozen_base(step, source, driver)
        if origin.base_id is None:
            origin.base = base
            origin.save(update_fields=["base"])
        step(50, f"creating a {server.disk_gib} GiB thin overlay on {base.volume}", customer="creating a thin overlay")
        disk = driver.create_volume(pool, server.disk_volume, server.disk_gib, backing=base.path)
    else:
        if not driver.volume_exists(pool, server.disk_volume):
            step(40, f"copying {source.hostname}'s disk", customer="copying the source's disk")
            driver.copy_volume(source.storage.pool_name, source.disk_volume, pool, server.disk_volume)
        disk = driver.create_volume(pool, server.disk_volume, server.disk_gib)  # the copy exists: its path
    seed = _identity_seed(server, driver)
    spec = domain_spec(server, disk)
    first_boot = dataclasses.replace(spec, disks=(*spec.disks, Disk(path=seed, target="hdc", format="raw",
                                                                     device="cdrom"))) if seed else spec
    step(70, "booting the clone with its own identity (UUID, MACs, hostname, addresses)", customer=True)
    try:
        driver.define(first_boot)
        driver.start(server.domain_name)
    except DriverError:
        # A failed boot leaves nothing of the clone behind on the node (the shared base stays).
        driver.undefine(server.domain_name)
        driver.delete_volume(pool, server.disk_volume)
        driver.delete_volume(pool, server.seed_volume)
        raise
    if seed:
        driver.define(spec)  # later boots without the seed, as an installed server boots
    server.set_state(ServerState.RUNNING, error="")
    step(95, f"running, cloned from {source.hostname}", customer=True)
    emit("server.active", customer_id=server.customer_id, server=server.id, hostname=server.hostname,
         os_template=server.os_template.slug if server.os_template else None, recipe=None, recipe_exit_code=None)


def bases_of(server: VirtualServer) -> list[int]:
    """The bases `server` uses or was the source of: those its delete may leave unused."""
    return list(CloneBase.objects.filter(Q(users__server=server) | Q(source=server)).values_list("pk", flat=True))


def drop_unused(step: Step, driver: Driver, base_ids: list[int]) -> None:
    """After a delete: bases no server uses any more leave the node (a later clone freezes a new copy)."""
    for base in CloneBase.objects.filter(pk__in=base_ids, users__isnull=True).select_related("storage"):
        driver.delete_volume(base.storage.pool_name, base.volume)
        base.delete()
        step(80, f"removed the clone base {base.volume}: no server uses it any more")

"""The snapshot operations' work (panel/images/snapshots.py says how the chain is kept).

Every job drops the domain's backup checkpoints first (libvirt keeps their bitmaps in the top
file, which a snapshot replaces and a revert throws away): the next backup is a full one. The
domain is defined again after each, naming its new top file.
"""

from django.db import transaction

from nodes.driver import DomainState, Driver, DriverError
from panel.images.models import Snapshot
from panel.runner import Step, for_customer
from panel.vps.domain import disk_path, domain_spec
from panel.vps.models import Operation, ServerState, VirtualServer
from panel.vps.server_jobs import settle_state


def _snapshot(step: Step) -> Snapshot:
    snapshot = Snapshot.objects.filter(pk=step.op.params.get("snapshot")).first()
    if snapshot is None:
        raise for_customer(DriverError("the snapshot no longer exists"))
    return snapshot


def _drop_checkpoints(step: Step, server: VirtualServer, driver: Driver, metadata_only: bool = False) -> None:
    if driver.checkpoints(server.domain_name):
        driver.drop_checkpoints(server.domain_name, metadata_only=metadata_only)
        step(12, "backup checkpoints dropped (a snapshot changes the disk's top file): the next backup is a full one",
             customer=True)


def _refresh_sizes(server: VirtualServer, driver: Driver) -> None:
    """What each snapshot costs: the file written since it, and its memory."""
    pool = server.storage.pool_name
    for snapshot in Snapshot.objects.filter(server=server, status=Snapshot.Status.READY):
        size = sum(driver.volume_size(pool, v) or 0 for v in snapshot.volumes())
        if size != snapshot.size_bytes:
            Snapshot.objects.filter(pk=snapshot.pk).update(size_bytes=size)


def create(step: Step, server: VirtualServer, driver: Driver) -> None:
    snapshot = _snapshot(step)
    name = server.domain_name
    running = driver.state(name) == DomainState.RUNNING
    if snapshot.memory and not running:
        raise for_customer(DriverError("a snapshot with memory needs a running server; it is stopped"))
    _drop_checkpoints(step, server, driver)
    step(20, "saving the memory and the disk (the guest pauses while its RAM is written)" if snapshot.memory else
         "taking a disk snapshot (a guest agent that answers freezes the file systems for it)", customer=True)
    frozen = driver.snapshot_disk(name, server.storage.pool_name, snapshot.image, snapshot.overlay,
                                  snapshot.memory_volume or None)
    snapshot.frozen, snapshot.was_running, snapshot.status = frozen, running, Snapshot.Status.READY
    snapshot.save(update_fields=["frozen", "was_running", "status"])
    step(70, f"the domain writes {snapshot.overlay} now; defining it so", customer=False)
    driver.define(domain_spec(server, disk_path(server, driver)))
    _refresh_sizes(server, driver)
    how = "with memory" if snapshot.memory else \
        "file systems frozen by the guest agent" if frozen else \
        "crash-consistent: no guest agent answered" if running else "of the stopped disk"
    step(95, f"snapshot \"{snapshot.name}\" taken ({how})", customer=True)


def forget_failed_create(op: Operation, server: VirtualServer, driver: Driver) -> None:
    """A snapshot that was not taken leaves nothing: no row, no file (the atomic snapshot
    changed nothing on the domain). One that was taken is kept, whatever failed after it."""
    snapshot = Snapshot.objects.filter(pk=op.params.get("snapshot"), status=Snapshot.Status.CREATING).first()
    if snapshot is not None:
        for volume in snapshot.volumes():
            try:
                driver.delete_volume(server.storage.pool_name, volume)
            except DriverError:
                pass  # the node is gone: the row still goes, the file is a leftover to see there
        snapshot.delete()
    settle_state(op, server, driver)


def revert(step: Step, server: VirtualServer, driver: Driver) -> None:
    snapshot = _snapshot(step)
    name, pool = server.domain_name, server.storage.pool_name
    step(15, "powering off: what the server did since the snapshot is discarded", customer=True)
    driver.destroy(name)
    # The checkpoints' bitmaps are in the overlay thrown away now.
    _drop_checkpoints(step, server, driver, metadata_only=True)
    step(30, f"making {snapshot.overlay} anew on {snapshot.image}", customer="discarding what was written since")
    driver.revert_disk(pool, snapshot.image, snapshot.overlay)
    spec = domain_spec(server, disk_path(server, driver))
    driver.define(spec)
    if snapshot.memory:
        step(60, "resuming the guest from the snapshot's memory", customer=True)
        driver.restore_memory(name, pool, snapshot.memory_volume, spec.to_xml())
        server.set_state(ServerState.RUNNING, error="")
    elif snapshot.was_running:
        step(60, "booting from the snapshot's disk (it was running, without memory)", customer=True)
        driver.start(name)
        server.set_state(ServerState.RUNNING, error="")
    else:
        server.set_state(ServerState.STOPPED, error="")
    _refresh_sizes(server, driver)
    step(95, f"reverted to snapshot \"{snapshot.name}\"", customer=True)


def delete(step: Step, server: VirtualServer, driver: Driver) -> None:
    snapshot = _snapshot(step)
    name, pool = server.domain_name, server.storage.pool_name
    newer = Snapshot.objects.filter(server=server, id__gt=snapshot.id).order_by("id").first()
    running = driver.state(name) == DomainState.RUNNING
    _drop_checkpoints(step, server, driver)
    step(20, f"merging what was written since snapshot \"{snapshot.name}\" into the disk below it"
             f"{' while the server runs' if running else ''}", customer=True)

    def tick(share: float) -> None:
        step.op.progress = 20 + int(60 * share)
        step.heartbeat()

    driver.merge_snapshot(name, pool, snapshot.image, snapshot.overlay, newer.overlay if newer else None, tick)
    if snapshot.memory_volume:
        driver.delete_volume(pool, snapshot.memory_volume)
    with transaction.atomic():
        if newer is not None:  # its overlay's backing file is the merged one now
            newer.image = snapshot.image
            newer.save(update_fields=["image"])
        snapshot.delete()
    driver.define(domain_spec(server, disk_path(server, driver)))
    _refresh_sizes(server, driver)
    step(95, f"snapshot \"{snapshot.name}\" deleted; the server {'keeps running' if running else 'is unchanged'}",
         customer=True)

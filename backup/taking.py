"""Taking backups: a server's disk (full or incremental) and the panel's own state.

A server backup runs in three steps: the node copies the disk as it is at one instant
(libvirt's backup job, see nodes/libvirt_backups.py); the image reaches the target with its
checksum; the manifest (checksum, the chain, the server's definition) is written beside it.
Then older backups are pruned (retention.py). The image reaches the target one of two ways:
a folder on the server's node takes it straight from the job, and the node checksums it
there (one pass, nothing crosses the network); for every other target the job writes a
staging volume that the panel streams to the target, compressing and checksumming on the way.
A failure anywhere leaves no file on the target and a failed Backup row with the reason.
A stopped server has no bitmap of its changes; while its disk file is not written (the same
`disk_stamp` as at its last backup to the target), its next backup there is an incremental
that holds no change, instead of the whole disk again.
"""

import io
import logging
import time

from django.utils import timezone

from backup import disks, files, retention
from backup.models import Backup, BackupPlan, BackupTarget
from nodes.driver import DomainState, Driver, DriverError
from panel.events import emit
from panel.images.models import Snapshot
from panel.runner import Job
from panel.vps.models import VirtualServer

log = logging.getLogger(__name__)

# Without a plan (a backup started by hand) a chain gets a new full backup this often.
DEFAULT_FULL_EVERY = 7


class BackupFailed(DriverError):
    """A backup or restore that cannot go on; the message says why, for the admin."""


def _target(row: BackupTarget, server: VirtualServer | None, driver: Driver | None):
    from backup.connect import check_target, target_for
    from backup.targets import TargetError

    if row.kind == BackupTarget.Kind.NODE:
        # Only this server's node matters, and the job itself proves the folder writable: here
        # the folder's pool is made ready (a missing or unusable folder fails now).
        target = target_for(row, node=server.node, driver=driver)
        try:
            target.free_bytes()
        except TargetError as exc:
            raise BackupFailed(f"the target {row.name} failed its check: {exc}", retryable=not exc.permanent) from exc
        return target
    error = check_target(row)
    if error:  # permanent or not, the plan's next run tries again
        raise BackupFailed(f"the target {row.name} failed its check: {error}")
    try:
        return target_for(row)
    except TargetError as exc:
        raise BackupFailed(f"the target {row.name}: {exc}") from exc


def _chain_start(server: VirtualServer, target: BackupTarget, full_every: int, driver: Driver,
                 running: bool, stamp: str) -> Backup | None:
    """The backup to build an incremental on, or None for a full one: the server's last
    finished backup on this target, if the chain is shorter than `full_every` and either the
    server runs and that backup's checkpoint is still on the domain, or the server is stopped
    and its disk has not been written since that backup (the same `disk_stamp`)."""
    last = Backup.objects.filter(server_uuid=server.uuid, target=target, status=Backup.Status.DONE) \
        .exclude(kind=Backup.Kind.PANEL).order_by("-id").first()
    if last is None or len(last.chain()) >= full_every:
        return None
    if not running:
        return last if stamp and last.manifest.get("disk_stamp") == stamp else None
    return last if last.checkpoint and last.checkpoint in driver.checkpoints(server.domain_name) else None


def describe(server: VirtualServer) -> dict:
    """What a restore needs to know about the server, kept in the manifest."""
    from panel.ipam.models import IpAddress

    return {
        "uuid": str(server.uuid), "hostname": server.hostname, "customer_id": server.customer_id,
        "plan_id": server.plan_id, "plan": server.plan.name, "vcpus": server.vcpus, "ram_mib": server.ram_mib,
        "disk_gib": server.disk_gib, "os_template": server.os_template.slug if server.os_template else "",
        "node": server.node.name if server.node else "",
        "addresses": sorted(IpAddress.objects.filter(server=server).values_list("address", flat=True)),
    }


class Progress:
    """Operation progress from the share done of a part of the work (`low`..`high` percent),
    written at most every few seconds. `done` and `total` are bytes, or percent with `percent`."""

    def __init__(self, step, low: int, high: int, total: int, what: str, percent: bool = False):
        self.step, self.low, self.high, self.total, self.what = step, low, high, max(total, 1), what
        self.percent, self.said = percent, 0.0

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if now - self.said >= 2:
            self.said = now
            share = min(done / self.total, 1)
            amount = f"{share:.0%}" if self.percent else f"{done / 2**20:.0f} of {self.total / 2**20:.0f} MiB"
            self.step(int(self.low + (self.high - self.low) * share), f"{self.what}: {amount}", customer=True)


def take(step, server: VirtualServer, driver: Driver) -> None:
    """The `backup` operation: back up the server's disk to the target in the operation's params."""
    from backup.targets import TargetError

    op = step.op
    target_row = BackupTarget.objects.get(pk=op.params["target"])
    plan = BackupPlan.objects.filter(pk=op.params.get("plan")).first()
    step(8, f"checking the target {target_row.name}", customer="checking the backup target")
    target = _target(target_row, server, driver)
    direct = target_row.kind == BackupTarget.Kind.NODE
    full_every = plan.full_every if plan else DEFAULT_FULL_EVERY
    running = driver.state(server.domain_name) == DomainState.RUNNING
    extra = disks.data_disks(server)
    if extra:  # every data disk goes with the system disk, in the same job (backup/disks.py)
        driver = disks.WithDataDisks(driver, extra)
    # The file the domain writes: after a snapshot its overlay, read through the whole chain.
    disk = Snapshot.top_volume(server)
    # Taken before the copy: should the copy itself touch the file, the next backup is full.
    stamp = "" if running else driver.disk_stamp(server.storage.pool_name, disk)
    base = _chain_start(server, target_row, full_every, driver, running, stamp)
    backup = Backup.objects.create(
        server=server, server_uuid=server.uuid, hostname=server.hostname, customer_id=server.customer_id,
        target=target_row, plan=plan, parent=base, operation=op, node=server.node if direct else None,
        kind=Backup.Kind.INCREMENTAL if base else Backup.Kind.FULL,
        compression="none" if direct else plan.compression if plan else BackupPlan.Compression.ZSTD)
    op.params["backup_id"] = backup.id
    if direct:  # the job writes into the node's folder; renamed once checksummed
        pool, staging = target.pool, target.volume(f"{server.uuid}/{backup.id:06d}.qcow2.part")
    else:
        pool, staging = server.storage.pool_name, f"{server.domain_name}-backup-{backup.id}.qcow2"
    try:
        if base and not running:
            step(10, f"the stopped disk is unchanged since backup #{base.id}: an incremental with no change",
                 customer=True)
            driver.empty_increment(server.storage.pool_name, disk, staging, pool)
            made, checkpointed = "incremental", False
        else:
            how = "the running disk through libvirt's backup job" if running else "the stopped disk"
            what = f"changes since backup #{base.id}" if base else "the whole disk"
            where = f" into {target_row.path} on node {server.node.name}" if direct else ""
            step(10, f"copying {what}: {how}{where}", customer=f"copying {what}: {how}")
            copied = Progress(step, 10, 85 if direct else 50, 100, "copied", percent=True)
            made, checkpointed = driver.backup_disk(server.domain_name, server.storage.pool_name, disk,
                                                    staging, f"panel-{backup.id}", base.checkpoint if base else None,
                                                    tick=lambda f: copied(int(f * 100)), staging_pool=pool)
        if made == "full" and base:
            step(50, f"backup #{base.id}'s checkpoint is gone (the disk was replaced?): a full backup instead",
                 customer=True)
            backup.kind, backup.parent = Backup.Kind.FULL, None
        if running and not checkpointed:
            step(50, "this disk cannot keep a change bitmap (qcow2 v2 image): full backups only", customer=True)
        backup.checkpoint = f"panel-{backup.id}" if checkpointed else ""
        backup.file_name = files.image_name(backup)
        if direct:
            image_bytes = _checksum_in_place(step, backup, driver, target, staging)
        else:
            image_bytes = _send(step, backup, server, driver, target, pool, staging)
        backup.manifest = {
            "backup": backup.id, "kind": backup.kind, "created_at": backup.created_at.isoformat(),
            "parent": {"id": base.id, "file": base.file_name, "checksum": base.checksum} if backup.parent else None,
            "checkpoint": backup.checkpoint, "consistent": "backup job of the running domain" if running else "stopped",
            "image": {"format": "qcow2", "bytes": image_bytes, "virtual_gib": server.disk_gib},
            "file": {"name": backup.file_name, "compression": backup.compression, "bytes": backup.size_bytes,
                     "checksum": backup.checksum},
            "server": describe(server),
        }
        if extra:
            driver.store(step, backup, target, direct)
            backup.manifest["disks"] = driver.stored
        if stamp:  # a stopped disk: the next backup is an empty incremental while this stays the same
            backup.manifest["disk_stamp"] = stamp
        with target.writer(files.manifest_name(backup)) as out:
            out.write(files.manifest_bytes(backup))
    except (DriverError, TargetError, OSError) as exc:
        if extra:
            driver.forget(target)
        _failed(backup, target, exc)
        emit("backup.finished", customer_id=server.customer_id, server=server.id, hostname=server.hostname,
             backup=backup.id, status="failed", error=backup.error)
        raise BackupFailed(backup.error) from exc
    finally:
        driver.delete_volume(pool, staging)
        target.close()
    backup.status, backup.finished_at = Backup.Status.DONE, timezone.now()
    backup.save()
    driver.drop_checkpoints(server.domain_name, keep=_checkpoints_in_use(server))
    step(92, f"{backup.kind} backup #{backup.id}: {backup.size_bytes / 2**20:.1f} MiB stored, {backup.checksum[:23]}…",
         customer=True)
    removed = retention.prune(server.uuid, target_row, retention.keep_for(server, plan))
    if removed:
        step(96, f"retention: removed backup(s) {', '.join(f'#{i}' for i in removed)}", customer=True)
    emit("backup.finished", customer_id=server.customer_id, server=server.id, hostname=server.hostname,
         backup=backup.id, kind=backup.kind, status="done", size_bytes=backup.size_bytes, target=target_row.name)


def _send(step, backup: Backup, server: VirtualServer, driver: Driver, target, pool: str, staging: str) -> int:
    """Stream the staging image to the target (compressed if asked); returns the image's bytes."""
    step(50, f"sending the image to {backup.target.name} as {backup.file_name}"
             f"{' (zstd)' if backup.compression == 'zstd' else ''}", customer="sending the image to the backup target")
    image = {"bytes": 0}

    def counted_chunks():
        for chunk in driver.read_volume(pool, staging):
            image["bytes"] += len(chunk)
            yield chunk

    total = driver.volume_size(pool, staging) or server.disk_gib * 2**30  # the image, not the disk's size
    with target.writer(backup.file_name) as out:
        stored = files.store(counted_chunks(), out.write, backup.compression, Progress(step, 50, 90, total, "sent"))
    backup.size_bytes, backup.checksum = stored.size, stored.checksum
    return image["bytes"]


def _checksum_in_place(step, backup: Backup, driver: Driver, target, staging: str) -> int:
    """The job wrote the image into the node's folder: checksum it there, then give it its name."""
    step(86, f"checksumming the image on node {target.node.name}", customer="checksumming the image")
    backup.size_bytes = driver.volume_size(target.pool, staging) or 0
    backup.checksum = driver.checksum_volume(target.pool, staging)
    driver.move_volume(target.pool, staging, target.volume(backup.file_name))
    return backup.size_bytes


def _checkpoints_in_use(server: VirtualServer) -> set[str]:
    """The checkpoint of each target's newest backup of the server: the next incremental to that
    target starts there. QEMU updates a bitmap per checkpoint on every write, so no others are
    kept (a target whose newest backup has none starts a new chain anyway)."""
    newest = dict(Backup.objects.filter(server_uuid=server.uuid, status=Backup.Status.DONE)
                  .exclude(kind=Backup.Kind.PANEL).order_by("id").values_list("target_id", "checkpoint"))
    return {checkpoint for checkpoint in newest.values() if checkpoint}


def _failed(backup: Backup, target, exc: Exception) -> None:
    backup.status, backup.finished_at = Backup.Status.FAILED, timezone.now()
    backup.error = str(exc) or exc.__class__.__name__
    backup.save()
    for name in (backup.file_name, files.manifest_name(backup)):
        if name:
            try:
                target.delete(name)
            except Exception:  # the writer already removed its partial file; this is a second try
                log.warning("could not remove %s of failed backup %s", name, backup.id, exc_info=True)


def take_panel(step, op) -> None:
    """The `panel_backup` operation: the database, settings and keys, encrypted, to the target."""
    from backup import panel_state
    from backup.targets import TargetError

    target_row = BackupTarget.objects.get(pk=op.params["target"])
    plan = BackupPlan.objects.filter(pk=op.params.get("plan")).first()
    step(10, f"checking the target {target_row.name}")
    if target_row.kind == BackupTarget.Kind.NODE:
        raise BackupFailed(f"the target {target_row.name} is a folder on the nodes, which hold server backups only: "
                           "back up the panel to a folder on its own host, SFTP or FTP")
    target = _target(target_row, None, None)
    backup = Backup.objects.create(target=target_row, plan=plan, kind=Backup.Kind.PANEL, operation=op,
                                   hostname="", compression="none")
    try:
        step(30, "dumping the database, settings and keys (encrypted with the backup key)")
        buffer = io.BytesIO()
        summary = panel_state.dump(buffer)
        backup.file_name = files.panel_name(backup)
        step(70, f"sending it to {target_row.name} as {backup.file_name}")
        with target.writer(backup.file_name) as out:
            stored = files.store([buffer.getvalue()], out.write, "none")
        backup.size_bytes, backup.checksum = stored.size, stored.checksum
        backup.manifest = {"backup": backup.id, "kind": "panel", "created_at": backup.created_at.isoformat(),
                           "file": {"name": backup.file_name, "bytes": stored.size, "checksum": stored.checksum},
                           "panel": summary}
    except (DriverError, TargetError, OSError, panel_state.PanelBackupError) as exc:
        _failed(backup, target, exc)
        emit("backup.finished", backup=backup.id, kind="panel", status="failed", error=backup.error)
        raise BackupFailed(backup.error) from exc
    finally:
        target.close()
    backup.status, backup.finished_at = Backup.Status.DONE, timezone.now()
    backup.save()
    removed = retention.prune_panel(target_row, plan.keep if plan else retention.PANEL_KEEP)
    step(95, f"panel backup #{backup.id}: {backup.size_bytes / 1024:.0f} KiB"
             + (f"; removed old panel backup(s) {', '.join(f'#{i}' for i in removed)}" if removed else ""))
    emit("backup.finished", backup=backup.id, kind="panel", status="done", size_bytes=backup.size_bytes,
         target=target_row.name)


class PanelBackupJob(Job):
    """The `panel_backup` operation: no server, no node."""

    expected = (Exception,)  # a target's or the database's failure says what went wrong

    def run(self, step) -> None:
        take_panel(step, self.op)

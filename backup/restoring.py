"""Restoring a server from a backup, onto itself or onto a new server.

Nothing of the server is touched until every file of the chain has come back from the
target with its recorded checksum and the node has checked and assembled them into a new
image beside the disk; only then is the server stopped and its disk replaced. Files in a
folder on the server's own node are copied and checksummed there; every other target's
are streamed through the panel, which checks them on the way.
"""

from django.conf import settings

from backup import disks, files
from backup.models import Backup
from backup.taking import BackupFailed
from nodes.driver import Driver, DriverError
from panel.images.models import Snapshot
from panel.runner import for_customer
from panel.vps.domain import disk_path, domain_spec
from panel.vps.models import ServerState, VirtualServer


def restore(step, server: VirtualServer, driver: Driver) -> None:
    """The `restore` operation: params `backup` (the restore point) and `new_server` (the server
    was just placed for it, with no disk yet)."""
    from backup.targets import TargetError

    op = step.op
    backup = Backup.objects.select_related("target").get(pk=op.params["backup"])
    chain = backup.chain()
    broken = [link for link in chain if link.status != Backup.Status.DONE]
    if broken:
        raise BackupFailed(f"backup #{backup.id} needs backup #{broken[0].id}, which is {broken[0].status}: "
                           "nothing was overwritten")
    pool, name = server.storage.pool_name, server.domain_name
    staged, assembled = [], f"{name}-restored.qcow2"
    new_server = op.params.get("new_server", False)
    targets = {}
    data_plan = disks.restore_plan(backup, chain)  # every data disk's files, checked up front
    for entry, links in data_plan:
        if None in links:
            raise BackupFailed(f"backup #{chain[links.index(None)].id} lacks the data disk {entry['target']}: "
                               "nothing was overwritten")
    data_assembled, data_staged = [], []
    try:
        if new_server:
            driver.ensure_pool(pool, server.storage.path)
        for index, link in enumerate(chain):
            staged.append(f"{name}-restore-{index}.qcow2")
            if link.node_id not in targets:
                targets[link.node_id] = _source(link)
            source, local = targets[link.node_id], _on_node(targets[link.node_id], server)
            fetched = (f"{'copying' if local else 'fetching'} {link.kind} backup #{link.id} "
                       f"({link.size_bytes / 2**20:.1f} MiB)")
            step(10 + 40 * index // len(chain), f"{fetched} from {backup.target.name}"
                 f"{' on the node' if local else ''} and checking its checksum",
                 customer=f"{fetched} and checking its checksum")
            if not (local and _copy_on_node(driver, source, link, pool, staged[-1])):
                _fetch(driver, source, link, pool, staged[-1])
        for entry, links in data_plan:
            data_chain = []
            for index, (link, disk_file) in enumerate(zip(chain, links)):
                data_chain.append(f"{name}-restore-{entry['target']}-{index}.qcow2")
                data_staged.append(data_chain[-1])
                source, local = targets[link.node_id], _on_node(targets[link.node_id], server)
                step(50, f"{'copying' if local else 'fetching'} the image of {entry['target']} of backup #{link.id} "
                     "and checking its checksum", customer=True)
                if not (local and _copy_on_node(driver, source, disk_file, pool, data_chain[-1])):
                    _fetch(driver, source, disk_file, pool, data_chain[-1])
            data_assembled.append((entry, f"{name}-restored-{entry['target']}.qcow2"))
            driver.assemble_disk(pool, data_chain, data_assembled[-1][1])
        step(55, f"all {len(chain)} file(s) match their checksums; the node checks and assembles the image",
             customer=True)
        driver.assemble_disk(pool, staged, assembled)
        if not new_server:
            step(70, "stopping the server to replace its disk", customer=True)
            driver.stop(name, settings.STOP_TIMEOUT_SECONDS, step.heartbeat)
        if Snapshot.discard_all(server, driver):
            # Their overlays sit on the disk being replaced: they would undo the restore.
            step(72, "the server's snapshots were of the replaced disk: deleted", customer=True)
        driver.move_volume(pool, assembled, server.disk_volume)
        for entry, image in data_assembled:
            disk = disks.disk_for(server, entry)
            driver.move_volume(pool, image, disk.volume)
            driver.grow_volume(pool, disk.volume, disk.size_gib)
        if data_assembled:
            step(80, f"data disk(s) {', '.join(e['target'] for e, _i in data_assembled)} restored", customer=True)
        # The old disk's bitmaps went with it.
        driver.drop_checkpoints(name, metadata_only=True)
        driver.grow_volume(pool, server.disk_volume, server.disk_gib)
        step(85, f"disk restored from backup #{backup.id} of {backup.created_at:%Y-%m-%d %H:%M}; booting",
             customer=True)
        driver.define(domain_spec(server, disk_path(server, driver)))
        driver.start(name)
    except TargetError as exc:
        made_anew = server.state == ServerState.CREATING
        raise BackupFailed(str(exc) if made_anew else f"{exc}; nothing was overwritten") from exc
    finally:
        for volume in [*staged, assembled, *data_staged, *(image for _e, image in data_assembled)]:
            driver.delete_volume(pool, volume)
        for target in targets.values():
            target.close()
    server.set_state(ServerState.RUNNING, error="")


def _source(link: Backup):
    """Where a backup's file is: its target (for a node folder, on the node that took it)."""
    from backup.connect import target_for

    if link.on_removed_node:
        raise BackupFailed(f"backup #{link.id} was kept on a node that is no longer in the panel: "
                           "nothing was overwritten")
    return target_for(link.target, node=link.node)


def _check_size(target, backup: Backup) -> None:
    size = target.size(backup.file_name)
    if size is None:
        raise BackupFailed(f"backup #{backup.id}'s file {backup.file_name} is missing on {backup.target.name}: "
                           "nothing was overwritten")
    if size != backup.size_bytes:
        raise _damaged(backup, f"it has {size} bytes, {backup.size_bytes} were stored")


def _on_node(target, server: VirtualServer) -> bool:
    from backup.node_folder import NodeFolderTarget

    return isinstance(target, NodeFolderTarget) and target.node.pk == server.node_id


def _copy_on_node(driver: Driver, target, backup: Backup, pool: str, volume: str) -> bool:
    """A node folder on the server's own node: the node copies the file beside the disk and
    checksums the copy, nothing crosses the network. False (nothing staged) when the node's
    checksum tool is not the backup's algorithm: then the panel streams and checks the file."""
    _check_size(target, backup)
    try:
        driver.copy_volume(target.pool, target.volume(backup.file_name), pool, volume)
        checksum = driver.checksum_volume(pool, volume)
    except DriverError as exc:
        raise BackupFailed(f"backup #{backup.id}: cannot copy its file on node {target.node.name}: {exc}; "
                           "nothing was overwritten", retryable=exc.retryable) from exc
    if checksum.split(":")[0] != backup.checksum.split(":")[0]:
        driver.delete_volume(pool, volume)
        return False
    _check_checksum(backup, checksum)
    return True


def _fetch(driver: Driver, target, backup: Backup, pool: str, volume: str) -> None:
    """Copy one backup file from the target into a staging volume, verifying its checksum."""
    _check_size(target, backup)
    checked = files.Counted.like(backup.checksum)
    try:
        with target.reader(backup.file_name) as stream:
            driver.write_volume(pool, volume, files.fetch(stream.read, backup.compression, checked),
                                backup.manifest["image"]["bytes"])
    except ValueError as exc:  # zstd refused the bytes
        raise _damaged(backup, str(exc)) from exc
    except DriverError as exc:
        # The whole file came and differs (e.g. it unpacks to another size): damaged. Otherwise
        # the transfer itself broke off, and it says why.
        if checked.size == backup.size_bytes and checked.checksum != backup.checksum:
            raise _damaged(backup, str(exc)) from exc
        raise
    _check_checksum(backup, checked.checksum)


def _check_checksum(backup: Backup, checksum: str) -> None:
    if checksum != backup.checksum:
        raise _damaged(backup, f"its checksum is {checksum[:23]}… instead of {backup.checksum[:23]}…")


def _damaged(backup: Backup, why: str) -> BackupFailed:
    # The customer may read that their backup is damaged (and what was not touched), not why.
    return for_customer(BackupFailed(f"backup #{backup.id}'s file is damaged ({why}): nothing was overwritten"),
                        f"backup #{backup.id}'s file is damaged: nothing was overwritten")

"""A server's data disks (panel/images/disks.py) in its backups, beside its system disk.

Every backup holds every disk: the system disk stays the Backup row's own file (so a backup of
a server without data disks is what it always was), each data disk is one more file, named
after the backup and the disk's target, listed in the manifest's "disks" with its checksum.
The chain is the backup's: one libvirt job copies all disks at the same instant with one
checkpoint over all of them, so a backup is incremental for every disk or for none (a disk
added since the checkpoint has no bitmap: the job falls back to a full backup of all); a
stopped server's stamp covers every disk. `WithDataDisks` wraps the driver for taking.py, so
the system disk's code path is unchanged; `restore_data_disks` brings them all back.
"""

from types import SimpleNamespace

from django.db import transaction

from backup import files
from backup.models import Backup
from nodes import placement
from panel.images.models import DataDisk


def data_disks(server) -> list:
    return list(DataDisk.objects.select_related("storage").filter(server=server, state=DataDisk.State.ATTACHED)
                .order_by("target"))


def staging_of(staging: str, target: str) -> str:
    """A data disk's staging volume, beside the system disk's."""
    return staging.replace(".qcow2", f"-{target}.qcow2", 1)


class WithDataDisks:
    """The driver, as taking.py calls it for the system disk, doing the same for every data
    disk: the same backup job, the same checkpoint, the same empty increment, the same cleanup."""

    def __init__(self, driver, disks: list):
        self.driver, self.disks = driver, disks
        self.stagings: dict[str, list[tuple]] = {}  # the system disk's staging -> [(disk, staging)]
        self.stored: list[dict] = []  # the data images on the target, for the manifest
        self.pool = ""

    def __getattr__(self, name):
        return getattr(self.driver, name)

    def _stage(self, staging: str, pool: str) -> list[tuple]:
        self.pool = pool
        return self.stagings.setdefault(staging, [(d, staging_of(staging, d.target)) for d in self.disks])

    def disk_stamp(self, pool: str, name: str) -> str:
        stamp = self.driver.disk_stamp(pool, name)
        if not stamp:
            return ""  # a device without a stamp: no empty increments for any disk
        others = [f"{d.target}={self.driver.disk_stamp(d.storage.pool_name, d.volume)}" for d in self.disks]
        return ";".join([stamp, *others]) if all(others) else ""

    def empty_increment(self, pool: str, disk_volume: str, staging: str, staging_pool: str) -> None:
        self.driver.empty_increment(pool, disk_volume, staging, staging_pool)
        for disk, their_staging in self._stage(staging, staging_pool):
            self.driver.empty_increment(disk.storage.pool_name, disk.volume, their_staging, staging_pool)

    def backup_disk(self, name, pool, disk_volume, staging, checkpoint, since=None, tick=None, staging_pool=None):
        staged = self._stage(staging, staging_pool or pool)
        return self.driver.backup_disks(name, pool, [("vda", disk_volume, staging),
                                                     *[(d.target, d.volume, s) for d, s in staged]],
                                        checkpoint, since, tick=tick, staging_pool=staging_pool)

    def delete_volume(self, pool: str, name: str) -> None:
        self.driver.delete_volume(pool, name)
        for _disk, staging in self.stagings.get(name, ()):
            self.driver.delete_volume(pool, staging)

    def store(self, step, backup: Backup, target, direct: bool) -> None:
        """Put each data disk's image on the target beside the system disk's (after it)."""
        for disk, staging in [pair for pairs in self.stagings.values() for pair in pairs]:
            name = files.disk_image_name(backup, disk.target)
            entry = {"target": disk.target, "name": disk.name, "size_gib": disk.size_gib, "file": name,
                     "compression": backup.compression}
            if direct:
                step(88, f"checksumming the image of {disk.target} on node {target.node.name}",
                     customer=f"checksumming the image of {disk.target}")
                entry["bytes"] = entry["image_bytes"] = self.driver.volume_size(target.pool, staging) or 0
                entry["checksum"] = self.driver.checksum_volume(target.pool, staging)
                self.driver.move_volume(target.pool, staging, target.volume(name))
            else:
                step(88, f"sending the image of {disk.target} to {backup.target.name} as {name}",
                     customer=f"sending the image of {disk.target} to the backup target")
                image = {"bytes": 0}

                def counted(staging=staging):
                    for chunk in self.driver.read_volume(self.pool, staging):
                        image["bytes"] += len(chunk)
                        yield chunk

                with target.writer(name) as out:
                    stored = files.store(counted(), out.write, backup.compression)
                entry.update(bytes=stored.size, checksum=stored.checksum, image_bytes=image["bytes"])
            self.stored.append(entry)

    def forget(self, target) -> None:
        """A failed backup: the data images already on the target go too."""
        for entry in self.stored:
            try:
                target.delete(entry["file"])
            except Exception:  # the system disk's cleanup logs its own; this is best effort
                pass


def disk_file(link: Backup, target: str):
    """A data disk's file of backup `link`, shaped as restoring.py reads a backup's own file."""
    entry = next((e for e in link.manifest.get("disks", []) if e["target"] == target), None)
    if entry is None:
        return None
    return SimpleNamespace(id=link.id, kind=link.kind, target=link.target, file_name=entry["file"],
                           checksum=entry["checksum"], size_bytes=entry["bytes"], compression=entry["compression"],
                           manifest={"image": {"bytes": entry["image_bytes"]}})


def restore_plan(backup: Backup, chain: list[Backup]) -> list[tuple[dict, list]]:
    """For each data disk in `backup`: its manifest entry and its file in every link of the
    chain, oldest first (None where a link lacks it: it cannot happen, a disk's first backup is
    a full one for all disks; restoring.py refuses it before anything is touched)."""
    return [(entry, [disk_file(link, entry["target"]) for link in chain])
            for entry in backup.manifest.get("disks", [])]


def disk_for(server, entry: dict) -> DataDisk:
    """The server's data disk at the entry's target: its own, or made anew (a server restored
    as new, or a disk deleted since the backup) with the backed-up name and size."""
    disk = DataDisk.objects.select_related("storage").filter(server=server, target=entry["target"]).first()
    if disk is None:
        with transaction.atomic():
            name = entry["name"]
            if DataDisk.objects.filter(server=server, name=name).exists():
                name = f"{name}-{entry['target']}"
            disk = DataDisk.objects.create(server=server, name=name, target=entry["target"], size_gib=entry["size_gib"],
                                           storage=server.storage, state=DataDisk.State.ATTACHED)
            placement.adjust(server.node_id, 0, 0, entry["size_gib"])
    return disk

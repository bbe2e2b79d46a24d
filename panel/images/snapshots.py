"""Snapshots of a server's system disk: libvirt external snapshots, one chain per server.

A snapshot freezes the file the domain was writing (its `image`) and puts a new qcow2 overlay
on top of it (its `overlay`), which the domain writes from then on; a snapshot with memory
also keeps the guest's RAM and device state in `memory_volume`. Snapshots form a line: the
newest one's overlay is the server's current top volume (`top_volume()`), and everything that
(re)builds the domain or reads its disk (panel/vps/domain.py, backups, restores, plan changes,
reinstalls, deletes) must use that file, never `disk_volume`, while snapshots exist.

Only the newest snapshot can be reverted to (its overlay is thrown away and made anew on its
image); an older one needs the newer ones deleted first, so a revert never silently drops
another snapshot. Deleting a snapshot merges its overlay into its image (block commit, online
for a running server).

Backups and snapshots: libvirt 9.0 tracks a backup checkpoint as a bitmap in the disk's top
file, and a revert throws a top file away. The snapshot jobs therefore drop the domain's backup
checkpoints on every snapshot create, revert and delete: the next backup is a full one, taken
of the top volume (the whole chain as the guest sees it), and restores like any other. A
restore or reinstall replaces the disk, so it discards the server's snapshots first.
"""

from django.db import models
from django.utils.translation import gettext_lazy as _

from panel.vps.models import VirtualServer


class Snapshot(models.Model):
    """One external snapshot of a server's system disk (vda)."""

    customer_path = "server__customer"  # how a row reaches its customer (panel.accounts.tenancy)

    class Status(models.TextChoices):
        CREATING = "creating", _("Being taken")
        READY = "ready", _("Ready")

    server = models.ForeignKey(VirtualServer, on_delete=models.CASCADE, related_name="snapshots")
    name = models.CharField(max_length=100)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.CREATING)
    memory = models.BooleanField(default=False, help_text=_("With the guest's memory: a revert resumes it running"))
    # Whether the guest agent froze the file systems for the instant of the snapshot.
    frozen = models.BooleanField(default=False)
    was_running = models.BooleanField(default=False)
    # Volumes in the server's storage pool: the frozen file, the file written since, the RAM.
    image = models.CharField(max_length=200)
    overlay = models.CharField(max_length=200)
    memory_volume = models.CharField(max_length=200, blank=True)
    size_bytes = models.PositiveBigIntegerField(default=0, help_text=_("Written since, plus the memory"))
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.server} @ {self.name}"

    @staticmethod
    def top_volume(server: VirtualServer) -> str:
        """The volume the server's domain writes to: the newest taken snapshot's overlay, or the
        server's own disk when it has none."""
        newest = Snapshot.objects.filter(server=server, status=Snapshot.Status.READY).order_by("-id").first()
        return newest.overlay if newest else server.disk_volume

    @property
    def is_newest(self) -> bool:
        return not Snapshot.objects.filter(server_id=self.server_id, id__gt=self.id).exists()

    def volumes(self) -> list[str]:
        """The files only this snapshot holds (its image is the server's disk or an older overlay)."""
        return [v for v in (self.overlay, self.memory_volume) if v]

    @staticmethod
    def discard_all(server: VirtualServer, driver) -> int:
        """Delete the server's snapshots and their files (its disk is about to be replaced or
        removed, and overlays on the old disk mean nothing then). Returns how many there were."""
        rows = list(Snapshot.objects.filter(server=server))
        for row in rows:
            for volume in row.volumes():
                driver.delete_volume(server.storage.pool_name, volume)
        Snapshot.objects.filter(pk__in=[r.pk for r in rows]).delete()
        return len(rows)

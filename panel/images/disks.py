"""Data disks: extra virtio disks of a server (vdb, vdc, …) beside its system disk (vda).

A row is made by the request that adds the disk (state "creating") and becomes "attached" once
the node has the volume and the domain has the device; a failed add removes both. The list of
a server's disks as its domain carries them is panel.vps.domain.data_disks(): every place that
rebuilds a domain definition goes through domain_spec(), so a redefine never drops a disk.
"""

from django.db import models
from django.utils.translation import gettext_lazy as _

from panel.vps.models import VirtualServer

# Targets a data disk may take, in the order they are handed out (vda is the system disk).
TARGETS = tuple(f"vd{letter}" for letter in "bcdefghijklmnopqrstuvwxyz")


class DataDisk(models.Model):
    customer_path = "server__customer"  # how a row reaches its customer (panel.accounts.tenancy)

    class State(models.TextChoices):
        CREATING = "creating", _("Creating")
        ATTACHED = "attached", _("Attached")
        DELETING = "deleting", _("Deleting")

    server = models.ForeignKey(VirtualServer, on_delete=models.CASCADE, related_name="data_disks")
    name = models.CharField(max_length=64, help_text=_("A label, unique on the server"))
    target = models.CharField(max_length=8)  # the guest's device: vdb, vdc, …
    size_gib = models.PositiveIntegerField()
    storage = models.ForeignKey("nodes.Storage", on_delete=models.PROTECT, related_name="data_disks")
    state = models.CharField(max_length=10, choices=State.choices, default=State.CREATING)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["target"]
        constraints = [
            models.UniqueConstraint(fields=["server", "target"], name="images_datadisk_unique_target"),
            models.UniqueConstraint(fields=["server", "name"], name="images_datadisk_unique_name"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.target}) of {self.server_id}"

    @property
    def volume(self) -> str:
        """The volume's name in the storage's pool: the domain's name and the target."""
        return f"{self.server.domain_name}-{self.target}.qcow2"


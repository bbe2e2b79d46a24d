"""Clones and golden templates: what a clone was made from, and the templates servers are made of.

A thin clone's disk is a qcow2 overlay backed by a `CloneBase`: a copy of the source's disk
frozen when the clone was made, never the live source disk (the source writes to that one
again when it runs, and an overlay on a changed backing file reads garbage). A base is kept
while any server's `CloneOrigin` names it (PROTECT). A golden template is a prepared, stopped
server locked against start and change; its `version` counts its publications, and each
server made from it records the version and the base it was made from.
"""

from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from nodes.models import Node, Storage
from panel.vps.models import VirtualServer


class CloneBase(models.Model):
    """A frozen copy of a server's disk on one node's storage: the backing file of thin clones."""

    customer_path = "source__customer"  # how a row reaches its customer (panel.accounts.tenancy)
    admins_only = Q(pk__isnull=False)  # node storage: the provider's, never shown to customers

    node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="clone_bases")
    storage = models.ForeignKey(Storage, on_delete=models.PROTECT, related_name="clone_bases")
    volume = models.CharField(max_length=200, unique=True)
    path = models.CharField(max_length=1000)
    source = models.ForeignKey(VirtualServer, null=True, blank=True, on_delete=models.SET_NULL,
                               related_name="clone_bases")
    # The source disk's stamp (size and times) when it was copied: a later thin clone of an
    # unchanged source shares this base instead of copying the disk again.
    source_stamp = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.volume


class GoldenTemplate(models.Model):
    """A prepared server new servers are cloned from. Locked (not `editing`): it cannot be started
    or changed. `editing` unlocks it; publishing locks it again as the next version."""

    customer_path = "server__customer"  # how a row reaches its customer (panel.accounts.tenancy)
    admins_only = Q(pk__isnull=False)  # the provider's; customers meet offered ones in create only

    name = models.CharField(max_length=100, unique=True)
    server = models.OneToOneField(VirtualServer, on_delete=models.PROTECT, related_name="golden_template")
    offered = models.BooleanField(default=False, help_text=_("Customers may create servers from it"))
    editing = models.BooleanField(default=False)
    version = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.name


class CloneOrigin(models.Model):
    """What a server was cloned from: its source (a server or a template's version) and, for a
    thin clone, the base its disk is backed by."""

    customer_path = "server__customer"  # how a row reaches its customer (panel.accounts.tenancy)

    class Mode(models.TextChoices):
        THIN = "thin", _("Thin overlay")
        FULL = "full", _("Full copy")

    server = models.OneToOneField(VirtualServer, on_delete=models.CASCADE, related_name="clone_origin")
    mode = models.CharField(max_length=4, choices=Mode.choices, default=Mode.THIN)
    source = models.ForeignKey(VirtualServer, null=True, blank=True, on_delete=models.SET_NULL,
                               related_name="clones")
    source_hostname = models.CharField(max_length=253)
    template = models.ForeignKey(GoldenTemplate, null=True, blank=True, on_delete=models.SET_NULL,
                                 related_name="servers_made")
    version = models.PositiveIntegerField(null=True, blank=True)
    # Set by the clone job once the disk exists; PROTECT keeps a base any server still uses.
    base = models.ForeignKey(CloneBase, null=True, blank=True, on_delete=models.PROTECT, related_name="users")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

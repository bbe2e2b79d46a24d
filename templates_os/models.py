"""OS templates found on the template share, and each install of one on a server."""

from pathlib import Path

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _


class OsTemplate(models.Model):
    """A template folder on the share (templates_os/repository.py keeps these rows in step).

    Offered to customers only while it is valid (its metadata, config and files check out)
    and an admin has it enabled; `invalid_reason` says what is wrong with a broken one.
    """

    class Installer(models.TextChoices):
        KICKSTART = "kickstart", "kickstart"
        PRESEED = "preseed", "preseed"
        CLOUD_INIT = "cloud-init", "cloud-init"

    slug = models.SlugField(max_length=64, unique=True, help_text=_("The template's folder on the share"))
    name = models.CharField(max_length=100)
    family = models.CharField(max_length=32, blank=True)
    version = models.CharField(max_length=32, blank=True)
    installer = models.CharField(max_length=12, choices=Installer.choices, blank=True)
    min_disk_gib = models.PositiveIntegerField(default=1)
    install_timeout = models.PositiveIntegerField(default=3600, help_text=_("Seconds to wait for the call-back"))
    metadata = models.JSONField(default=dict, blank=True)
    valid = models.BooleanField(default=False)
    invalid_reason = models.TextField(blank=True)
    enabled = models.BooleanField(default=True)
    position = models.PositiveIntegerField(default=100, help_text=_("Lower comes first in lists"))
    scanned_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["position", "name"]

    def __str__(self) -> str:
        return self.name

    @property
    def offered(self) -> bool:
        return self.valid and self.enabled

    @property
    def boot(self) -> dict:
        return self.metadata.get("boot", {})

    def file_path(self, name: str) -> Path:
        """Where one of the template's files is on the share (the same path on every node)."""
        return Path(settings.TEMPLATE_SHARE) / self.slug / name


class OfferedTemplates(models.Manager):
    def get_queryset(self):
        return super().get_queryset().filter(valid=True, enabled=True)


OsTemplate.add_to_class("offered_objects", OfferedTemplates())


class Installation(models.Model):
    """One install of an OS on a server (its create, or a reinstall).

    The guest gets two one-time URLs: its install config (served once, only to the server's
    own addresses) and its call-back. Only their SHA-256 hashes are kept here.
    """

    customer_path = "server__customer"  # how a row reaches its customer (panel.accounts.tenancy)

    class Status(models.TextChoices):
        WAITING = "waiting", _("Waiting for the installer")
        CONFIG_SERVED = "config_served", _("Installing")
        DONE = "done", _("Done")
        FAILED = "failed", _("Failed")

    server = models.ForeignKey("vps.VirtualServer", on_delete=models.CASCADE, related_name="installations")
    operation = models.ForeignKey("vps.Operation", null=True, blank=True, on_delete=models.SET_NULL,
                                  related_name="+")
    template = models.ForeignKey(OsTemplate, null=True, on_delete=models.SET_NULL, related_name="installations")
    recipe = models.ForeignKey("recipes.Recipe", null=True, blank=True, on_delete=models.SET_NULL,
                               related_name="installations")
    recipe_params = models.JSONField(default=dict, blank=True)
    password_hash = models.TextField(blank=True)  # SHA-512 crypt, encrypted at rest
    ssh_keys = models.JSONField(default=list, blank=True)
    status = models.CharField(max_length=14, choices=Status.choices, default=Status.WAITING)
    config_token = models.CharField(max_length=64, unique=True, null=True)  # SHA-256 of the token
    callback_token = models.CharField(max_length=64, unique=True, null=True)
    config_served_at = models.DateTimeField(null=True, blank=True)
    config_served_to = models.GenericIPAddressField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    recipe_exit_code = models.IntegerField(null=True, blank=True)
    recipe_output = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"install #{self.pk} of {self.template} on {self.server_id}"

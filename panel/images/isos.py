"""The ISO library and a server's boot media: ISOs on the template share, booting from one, and
rescue mode.

An upload is streamed to a temporary file in the share's ISO folder while its SHA-256 is
computed, never held in memory; it becomes an Iso only once complete, an ISO 9660 image (the
"CD001" signature of its primary volume descriptor at byte 0x8001) and within its owner's
quota; anything else is removed. The share is mounted at the same path on every node, so QEMU
reads the ISO in place.

A server's `ServerMedia` says how its domain boots: normally, from an attached ISO (a CD-ROM
first in the boot order, the disk after it), or in rescue (the rescue kernel and initrd with the
server's disk attached, so its owner can repair it). A change is applied by a start operation
that redefines the domain from the rows (panel/vps/domain.py's boot_media): the server must be stopped, and
back in normal boot its definition is exactly what it was before.
"""

import hashlib
import os
import re
import uuid
from pathlib import Path

from django.conf import settings
from django.db import models, transaction
from django.db.models import Q, Sum
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from panel.accounts import audit
from panel.accounts.models import Customer
from panel.accounts.tenancy import Actor
from panel import operations
from panel.operations import hand_over, new_operation
from panel.refusals import Refused
from panel.vps.models import Operation, ServerState, VirtualServer

GIB = 1024 ** 3
CHUNK = 1024 * 1024
SIGNATURE_OFFSET, SIGNATURE = 0x8001, b"CD001"
NAME = re.compile(r"^[\w][\w .+()\-]{0,99}$")


def iso_dir() -> Path:
    """The share's ISO folder (a dot folder: never taken for an OS template's)."""
    return Path(settings.TEMPLATE_SHARE) / ".isos"


class Iso(models.Model):
    """An ISO image on the share: the provider's (customer empty; `public` offers it to every
    customer) or one customer's own."""

    customer_path = "customer"  # how a row reaches its customer (panel.accounts.tenancy)

    name = models.CharField(max_length=100)
    customer = models.ForeignKey(Customer, null=True, blank=True, on_delete=models.PROTECT, related_name="isos")
    public = models.BooleanField(default=False)
    size_bytes = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    file_name = models.CharField(max_length=100, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return self.name

    @property
    def path(self) -> Path:
        return iso_dir() / self.file_name

    def delete_refusal(self) -> Refused | None:
        if ServerMedia.objects.filter(iso=self).exists():
            return Refused(_("The ISO is attached to a server; detach it first."), "in_use")
        return None


class ServerMedia(models.Model):
    """How a server boots when it is not booting normally: from `iso`, or in rescue."""

    customer_path = "server__customer"

    class Boot(models.TextChoices):
        NORMAL = "normal", gettext_lazy("Normal")
        ISO = "iso", gettext_lazy("From the ISO")
        RESCUE = "rescue", gettext_lazy("Rescue")

    server = models.OneToOneField(VirtualServer, on_delete=models.CASCADE, related_name="media")
    iso = models.ForeignKey(Iso, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    boot = models.CharField(max_length=10, choices=Boot.choices, default=Boot.NORMAL)


def media_of(server: VirtualServer) -> ServerMedia | None:
    """The server's boot media, None when it boots normally."""
    media = ServerMedia.objects.select_related("iso").filter(server_id=server.pk).first()
    return media if media and media.boot != ServerMedia.Boot.NORMAL else None


def visible_isos(actor: Actor):
    """The ISOs `actor` may list and attach: all for the provider; a customer's own and the
    provider's public ones."""
    if actor.acts_for_all_customers:
        return Iso.objects.all()
    return Iso.objects.filter(Q(customer_id=actor.customer_id) | Q(customer=None, public=True))


# -- upload --------------------------------------------------------------------------------------
def check_name(name: str) -> str:
    name = (name or "").strip()
    if not NAME.match(name):
        raise Refused(_("An ISO's name has 1 to 100 letters, digits, spaces and . + ( ) - _."), "invalid", 400,
                      field="name")
    return name


def quota_left(customer: Customer) -> int:
    used = Iso.objects.filter(customer=customer).aggregate(total=Sum("size_bytes"))["total"] or 0
    return settings.LIMIT_ISO_GIB_PER_CUSTOMER * GIB - used


class IsoWriter:
    """One upload on its way to the share: `write()` the chunks as they arrive (hashed, counted
    against the quota, into a temporary file beside the final one), then `finish()` (checks,
    rename, the row) or `abort()` (nothing left). The API's raw body and the UI's multipart
    upload handler both feed one."""

    def __init__(self, actor: Actor, name: str, *, length: int | None = None, public: bool = False,
                 customer: Customer | None = None):
        self.actor, self.name, self.length = actor, check_name(name), length
        if not actor.acts_for_all_customers:
            customer, public = Customer.objects.get(pk=actor.customer_id), False
        elif customer is not None:
            public = False  # a customer's ISO is theirs alone
        self.customer, self.public = customer, public
        self.limit = quota_left(customer) if customer is not None else None
        if self.limit is not None and length is not None and length > self.limit:
            self._over()
        folder = iso_dir()
        folder.mkdir(parents=True, exist_ok=True)
        self.file_name = f"{uuid.uuid4().hex}.iso"
        self.partial = folder / f".{self.file_name}.part"
        self.digest, self.size, self.head = hashlib.sha256(), 0, b""
        self.out = open(self.partial, "xb")

    def _over(self):
        raise Refused(_("The upload is over the ISO quota (%(limit)s GiB a customer).")
                      % {"limit": settings.LIMIT_ISO_GIB_PER_CUSTOMER}, "limit_reached", 409)

    def write(self, chunk: bytes) -> None:
        try:
            self.size += len(chunk)
            if self.limit is not None and self.size > self.limit:
                self._over()
            if len(self.head) < SIGNATURE_OFFSET + len(SIGNATURE):
                self.head += chunk[:SIGNATURE_OFFSET + len(SIGNATURE) - len(self.head)]
            self.digest.update(chunk)
            self.out.write(chunk)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        self.out.close()
        self.partial.unlink(missing_ok=True)

    def finish(self) -> Iso:
        final = iso_dir() / self.file_name
        try:
            self.out.flush()
            os.fsync(self.out.fileno())
            self.out.close()
            if self.length is not None and self.size != self.length:
                raise Refused(_("The upload was truncated: %(got)s of %(want)s bytes arrived.")
                              % {"got": self.size, "want": self.length}, "invalid", 400)
            if self.head[SIGNATURE_OFFSET:SIGNATURE_OFFSET + len(SIGNATURE)] != SIGNATURE:
                raise Refused(_("This is not an ISO image (no ISO 9660 volume descriptor)."), "invalid", 400)
            os.chmod(self.partial, 0o644)  # QEMU, a user of its own, reads it on the nodes
            os.rename(self.partial, final)
            with transaction.atomic():
                iso = Iso.objects.create(name=self.name, customer=self.customer, public=self.public,
                                         size_bytes=self.size, sha256=self.digest.hexdigest(),
                                         file_name=self.file_name)
                audit.record(self.actor, "iso.upload", iso, size=self.size, sha256=iso.sha256)
            return iso
        except BaseException:
            final.unlink(missing_ok=True)
            self.abort()
            raise


def store_upload(actor: Actor, chunks, name: str, *, length: int | None = None, public: bool = False,
                 customer: Customer | None = None) -> Iso:
    """Stream `chunks` (an iterable of bytes) into a new Iso. A customer's own ISO counts
    against LIMIT_ISO_GIB_PER_CUSTOMER: refused before writing beyond it. `length`, when the
    client declared one, must be what arrives (a shorter body is a truncated upload)."""
    writer = IsoWriter(actor, name, length=length, public=public, customer=customer)
    try:
        for chunk in chunks:
            writer.write(chunk)
    except BaseException:
        writer.abort()
        raise
    return writer.finish()


def delete_iso(actor: Actor, iso_id: int) -> None:
    with transaction.atomic():
        iso = actor.get_or_404(Iso.objects.select_for_update(), pk=iso_id)
        refused = iso.delete_refusal()
        if refused is not None:
            raise refused
        audit.record(actor, "iso.delete", iso, name=iso.name)
        path = iso.path
        iso.delete()
        operations.after_commit(lambda: path.unlink(missing_ok=True))  # the row may still come back


# -- boot media ------------------------------------------------------------------------------
# The server actions (API /servers/{id}/<name>/, the server page's ISO card): each records the
# boot media and starts the stopped server with its domain redefined from them.
MEDIA_ACTIONS = {
    "attach-iso": (ServerMedia.Boot.ISO, gettext_lazy("Boot from the ISO requested.")),
    "detach-iso": (ServerMedia.Boot.NORMAL, gettext_lazy("Normal boot requested.")),
    "rescue": (ServerMedia.Boot.RESCUE, gettext_lazy("Rescue boot requested.")),
    "unrescue": (ServerMedia.Boot.NORMAL, gettext_lazy("Normal boot requested.")),
}


def request_boot(actor: Actor, server_id: int, name: str, iso_id=None) -> Operation:
    """Set the server's boot media for action `name` of MEDIA_ACTIONS and start it with them."""
    boot, _requested = MEDIA_ACTIONS[name]
    with transaction.atomic():
        server = actor.get_or_404(VirtualServer.objects.select_for_update(), pk=server_id)
        iso = None
        if boot == ServerMedia.Boot.ISO:
            if iso_id in (None, ""):
                raise Refused(_("Name the ISO to attach."), "invalid", 400, field="iso")
            # Another customer's ISO does not exist for this one (nor for their server).
            owner = Actor(user=None, api_key=None, customer_id=server.customer_id, is_admin=False)
            iso = visible_isos(actor).filter(pk=iso_id).filter(
                pk__in=visible_isos(owner).values("pk")).first() if str(iso_id).isdigit() else None
            if iso is None:
                raise Refused(_("Unknown ISO."), "invalid", 400, field="iso")
        media = ServerMedia.objects.select_for_update().filter(server=server).first()
        current = media.boot if media else ServerMedia.Boot.NORMAL
        if name == "unrescue" and current != ServerMedia.Boot.RESCUE:
            raise Refused(_("The server is not in rescue mode."), "invalid_state")
        if name == "detach-iso" and current != ServerMedia.Boot.ISO:
            raise Refused(_("No ISO is attached to the server."), "invalid_state")
        if server.state == ServerState.SUSPENDED:
            raise Refused(_("The server is suspended: %(reason)s") % {"reason": server.suspend_reason or
                          _("no reason given")}, "server_suspended")
        if server.state != ServerState.STOPPED:
            raise Refused(_("The boot media change at a start: stop the server first."), "invalid_state")
        op = new_operation(actor, Operation.Kind.START, server=server, params={"define": True, "boot": boot})
        ServerMedia.objects.update_or_create(server=server, defaults={"iso": iso, "boot": boot})
        audit.record(actor, f"server.{name}", server, operation=op.id, **({"iso": iso.name} if iso else {}))
        hand_over(op)
    return op

"""IP pools and the addresses handed out from them."""

import ipaddress

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext, gettext_lazy as _

from nodes.models import Network
from panel.refusals import Refused
from panel.vps.models import VirtualServer, hostname_validator


def default_quarantine() -> int:
    return settings.IP_QUARANTINE_MINUTES


def _address_list(text: str) -> list[str]:
    return [item.strip() for item in text.replace("\n", ",").split(",") if item.strip()]


class IpPool(models.Model):
    """A range of addresses of one subnet that servers on a network get their addresses from."""

    class Assign(models.TextChoices):
        ADDRESS = "address", _("Single addresses")
        PREFIX64 = "prefix64", _("A /64 per server (IPv6)")

    name = models.CharField(max_length=100, unique=True)
    network = models.ForeignKey(Network, on_delete=models.PROTECT, related_name="ip_pools")
    cidr = models.CharField(max_length=43, help_text=_("The subnet, e.g. 203.0.113.0/24 or 2001:db8::/48"))
    first = models.CharField(max_length=39, blank=True, help_text=_("First address handed out (default: the first host)"))
    last = models.CharField(max_length=39, blank=True, help_text=_("Last address handed out (default: the last host)"))
    gateway = models.CharField(max_length=39, blank=True)
    dns = models.CharField(max_length=200, blank=True, help_text=_("DNS servers, comma-separated"))
    excluded = models.TextField(blank=True, help_text=_("Addresses never handed out, comma- or line-separated"))
    assign = models.CharField(max_length=8, choices=Assign.choices, default=Assign.ADDRESS)
    quarantine_minutes = models.PositiveIntegerField(
        default=default_quarantine, validators=[MaxValueValidator(60 * 24 * 90)],
        help_text=_("A released address waits this long before it is handed out again"))
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.cidr})"

    def delete_refusal(self) -> Refused | None:
        """Why the pool cannot be deleted (the UI and the API ask this), or None. Its addresses in
        quarantine go with it."""
        if self.addresses.filter(server__isnull=False).exists():
            return Refused(gettext("Addresses of this pool are in use; release or move them first."), "pool_in_use")
        return None

    # -- the subnet, as ipaddress objects --------------------------------------------------
    @property
    def subnet(self):
        return ipaddress.ip_network(self.cidr, strict=True)

    @property
    def version(self) -> int:
        return self.subnet.version

    @property
    def prefix_len(self) -> int:
        """The prefix a handed-out address carries: the subnet's, or 64 for /64 delegations."""
        return 64 if self.assign == self.Assign.PREFIX64 else self.subnet.prefixlen

    def bounds(self) -> tuple[int, int]:
        """First and last ordinal (integer) handed out."""
        net = self.subnet
        if self.assign == self.Assign.PREFIX64:
            step = 1 << (128 - 64)
            start = int(ipaddress.ip_address(self.first)) if self.first else int(net.network_address)
            end = int(ipaddress.ip_address(self.last)) if self.last else int(net.broadcast_address) - step + 1
            return start, end
        hosts_start = int(net.network_address) + (1 if net.num_addresses > 2 else 0)
        hosts_end = int(net.broadcast_address) - (1 if net.version == 4 and net.num_addresses > 2 else 0)
        start = int(ipaddress.ip_address(self.first)) if self.first else hosts_start
        end = int(ipaddress.ip_address(self.last)) if self.last else hosts_end
        return start, end

    def step(self) -> int:
        return 1 << (128 - 64) if self.assign == self.Assign.PREFIX64 else 1

    def excluded_ordinals(self) -> set[int]:
        values = {int(ipaddress.ip_address(a)) for a in _address_list(self.excluded)}
        if self.gateway:
            values.add(int(ipaddress.ip_address(self.gateway)))
        return values

    def dns_servers(self) -> list[str]:
        return _address_list(self.dns)

    def size(self) -> int:
        start, end = self.bounds()
        count = (end - start) // self.step() + 1
        return count - sum(1 for v in self.excluded_ordinals() if start <= v <= end and (v - start) % self.step() == 0)

    def clean(self) -> None:
        errors = {}
        try:
            net = self.subnet
        except ValueError as exc:
            raise ValidationError({"cidr": [str(exc)]})
        if self.network_id and self.network.kind == Network.Kind.NAT and net.version == 4:
            if not net.subnet_of(ipaddress.ip_network(self.network.nat_cidr)):
                errors["cidr"] = [_("A pool of a NAT network lies inside its private range.")]
        if self.assign == self.Assign.PREFIX64 and (net.version != 6 or net.prefixlen > 64):
            errors["assign"] = [_("/64 delegation needs an IPv6 subnet of /64 or larger.")]

        def inside(field: str, value: str) -> None:
            if not value:
                return
            try:
                address = ipaddress.ip_address(value)
            except ValueError:
                errors.setdefault(field, []).append(_("%(value)s is not an IP address.") % {"value": value})
                return
            if address not in net:
                errors.setdefault(field, []).append(
                    _("%(value)s is outside %(cidr)s.") % {"value": value, "cidr": self.cidr})

        inside("gateway", self.gateway)
        inside("first", self.first)
        inside("last", self.last)
        for value in _address_list(self.excluded):
            inside("excluded", value)
        for value in _address_list(self.dns):
            try:
                ipaddress.ip_address(value)
            except ValueError:
                errors.setdefault("dns", []).append(_("%(value)s is not an IP address.") % {"value": value})
        if not errors:
            start, end = self.bounds()
            if start > end:
                errors["last"] = [_("The range ends before it starts.")]
        for other in IpPool.objects.exclude(pk=self.pk):
            try:
                if other.subnet.version == net.version and other.subnet.overlaps(net):
                    errors.setdefault("cidr", []).append(
                        _("Overlaps pool %(name)s (%(cidr)s).") % {"name": other.name, "cidr": other.cidr})
            except ValueError:
                continue
        if errors:
            raise ValidationError(errors)


ptr_validator = hostname_validator


def ordinal_key(value: int) -> str:
    return f"{value:039d}"


class IpAddress(models.Model):
    """An address taken from a pool: in use by a server, or released and in quarantine."""

    customer_path = "server__customer"  # how a row reaches its customer (panel.accounts.tenancy)
    admins_only = Q(server__isnull=True)  # in quarantine: no one's

    pool = models.ForeignKey(IpPool, on_delete=models.PROTECT, related_name="addresses")
    address = models.CharField(max_length=39)
    # The address as a zero-padded 39-digit integer: exact for IPv6 on every backend (SQLite
    # keeps decimals as floats), and it sorts as the addresses do.
    ordinal = models.CharField(max_length=39)
    server = models.ForeignKey(VirtualServer, null=True, blank=True, on_delete=models.SET_NULL,
                               related_name="ip_addresses")
    ptr = models.CharField(max_length=253, blank=True, validators=[ptr_validator],
                           help_text=_("Reverse DNS name"))
    allocated_at = models.DateTimeField(null=True, blank=True)
    released_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["pool_id", "ordinal"]
        constraints = [models.UniqueConstraint(fields=["pool", "ordinal"], name="unique_pool_address")]

    def __str__(self) -> str:
        return self.with_prefix

    @property
    def with_prefix(self) -> str:
        return f"{self.address}/{self.pool.prefix_len}"

    @property
    def version(self) -> int:
        return 6 if ":" in self.address else 4

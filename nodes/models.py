"""A node is a KVM host the panel manages through libvirt."""

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext, gettext_lazy as _

from nodes.hostkeys import fingerprint
from panel.refusals import Refused


class Cluster(models.Model):
    """Nodes of one OS family that share storages and networks, with over-commit ratios."""

    class Family(models.TextChoices):
        APT = "apt", _("Debian / Ubuntu")
        DNF = "dnf", _("RHEL family")

    name = models.CharField(max_length=100, unique=True)
    os_family = models.CharField(max_length=3, choices=Family.choices, default=Family.APT)
    # Guests rarely use all their vCPUs at once; RAM is not over-committed by default.
    cpu_overcommit = models.DecimalField(max_digits=4, decimal_places=2, default=4,
                                         validators=[MinValueValidator(1), MaxValueValidator(32)])
    ram_overcommit = models.DecimalField(max_digits=4, decimal_places=2, default=1,
                                         validators=[MinValueValidator(1), MaxValueValidator(4)])
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.name

    def delete_refusal(self) -> Refused | None:
        """Why the cluster cannot be deleted (the UI and the API ask this), or None."""
        if self.nodes.exists():
            return Refused(gettext("The cluster still has nodes; remove them first."), "cluster_has_nodes")
        if self.storages.filter(servers__isnull=False).exists():
            return Refused(gettext("Servers have disks on this cluster's storages."), "cluster_in_use")
        if self.networks.filter(Q(ip_pools__isnull=False) | Q(nics__isnull=False)).exists():
            return Refused(gettext("IP pools or servers use this cluster's networks; delete the pools first."),
                           "cluster_in_use")
        return None


class Storage(models.Model):
    """Where a cluster's server disks live: a local directory, an NFS share or an LVM group."""

    class Kind(models.TextChoices):
        DIR = "dir", _("Local directory (qcow2 files)")
        NFS = "nfs", _("NFS share")
        LVM = "lvm", _("LVM volume group")

    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="storages")
    name = models.CharField(max_length=50, validators=[RegexValidator(r"^[a-z][a-z0-9_-]*$")])
    kind = models.CharField(max_length=3, choices=Kind.choices, default=Kind.DIR)
    # dir and nfs: the directory on every node (the NFS mount point); lvm: unused.
    path = models.CharField(max_length=300, blank=True, validators=[RegexValidator(r"^/[A-Za-z0-9._/-]*$")])
    nfs_source = models.CharField(max_length=300, blank=True, help_text=_("host:/export, for NFS"),
                                  validators=[RegexValidator(r"^[A-Za-z0-9.-]+:/[A-Za-z0-9._/-]*$")])
    volume_group = models.CharField(max_length=100, blank=True, validators=[RegexValidator(r"^[A-Za-z0-9_.+-]+$")])
    holds_templates = models.BooleanField(default=False, help_text=_("The OS-template share"))

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["cluster", "name"], name="unique_storage_name")]

    def __str__(self) -> str:
        return f"{self.cluster}/{self.name}"

    def delete_refusal(self) -> Refused | None:
        """Why the storage cannot be deleted (the UI and the API ask this), or None."""
        return Refused(gettext("Servers have disks on this storage."), "storage_in_use") if self.servers.exists() else None

    def clean(self) -> None:
        if self.kind in (self.Kind.DIR, self.Kind.NFS) and not self.path:
            raise ValidationError({"path": _("A directory or NFS storage needs a path.")})
        if self.kind == self.Kind.NFS and not self.nfs_source:
            raise ValidationError({"nfs_source": _("An NFS storage needs its source (host:/export).")})
        if self.kind == self.Kind.LVM and not self.volume_group:
            raise ValidationError({"volume_group": _("An LVM storage needs a volume group.")})

    @property
    def pool_name(self) -> str:
        """The libvirt storage pool of this storage on every node."""
        return f"panel-{self.name}"


class Network(models.Model):
    """A network of a cluster that servers' NICs attach to, made on every node by the installer.

    bridged: a bridge over a physical interface (optionally a VLAN on it) — public addresses;
    nat: a bridge the node routes and masquerades for a private range (the node is its .1).
    """

    class Kind(models.TextChoices):
        BRIDGED = "bridged", _("Public, bridged")
        NAT = "nat", _("Private, with NAT")

    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="networks")
    name = models.CharField(max_length=50, validators=[RegexValidator(r"^[a-z][a-z0-9_-]*$")])
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.BRIDGED)
    # Linux interface names are at most 15 characters.
    bridge = models.CharField(max_length=15, validators=[RegexValidator(r"^[a-z][a-z0-9_-]{0,14}$")])
    interface = models.CharField(max_length=15, blank=True, help_text=_("bridged: the uplink on every node"),
                                 validators=[RegexValidator(r"^[a-z][a-z0-9_.-]{0,14}$")])
    vlan = models.PositiveSmallIntegerField(null=True, blank=True,
                                            validators=[MinValueValidator(1), MaxValueValidator(4094)])
    nat_cidr = models.CharField(max_length=43, blank=True, help_text=_("nat: the private range, e.g. 10.0.0.0/24"))

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["cluster", "name"], name="unique_network_name"),
            models.UniqueConstraint(fields=["cluster", "bridge"], name="unique_network_bridge"),
        ]

    def __str__(self) -> str:
        return f"{self.cluster}/{self.name}"

    def delete_refusal(self) -> Refused | None:
        """Why the network cannot be deleted (the UI and the API ask this), or None."""
        if self.nics.exists() or self.ip_pools.exists():
            return Refused(gettext("Servers or IP pools use this network; it stays."), "network_in_use")
        return None

    def clean(self) -> None:
        import ipaddress

        if self.kind == self.Kind.BRIDGED and not self.interface:
            raise ValidationError({"interface": _("A bridged network needs the nodes' uplink interface.")})
        if self.kind == self.Kind.NAT:
            try:
                net = ipaddress.ip_network(self.nat_cidr, strict=True)
            except ValueError:
                raise ValidationError({"nat_cidr": _("A NAT network needs its private range, e.g. 10.0.0.0/24.")})
            if net.version != 4 or not net.is_private or net.num_addresses < 4:
                raise ValidationError({"nat_cidr": _("A private IPv4 range of at least 4 addresses.")})

    @property
    def uplink(self) -> str:
        """The interface the bridge is built on: the VLAN sub-interface when tagged."""
        return f"{self.interface}.{self.vlan}" if self.vlan else self.interface

    @property
    def nat_gateway(self) -> str:
        import ipaddress

        return str(next(ipaddress.ip_network(self.nat_cidr).hosts()))


class Node(models.Model):
    """A hypervisor host. Its live state is written by jobs (health, installer), never fetched here."""

    class State(models.TextChoices):
        INSTALLING = "installing", _("Installing")
        ONLINE = "online", _("Online")
        DEGRADED = "degraded", _("Degraded")
        OFFLINE = "offline", _("Offline")
        MAINTENANCE = "maintenance", _("Maintenance")

    name = models.CharField(max_length=100, unique=True)
    cluster = models.ForeignKey(Cluster, null=True, blank=True, on_delete=models.PROTECT, related_name="nodes")
    # libvirt URI: qemu:///system for the panel's own host, qemu+ssh://… for remote nodes,
    # fake://NAME for the in-memory driver of the unit tests.
    uri = models.CharField(max_length=300, unique=True)
    # Empty (NULL) for the panel's own host; unique with the port, so a node cannot be added twice.
    address = models.CharField(max_length=253, null=True, blank=True)
    ssh_port = models.PositiveIntegerField(default=22, validators=[MinValueValidator(1), MaxValueValidator(65535)])
    ssh_user = models.CharField(max_length=32, default="root", validators=[RegexValidator(r"^[a-z_][a-z0-9_-]*$")])
    # Pinned at first contact: "<type> <base64>"; a different key refuses the connection.
    host_key = models.TextField(blank=True)
    # A different key seen later, kept for the admin to inspect and accept.
    offered_host_key = models.TextField(blank=True)
    state = models.CharField(max_length=12, choices=State.choices, default=State.ONLINE)
    last_error = models.TextField(blank=True)
    os_name = models.CharField(max_length=100, blank=True)
    virt_type = models.CharField(max_length=8, blank=True, help_text=_("kvm, or qemu (software emulation)"))
    cpus = models.PositiveIntegerField(default=0)
    ram_mib = models.PositiveBigIntegerField(default=0)
    # {"<storage id>": {"total_gib": …, "free_gib": …}} as read by the installer and health checks.
    storage_capacity = models.JSONField(default=dict, blank=True)
    storage_dir = models.CharField(max_length=300, help_text=_("Directory on the node for server disks"))
    libvirt_version = models.CharField(max_length=20, blank=True)
    qemu_version = models.CharField(max_length=20, blank=True)
    # {"kvm" | "shaping" | "nwfilter" | "backup" | "guest_agent" | "nested": {"ok": bool | None,
    # "detail": str}} as probed at install or registration (nodes/capabilities.py); a missing
    # key is unknown, and placement allows it.
    capabilities = models.JSONField(default=dict, blank=True)
    # What servers placed here take; kept in the placement transaction (nodes/placement.py)
    # and recomputed by the reconciler.
    alloc_vcpus = models.PositiveIntegerField(default=0)
    alloc_ram_mib = models.PositiveBigIntegerField(default=0)
    alloc_disk_gib = models.PositiveBigIntegerField(default=0)
    checked_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["address", "ssh_port"], name="unique_node_address"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_remote(self) -> bool:
        return bool(self.address)

    @property
    def host_key_fingerprint(self) -> str:
        return fingerprint(self.host_key) if self.host_key else ""

    @property
    def offered_host_key_fingerprint(self) -> str:
        return fingerprint(self.offered_host_key) if self.offered_host_key else ""


class PanelIdentity(models.Model):
    """The panel's own SSH key pair, installed on every node it manages."""

    private_key = models.TextField(help_text=_("OpenSSH private key, encrypted"))
    public_key = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)


class Drift(models.Model):
    """A difference the reconciler found between the database and a node's libvirt."""

    customer_path = "server__customer"  # how a row reaches its customer (panel.accounts.tenancy)

    class Kind(models.TextChoices):
        UNKNOWN_DOMAIN = "unknown_domain", _("Domain unknown to the panel")
        MISSING_DOMAIN = "missing_domain", _("Server's domain is missing")
        STATE_MISMATCH = "state_mismatch", _("State differs")
        STALE_OPERATION = "stale_operation", _("Operation lost its worker")
        NODE_UNREACHABLE = "node_unreachable", _("Node unreachable")

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="drifts")
    server = models.ForeignKey("vps.VirtualServer", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    domain_name = models.CharField(max_length=200, blank=True)
    kind = models.CharField(max_length=20, choices=Kind.choices)
    detail = models.TextField()
    repaired = models.BooleanField(default=False, help_text=_("The reconciler fixed it"))
    seen_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-id"]

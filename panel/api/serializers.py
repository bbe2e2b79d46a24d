"""Serializers of API v1: the shapes of ../API.md."""

from django.contrib.auth.password_validation import validate_password
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from panel.accounts.models import ApiKey, AuditEntry, Customer, User
from panel.accounts.tenancy import actor
from panel.vps.models import Operation, Plan, VirtualServer, hostname_validator
from nodes.models import Cluster, Network, Node, Storage
from panel.ipam.models import IpAddress, IpPool
from recipes import sealing
from recipes.models import Recipe, normalize_parameters
from templates_os.models import Installation, OsTemplate


class TenantRelatedField(serializers.PrimaryKeyRelatedField):
    """A related object named by id, looked up among what the caller may see: another
    customer's object is "does not exist", like a missing one (no existence oracle)."""

    def get_queryset(self):
        queryset = super().get_queryset()
        model = queryset.model
        if getattr(model, "customer_path", None) is None and getattr(model, "admins_only", None) is None:
            return queryset  # no customer's data (plans, nodes, pools)
        request = self.context.get("request")
        # Without a request there is no caller to look up for: nothing is found.
        return actor(request).restrict(queryset) if request is not None else queryset.none()


class PanelModelSerializer(serializers.ModelSerializer):
    serializer_related_field = TenantRelatedField  # the model's foreign keys, as above


class CustomerSerializer(PanelModelSerializer):
    class Meta:
        model = Customer
        fields = ["id", "external_id", "email", "name", "language", "created_at"]


class PlanSerializer(PanelModelSerializer):
    class Meta:
        model = Plan
        fields = ["id", "name", "vcpus", "ram_mib", "disk_gib", "traffic_gib", "bandwidth_mbit",
                  "ipv4_count", "ipv6_count", "backups", "throttled_mbit", "snapshots", "snapshot_memory",
                  "data_disks", "data_disk_gib", "clones", "created_at"]


class ServerSerializer(PanelModelSerializer):
    ipv4 = serializers.SerializerMethodField()
    ipv6 = serializers.SerializerMethodField()

    class Meta:
        model = VirtualServer
        fields = ["id", "uuid", "hostname", "state", "customer", "plan", "node", "os_template", "ipv4", "ipv6",
                  "vcpus", "ram_mib", "disk_gib", "suspend_reason", "error", "created_at", "updated_at"]
        read_only_fields = fields

    def get_ipv4(self, obj) -> list[str]:
        # From the prefetched addresses (ServerViewSet): one query per page, not per server.
        return [a.address for a in obj.ip_addresses.all() if a.version == 4]

    def get_ipv6(self, obj) -> list[str]:
        return [a.address for a in obj.ip_addresses.all() if a.version == 6]


class InstallationSerializer(PanelModelSerializer):
    """The server's latest install: its recipe's outcome and output."""

    recipe = serializers.SlugRelatedField(slug_field="slug", read_only=True, allow_null=True)
    os_template = serializers.SlugRelatedField(source="template", slug_field="slug", read_only=True, allow_null=True)
    recipe_params = serializers.SerializerMethodField(help_text="The values of the parameters not declared secret")
    recipe_secrets = serializers.SerializerMethodField(
        help_text="The parameters declared secret: whether each was given (their values are never shown)")

    class Meta:
        model = Installation
        fields = ["id", "status", "os_template", "recipe", "recipe_params", "recipe_secrets", "config_served_at",
                  "finished_at", "recipe_exit_code", "recipe_output", "created_at"]
        read_only_fields = fields

    def get_recipe_params(self, obj) -> dict[str, str]:
        return sealing.shown(obj.recipe_params, obj.recipe)[0]

    def get_recipe_secrets(self, obj) -> dict[str, bool]:
        return sealing.shown(obj.recipe_params, obj.recipe)[1]


class ServerDetailSerializer(ServerSerializer):
    install = serializers.SerializerMethodField()

    class Meta(ServerSerializer.Meta):
        fields = ServerSerializer.Meta.fields + ["install"]
        read_only_fields = fields

    @extend_schema_field(InstallationSerializer(allow_null=True))
    def get_install(self, obj):
        latest = obj.installations.select_related("template", "recipe").first()
        return InstallationSerializer(latest).data if latest else None


class InstallChoiceSerializer(serializers.Serializer):
    """What to install: the template and recipe by id or slug; the password is generated when
    not given and returned once."""

    os_template = serializers.CharField(max_length=64, help_text="An OS template's id or slug")
    recipe = serializers.CharField(max_length=64, required=False, allow_null=True, allow_blank=True,
                                   help_text="A recipe's id or slug")
    recipe_params = serializers.DictField(child=serializers.CharField(allow_blank=True, max_length=4096),
                                          required=False, default=dict)
    password = serializers.CharField(required=False, allow_blank=True, max_length=128, write_only=True,
                                     trim_whitespace=False, style={"input_type": "password"})
    ssh_keys = serializers.ListField(child=serializers.CharField(max_length=4096), required=False, default=list,
                                     max_length=20)


class ReinstallSerializer(InstallChoiceSerializer):
    os_template = serializers.CharField(max_length=64, required=False, help_text="Default: the current one")


class ServerCreateSerializer(InstallChoiceSerializer):
    customer = TenantRelatedField(queryset=Customer.objects.all(), required=False)
    plan = TenantRelatedField(queryset=Plan.objects.all())
    hostname = serializers.CharField(max_length=253, validators=[hostname_validator])
    node = TenantRelatedField(queryset=Node.objects.all(), required=False, allow_null=True)
    cluster = TenantRelatedField(queryset=Cluster.objects.all(), required=False, allow_null=True)
    private_network = serializers.BooleanField(default=False, help_text="Also a NIC on the cluster's NAT network")


def is_admin_caller(context: dict) -> bool:
    """The serializer's caller is a provider admin; without a request, the safe answer (no)."""
    request = context.get("request")
    return request is not None and actor(request).is_admin


class OperationSerializer(PanelModelSerializer):
    """An operation as its caller may see it: admins all of it; everyone else (customers,
    billing keys) the customer's log and error, and `requested_by` "provider" when it was not
    one of the customer's own users or keys (panel.vps.models.Operation)."""

    params = serializers.SerializerMethodField()
    requested_by = serializers.CharField(read_only=True, help_text=(
        "Who asked: for admins the user or key; for anyone else the customer's own user or key, "
        "or \"provider\" for the provider's admins, billing keys and the panel itself"))
    error = serializers.CharField(read_only=True, help_text=(
        "Why it failed, as the caller may read it: a customer's reason names no infrastructure"))

    def to_representation(self, instance):
        return super().to_representation(instance.seen_by(is_admin_caller(self.context)))

    def get_params(self, op) -> dict:
        return {k: v for k, v in op.params.items() if k != "secret"}  # a node credential, even encrypted

    class Meta:
        model = Operation
        fields = ["id", "kind", "status", "progress", "error", "server", "node", "customer", "params", "requested_by",
                  "created_at", "started_at", "finished_at"]
        read_only_fields = fields


class OperationDetailSerializer(OperationSerializer):
    log = serializers.CharField(read_only=True, help_text=(
        "The log as the caller may read it: admins every line, anyone else the customer's lines only"))

    class Meta(OperationSerializer.Meta):
        fields = OperationSerializer.Meta.fields + ["log"]
        read_only_fields = fields


class AcceptedSerializer(OperationSerializer):
    """The 202 answer: the Operation, with the server's current state."""

    server_state = serializers.SerializerMethodField()

    class Meta(OperationSerializer.Meta):
        fields = OperationSerializer.Meta.fields + ["server_state"]
        read_only_fields = fields

    def get_server_state(self, op) -> dict | None:
        server = VirtualServer.objects.filter(pk=op.server_id).first()
        return ServerSerializer(server).data if server else None


class AcceptedWithPasswordSerializer(AcceptedSerializer):
    """The 202 answer of create and reinstall: also the root password, this once."""

    password = serializers.CharField(help_text="The root password; shown only in this answer")

    class Meta(AcceptedSerializer.Meta):
        fields = AcceptedSerializer.Meta.fields + ["password"]
        read_only_fields = fields


class OsTemplateSerializer(PanelModelSerializer):
    class Meta:
        model = OsTemplate
        fields = ["id", "slug", "name", "family", "version", "installer", "min_disk_gib"]
        read_only_fields = fields


class OsTemplateAdminSerializer(PanelModelSerializer):
    class Meta:
        model = OsTemplate
        fields = ["id", "slug", "name", "family", "version", "installer", "min_disk_gib", "install_timeout",
                  "valid", "invalid_reason", "enabled", "position", "scanned_at"]
        read_only_fields = [f for f in fields if f not in ("enabled", "position")]


class RecipeSerializer(PanelModelSerializer):
    class Meta:
        model = Recipe
        fields = ["id", "slug", "name", "description", "os_families", "parameters"]
        read_only_fields = fields


class RecipeAdminSerializer(PanelModelSerializer):
    os_families = serializers.ListField(child=serializers.SlugField(max_length=32), min_length=1)
    parameters = serializers.ListField(child=serializers.DictField(), required=False, default=list)

    class Meta:
        model = Recipe
        fields = ["id", "slug", "name", "description", "os_families", "parameters", "script", "enabled",
                  "created_at", "updated_at"]
        read_only_fields = ["created_at", "updated_at"]

    def validate_parameters(self, value):
        from django.core.exceptions import ValidationError as DjangoValidationError

        try:
            return normalize_parameters(value)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict["parameters"]) from None

    def validate_script(self, value: str) -> str:
        if not value.strip() or "\x00" in value:
            raise serializers.ValidationError("The script is empty or contains NUL.")
        return value


class ConsoleSerializer(serializers.Serializer):
    url = serializers.URLField(help_text="Open within expires_at; usable once")
    expires_at = serializers.DateTimeField()


class MigrateSerializer(serializers.Serializer):
    node = TenantRelatedField(queryset=Node.objects.all())
    live = serializers.BooleanField(default=True)


class StopSerializer(serializers.Serializer):
    force = serializers.BooleanField(default=False)
    timeout = serializers.IntegerField(min_value=0, max_value=3600, required=False,
                                       help_text="Seconds to wait for a graceful shutdown before forcing")


class SuspendSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=500, allow_blank=True, default="")


class EmptySerializer(serializers.Serializer):
    pass


class UserSerializer(PanelModelSerializer):
    password = serializers.CharField(write_only=True, required=False, style={"input_type": "password"})

    class Meta:
        model = User
        fields = ["id", "username", "email", "role", "customer", "language", "is_active", "password",
                  "last_login", "date_joined"]
        read_only_fields = ["last_login", "date_joined"]

    def validate_password(self, value: str) -> str:
        validate_password(value)
        return value

    def validate(self, attrs):
        role = attrs.get("role", getattr(self.instance, "role", User.Role.CUSTOMER))
        customer = attrs.get("customer", getattr(self.instance, "customer", None))
        if role == User.Role.CUSTOMER and customer is None:
            raise serializers.ValidationError({"customer": ["A customer's user needs a customer."]})
        if role == User.Role.ADMIN and customer is not None:
            raise serializers.ValidationError({"customer": ["A provider admin belongs to no customer."]})
        return attrs

    def create(self, validated):
        password = validated.pop("password", None)
        user = User(**validated)
        if password:
            user.set_password(password)
        else:
            user.set_unusable_password()
        user.save()
        return user

    def update(self, instance, validated):
        password = validated.pop("password", None)
        for name, value in validated.items():
            setattr(instance, name, value)
        if password:
            instance.set_password(password)
        instance.save()
        return instance


class ApiKeySerializer(PanelModelSerializer):
    class Meta:
        model = ApiKey
        fields = ["id", "name", "scope", "customer", "prefix", "created_at", "last_used_at", "last_used_from",
                  "revoked_at"]
        read_only_fields = ["prefix", "created_at", "last_used_at", "last_used_from", "revoked_at"]

    def validate(self, attrs):
        scope, customer = attrs.get("scope"), attrs.get("customer")
        if scope == ApiKey.Scope.CUSTOMER and customer is None:
            raise serializers.ValidationError({"customer": ["A customer key needs a customer."]})
        if scope != ApiKey.Scope.CUSTOMER and customer is not None:
            raise serializers.ValidationError({"customer": ["Only customer keys belong to a customer."]})
        return attrs


class ApiKeyCreatedSerializer(ApiKeySerializer):
    key = serializers.CharField(read_only=True, help_text="The key itself: shown this once, never again")

    class Meta(ApiKeySerializer.Meta):
        fields = ApiKeySerializer.Meta.fields + ["key"]


class AuditEntrySerializer(PanelModelSerializer):
    class Meta:
        model = AuditEntry
        fields = ["id", "created_at", "user", "api_key", "actor_repr", "customer", "action", "object_type",
                  "object_id", "object_repr", "address", "detail"]
        read_only_fields = fields


class NodeSerializer(PanelModelSerializer):
    host_key_fingerprint = serializers.CharField(read_only=True)
    offered_host_key_fingerprint = serializers.CharField(read_only=True)

    class Meta:
        model = Node
        fields = ["id", "name", "cluster", "address", "ssh_port", "ssh_user", "uri", "state", "last_error",
                  "host_key_fingerprint", "offered_host_key_fingerprint", "os_name", "virt_type", "cpus", "ram_mib",
                  "storage_capacity", "alloc_vcpus", "alloc_ram_mib", "alloc_disk_gib", "libvirt_version",
                  "qemu_version", "capabilities", "checked_at", "created_at"]
        read_only_fields = fields


class NodeCreateSerializer(serializers.Serializer):
    name = serializers.RegexField(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$", required=False)
    cluster = TenantRelatedField(queryset=Cluster.objects.all())
    address = serializers.CharField(max_length=253)
    ssh_port = serializers.IntegerField(min_value=1, max_value=65535, default=22)
    ssh_user = serializers.RegexField(r"^[a-z_][a-z0-9_-]{0,31}$", default="root")
    ssh_password = serializers.CharField(required=False, write_only=True, style={"input_type": "password"})
    ssh_private_key = serializers.CharField(required=False, write_only=True)

    def validate_address(self, value: str) -> str:
        import ipaddress
        import re

        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            if re.fullmatch(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*",
                            value):
                return value.lower()
        raise serializers.ValidationError("An IP address or a host name.")

    def validate_ssh_private_key(self, value: str) -> str:
        from nodes.ssh import SshError, load_private_key

        try:
            load_private_key(value)
        except SshError as exc:
            raise serializers.ValidationError(str(exc))
        return value

    def validate(self, attrs):
        if bool(attrs.get("ssh_password")) == bool(attrs.get("ssh_private_key")):
            raise serializers.ValidationError({"ssh_password": ["Give ssh_password or ssh_private_key (one of them)."]})
        return attrs


class AcceptHostKeySerializer(serializers.Serializer):
    fingerprint = serializers.CharField(help_text="The offered key's SHA256 fingerprint, as the admin checked it")


class MaintenanceSerializer(serializers.Serializer):
    enabled = serializers.BooleanField()


class ClusterSerializer(PanelModelSerializer):
    class Meta:
        model = Cluster
        fields = ["id", "name", "os_family", "cpu_overcommit", "ram_overcommit", "created_at"]


class StorageSerializer(PanelModelSerializer):
    class Meta:
        model = Storage
        fields = ["id", "cluster", "name", "kind", "path", "nfs_source", "volume_group", "holds_templates"]

    def validate(self, attrs):
        probe = Storage(**{**({f: getattr(self.instance, f) for f in self.Meta.fields[1:]} if self.instance else {}),
                           **attrs})
        from django.core.exceptions import ValidationError as DjangoValidationError

        try:
            probe.clean()
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict)
        return attrs


class NetworkSerializer(PanelModelSerializer):
    class Meta:
        model = Network
        fields = ["id", "cluster", "name", "kind", "bridge", "interface", "vlan", "nat_cidr"]

    def validate(self, attrs):
        return model_clean(Network, self.instance, attrs)


def model_clean(model, instance, attrs):
    """Run the model's clean() on the merged values: the same invariants as the UI's forms."""
    from django.core.exceptions import ValidationError as DjangoValidationError

    values = {f.name: getattr(instance, f.name) for f in model._meta.concrete_fields if instance} if instance else {}
    probe = model(**{**values, **attrs})
    try:
        probe.clean()
    except DjangoValidationError as exc:
        raise serializers.ValidationError(exc.message_dict)
    return attrs


class IpPoolSerializer(PanelModelSerializer):
    version = serializers.IntegerField(read_only=True)
    usage = serializers.SerializerMethodField()

    class Meta:
        model = IpPool
        fields = ["id", "name", "network", "cidr", "version", "first", "last", "gateway", "dns", "excluded", "assign",
                  "quarantine_minutes", "usage", "created_at"]

    def get_usage(self, pool) -> dict:
        from panel.ipam.allocation import usage

        return usage(pool)

    def validate(self, attrs):
        return model_clean(IpPool, self.instance, attrs)


class IpAddressSerializer(PanelModelSerializer):
    prefix_len = serializers.SerializerMethodField()
    network = serializers.SerializerMethodField()

    class Meta:
        model = IpAddress
        fields = ["id", "pool", "network", "address", "prefix_len", "server", "ptr", "allocated_at", "released_at"]
        read_only_fields = ["pool", "network", "address", "prefix_len", "server", "allocated_at", "released_at"]

    def get_prefix_len(self, row) -> int:
        return row.pool.prefix_len

    def get_network(self, row) -> int:
        return row.pool.network_id


class IpAddressCreateSerializer(serializers.Serializer):
    server = TenantRelatedField(queryset=VirtualServer.objects.all())
    pool = TenantRelatedField(queryset=IpPool.objects.all())
    address = serializers.CharField(required=False, allow_blank=True, default="",
                                    help_text="A specific address of the pool; else the next free one")


class IpAddressUpdateSerializer(serializers.Serializer):
    server = TenantRelatedField(queryset=VirtualServer.objects.all(), required=False,
                                                help_text="Move the address to this server (admins)")
    ptr = serializers.CharField(max_length=253, required=False, allow_blank=True,
                                validators=[hostname_validator], help_text="Reverse DNS name")


class ChangePlanSerializer(serializers.Serializer):
    plan = TenantRelatedField(queryset=Plan.objects.all(), help_text="The new plan; disks only grow")


class ResetPasswordSerializer(serializers.Serializer):
    password = serializers.CharField(required=False, allow_blank=True, max_length=128, write_only=True,
                                     trim_whitespace=False, style={"input_type": "password"},
                                     help_text="The new root password; generated when not given")


class PasswordResetAcceptedSerializer(AcceptedWithPasswordSerializer):
    """The 202 answer of reset-password: the password this once, and whether it took effect."""

    applies = serializers.ChoiceField(
        choices=["now", "agent_required", "failed", "pending"],
        help_text="now: the guest agent set it; agent_required: the server runs no guest agent, nothing changed; "
                  "failed: not set, see `error`; pending: the operation has not finished yet (poll it: its "
                  "params get `applies`)")

    class Meta(AcceptedWithPasswordSerializer.Meta):
        fields = AcceptedWithPasswordSerializer.Meta.fields + ["applies"]
        read_only_fields = fields

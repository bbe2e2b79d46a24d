"""API v1 viewsets: validate, call one function, return the object or 202 with the Operation."""

from django.db import transaction
from django.db.models import ProtectedError
from django.urls import reverse
from django.utils.translation import gettext as _
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response

from panel import limits
from panel.accounts import audit
from panel.accounts.models import ApiKey, AuditEntry, Customer, User
from panel.api import serializers as s
from panel.api.filters import (ApiKeyFilter, AuditFilter, CustomerFilter, OperationFilter, ServerFilter,
                               refuse_unknown_parameters, refuse_unknown_write_parameters)
from panel.api.idempotency import IdempotentViewMixin
from panel.api.permissions import IsAdmin, IsAdminOrReadOnly, IsProviderOrReadOnly, actor
from panel.vps import lifecycle
from panel.refusals import Refused
from panel.vps.models import Operation, Plan, VirtualServer
from nodes import actions as node_actions
from nodes.models import Cluster, Network, Node, Storage
from panel.ipam import actions as ipam_actions
from panel.ipam.models import IpAddress, IpPool
from recipes.models import Recipe
from templates_os.models import OsTemplate


class PanelViewSet(IdempotentViewMixin, viewsets.GenericViewSet):
    """Base: tenancy through the Actor (each model declares its path to the customer, see
    panel/accounts/tenancy.py), audit on every write, Idempotency-Key on POST; a delete that
    the database protects against is a 409, whichever view tried it."""

    def get_permissions(self):
        # Every endpoint needs an authenticated caller, whatever else the view asks.
        return [IsAuthenticated(), *super().get_permissions()]

    def get_queryset(self):
        return actor(self.request).restrict(self.queryset.all())

    # Query parameters a write reads, by action (ServerViewSet's destroy: keep_backups); a write
    # with any other one is refused, as a GET with an unknown filter is.
    action_parameters: dict[str, frozenset[str]] = {}

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            refuse_unknown_write_parameters(request, self.action_parameters.get(self.action, frozenset()))

    def filter_queryset(self, queryset):
        if self.request.method in ("GET", "HEAD"):
            refuse_unknown_parameters(self.request, self, queryset)  # a misspelt filter must not list everything
        return super().filter_queryset(queryset)

    def audit(self, action_name: str, obj, **detail) -> None:
        audit.record(actor(self.request), action_name, obj, **detail)

    def handle_exception(self, exc):
        if isinstance(exc, ProtectedError):
            exc = Refused(_("Other records still use this one; it stays."), "in_use")
        return super().handle_exception(exc)


class AuditedModelViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin,
                          mixins.UpdateModelMixin, mixins.DestroyModelMixin, PanelViewSet):
    """Create, read, update (PATCH) and delete of plain records, each write audited as
    `<audit_name>.create|update|delete`; `refusal()` says why a record cannot be deleted."""

    # The docstring is the schema's description of the viewsets that have none: kept as it is.
    # Why a record cannot be deleted is its model's `delete_refusal()`, which the UI asks too.

    audit_name = ""
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def perform_create(self, serializer):
        self.audit(f"{self.audit_name}.create", serializer.save())

    def perform_update(self, serializer):
        changed = {k: str(v) for k, v in serializer.validated_data.items()}
        self.audit(f"{self.audit_name}.update", serializer.save(), **changed)

    def perform_destroy(self, instance):
        with transaction.atomic():  # a refused or protected delete leaves no audit entry
            refuse_delete(instance)
            self.delete_instance(instance)

    def delete_instance(self, instance) -> None:
        self.audit(f"{self.audit_name}.delete", instance)
        instance.delete()


def refuse_delete(instance) -> None:
    """Raise the model's reason why `instance` cannot be deleted, if it has one."""
    refusal = getattr(instance, "delete_refusal", None)
    refused = refusal() if refusal else None
    if refused is not None:
        raise refused


def accepted(request, op: Operation) -> Response:
    """The 202 answer: the operation as the caller may see it (admins all of it)."""
    op.refresh_from_db()  # the worker may already have moved it on
    return Response(s.AcceptedSerializer(op, context={"request": request}).data, status=status.HTTP_202_ACCEPTED)


class CustomerViewSet(AuditedModelViewSet):
    queryset = Customer.objects.all()
    serializer_class = s.CustomerSerializer
    permission_classes = [IsProviderOrReadOnly]
    filterset_class = CustomerFilter
    audit_name = "customer"


class PlanViewSet(AuditedModelViewSet):
    queryset = Plan.objects.all()
    serializer_class = s.PlanSerializer
    permission_classes = [IsAdminOrReadOnly]
    filterset_fields = ["name"]
    audit_name = "plan"

    def delete_instance(self, instance):
        instance.delete()
        self.audit("plan.delete", None, name=instance.name)


def accepted_with_password(request, op: Operation, password: str) -> Response:
    op.refresh_from_db()
    return Response({**s.AcceptedSerializer(op, context={"request": request}).data, "password": password},
                    status=status.HTTP_202_ACCEPTED)


def install_args(v: dict) -> dict:
    return {"recipe": v.get("recipe") or None, "recipe_params": v.get("recipe_params") or {},
            "password": v.get("password", ""), "ssh_keys": v.get("ssh_keys") or []}


class ServerViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, PanelViewSet):
    queryset = VirtualServer.objects.prefetch_related("ip_addresses")
    filterset_class = ServerFilter
    # A replayed create or reinstall does not show the password again, nor a replayed console
    # request its one-time URL (a bearer credential when a key asked for it).
    secret_response_fields = ("password", "url")
    action_parameters = {"destroy": frozenset({"keep_backups"})}

    def get_serializer_class(self):
        return s.ServerDetailSerializer if self.action == "retrieve" else s.ServerSerializer

    @extend_schema(request=s.ServerCreateSerializer, responses={202: s.AcceptedWithPasswordSerializer})
    def create(self, request):
        data = s.ServerCreateSerializer(data=request.data, context={"request": request})
        data.is_valid(raise_exception=True)
        v = data.validated_data
        who = actor(request)
        customer = v.get("customer")
        if customer is None:
            if who.acts_for_all_customers:
                raise Refused("customer: this field is required.", "invalid", 400, field="customer")
            customer = Customer.objects.get(pk=who.customer_id)
        _server, op, password = lifecycle.create_server(
            who, customer=customer, plan=v["plan"], hostname=v["hostname"], os_template=v["os_template"],
            node=v.get("node"), cluster=v.get("cluster"), private_network=v["private_network"], **install_args(v))
        return accepted_with_password(request, op, password)

    @extend_schema(request=s.ReinstallSerializer, responses={202: s.AcceptedWithPasswordSerializer})
    @action(detail=True, methods=["post"])
    def reinstall(self, request, pk=None):
        """Install the OS again: the disk is made anew, the addresses stay, the recipe runs again."""
        data = s.ReinstallSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        op, password = lifecycle.request_reinstall(actor(request), pk, os_template=v.get("os_template"),
                                                   **install_args(v))
        return accepted_with_password(request, op, password)

    @extend_schema(responses={202: s.AcceptedSerializer}, parameters=[OpenApiParameter(
        "keep_backups", bool, description="Keep the server's backups (restorable as a new server); default: "
                                          "they are deleted with it")])
    def destroy(self, request, pk=None):
        keep_backups = request.query_params.get("keep_backups", "").lower() in ("1", "true")
        return accepted(request, lifecycle.request_action(actor(request), pk, lifecycle.ACTIONS["delete"].kind,
                                                 {"keep_backups": keep_backups}))

    def _act(self, request, pk, name, serializer_class=s.EmptySerializer):
        """Start the action `name` of lifecycle.ACTIONS with the body's parameters."""
        body = serializer_class(data=request.data)
        body.is_valid(raise_exception=True)
        action = lifecycle.ACTIONS[name]
        return accepted(request, lifecycle.request_action(actor(request), pk, action.kind,
                                                 {**action.params, **body.validated_data}))

    @extend_schema(request=s.EmptySerializer, responses={202: s.AcceptedSerializer})
    @action(detail=True, methods=["post"])
    def start(self, request, pk=None):
        return self._act(request, pk, "start")

    @extend_schema(request=s.StopSerializer, responses={202: s.AcceptedSerializer})
    @action(detail=True, methods=["post"])
    def stop(self, request, pk=None):
        return self._act(request, pk, "stop", s.StopSerializer)

    @extend_schema(request=s.StopSerializer, responses={202: s.AcceptedSerializer})
    @action(detail=True, methods=["post"])
    def reboot(self, request, pk=None):
        return self._act(request, pk, "reboot", s.StopSerializer)

    @extend_schema(request=s.SuspendSerializer, responses={202: s.AcceptedSerializer})
    @action(detail=True, methods=["post"])
    def suspend(self, request, pk=None):
        return self._act(request, pk, "suspend", s.SuspendSerializer)

    @extend_schema(request=s.EmptySerializer, responses={202: s.AcceptedSerializer})
    @action(detail=True, methods=["post"])
    def unsuspend(self, request, pk=None):
        return self._act(request, pk, "unsuspend")

    @extend_schema(request=s.MigrateSerializer, responses={202: s.AcceptedSerializer})
    @action(detail=True, methods=["post"])
    def migrate(self, request, pk=None):
        data = s.MigrateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        return accepted(request, lifecycle.request_migration(actor(request), pk, v["node"], v["live"]))

    @extend_schema(request=s.ChangePlanSerializer, responses={202: s.AcceptedSerializer})
    @action(detail=True, methods=["post"], url_path="change-plan")
    def change_plan(self, request, pk=None):
        """Move the server to another plan (provider only); the operation's params say in
        `applies` which sizes took effect now and which at the next boot."""
        data = s.ChangePlanSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return accepted(request, lifecycle.request_plan_change(actor(request), pk, data.validated_data["plan"]))

    @extend_schema(request=s.ResetPasswordSerializer, responses={202: s.PasswordResetAcceptedSerializer})
    @action(detail=True, methods=["post"], url_path="reset-password")
    def reset_password(self, request, pk=None):
        """Set root's password through the guest agent of the running server. The password is
        in this answer only; `applies` says whether it took effect."""
        data = s.ResetPasswordSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        op, password = lifecycle.request_password_reset(actor(request), pk, data.validated_data.get("password", ""))
        response = accepted_with_password(request, op, password)
        finished = op.status in (Operation.Status.SUCCEEDED, Operation.Status.FAILED)
        response.data["applies"] = op.params.get("applies", "failed") if finished else "pending"
        return response

    @extend_schema(request=s.EmptySerializer, responses={201: s.ConsoleSerializer})
    @action(detail=True, methods=["post"])
    def console(self, request, pk=None):
        """A one-time console URL: open it in a browser within `expires_at` (the page connects at once)."""
        from novnc import tokens

        token, raw = tokens.issue(actor(request), pk)
        url = request.build_absolute_uri(reverse("novnc:console-token", args=[raw]))
        return Response({"url": url, "expires_at": token.expires_at}, status=status.HTTP_201_CREATED)


def admin_view(view) -> bool:
    """The admin's view of a resource; the schema made without a caller documents that one."""
    if getattr(view, "swagger_fake_view", False) and not view.request.user.is_authenticated:
        return True
    return actor(view.request).is_admin


class OsTemplateViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.UpdateModelMixin, PanelViewSet):
    """Customers see the templates on offer; admins see every one (with why a broken one is
    not offered), enable, disable and order them, and rescan the share."""

    queryset = OsTemplate.objects.all()
    permission_classes = [IsAdminOrReadOnly]
    filterset_fields = ["family", "installer"]
    http_method_names = ["get", "post", "patch", "head", "options"]

    def get_queryset(self):
        return self.queryset.all() if admin_view(self) else OsTemplate.offered_objects.all()

    def get_serializer_class(self):
        return s.OsTemplateAdminSerializer if admin_view(self) else s.OsTemplateSerializer

    def perform_update(self, serializer):
        self.audit("os_template.update", serializer.save(), **{k: str(v) for k, v in serializer.validated_data.items()})

    @extend_schema(request=s.EmptySerializer, responses={200: s.OsTemplateAdminSerializer(many=True)})
    @action(detail=False, methods=["post"], permission_classes=[IsAdmin], pagination_class=None)
    def rescan(self, request):
        """Read the template share again."""
        from templates_os.repository import scan

        templates = scan()
        self.audit("os_template.rescan", None, count=len(templates))
        return Response(s.OsTemplateAdminSerializer(templates, many=True).data)


class RecipeViewSet(AuditedModelViewSet):
    """Customers see the enabled recipes (not their scripts); admins manage them."""

    queryset = Recipe.objects.all()
    permission_classes = [IsAdminOrReadOnly]
    audit_name = "recipe"

    def get_queryset(self):
        return self.queryset.all() if admin_view(self) else Recipe.objects.filter(enabled=True)

    def get_serializer_class(self):
        return s.RecipeAdminSerializer if admin_view(self) else s.RecipeSerializer


class OperationViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, PanelViewSet):
    queryset = Operation.objects.all()
    filterset_class = OperationFilter

    def get_serializer_class(self):
        return s.OperationDetailSerializer if self.action == "retrieve" else s.OperationSerializer


class ApiKeyViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin,
                    mixins.DestroyModelMixin, PanelViewSet):
    """Admins manage every key; a customer's user manages their customer's keys (scope customer)."""

    queryset = ApiKey.objects.all()
    serializer_class = s.ApiKeySerializer
    filterset_class = ApiKeyFilter
    secret_response_fields = ("key",)  # a replayed create does not show the key again

    def get_queryset(self):
        who = actor(self.request)
        if who.is_billing:
            return ApiKey.objects.none()  # billing keys do not manage keys
        return super().get_queryset()

    @extend_schema(responses={201: s.ApiKeyCreatedSerializer})
    def create(self, request):
        who = actor(request)
        data = s.ApiKeySerializer(data=request.data, context={"request": request})
        data.is_valid(raise_exception=True)
        v = data.validated_data
        if not who.is_admin and (who.is_billing or v["scope"] != ApiKey.Scope.CUSTOMER
                                 or v["customer"].pk != who.customer_id):
            raise Refused("You may only create customer keys for your own account.", "permission_denied", 403)
        limits.check_new_api_key(who, v.get("customer"))
        key, raw = ApiKey.issue(name=v["name"], scope=v["scope"], customer=v.get("customer"),
                                created_by=who.user)
        self.audit("api_key.create", key, scope=key.scope)
        body = s.ApiKeyCreatedSerializer(key).data
        body["key"] = raw
        return Response(body, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance):
        instance.revoke()  # revoked, not deleted: the audit log keeps pointing at it
        self.audit("api_key.revoke", instance)


class UserViewSet(AuditedModelViewSet):
    queryset = User.objects.order_by("id")
    serializer_class = s.UserSerializer
    permission_classes = [IsAdmin]
    filterset_fields = ["role", "customer", "username"]
    audit_name = "user"

    def perform_update(self, serializer):
        # Field names only: a new password must not land in the audit log.
        self.audit("user.update", serializer.save(), fields=sorted(serializer.validated_data))


class AuditLogViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, PanelViewSet):
    queryset = AuditEntry.objects.all()
    serializer_class = s.AuditEntrySerializer
    permission_classes = [IsAdmin]
    filterset_class = AuditFilter


class NodeViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, PanelViewSet):
    """Nodes (admins): add one by address and credentials; the install is a 202 Operation."""

    queryset = Node.objects.select_related("cluster")
    serializer_class = s.NodeSerializer
    permission_classes = [IsAdmin]
    filterset_fields = ["state", "name", "cluster"]

    @extend_schema(request=s.NodeCreateSerializer, responses={202: s.AcceptedSerializer})
    def create(self, request):
        data = s.NodeCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        _node, op = node_actions.add_node(actor(request), **data.validated_data)
        return accepted(request, op)

    @extend_schema(request=s.EmptySerializer, responses={202: s.AcceptedSerializer})
    @action(detail=True, methods=["post"])
    def install(self, request, pk=None):
        """Run the installer again (idempotent: an installed node is left as it is)."""
        return accepted(request, node_actions.reinstall_node(actor(request), self.get_object().pk))

    @extend_schema(request=s.AcceptHostKeySerializer, responses={200: s.NodeSerializer})
    @action(detail=True, methods=["post"], url_path="accept-host-key")
    def accept_host_key(self, request, pk=None):
        data = s.AcceptHostKeySerializer(data=request.data)
        data.is_valid(raise_exception=True)
        node = node_actions.accept_host_key(actor(request), self.get_object().pk, data.validated_data["fingerprint"])
        return Response(s.NodeSerializer(node).data)

    @extend_schema(request=s.MaintenanceSerializer, responses={200: s.NodeSerializer})
    @action(detail=True, methods=["post"])
    def maintenance(self, request, pk=None):
        data = s.MaintenanceSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        node = node_actions.set_maintenance(actor(request), self.get_object().pk, data.validated_data["enabled"])
        return Response(s.NodeSerializer(node).data)

    @extend_schema(responses={204: None})
    def destroy(self, request, pk=None):
        node_actions.remove_node(actor(request), self.get_object().pk)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ClusterViewSet(AuditedModelViewSet):
    queryset = Cluster.objects.all()
    serializer_class = s.ClusterSerializer
    permission_classes = [IsAdmin]
    filterset_fields = ["name", "os_family"]
    audit_name = "cluster"


class StorageViewSet(AuditedModelViewSet):
    queryset = Storage.objects.all()
    serializer_class = s.StorageSerializer
    permission_classes = [IsAdmin]
    filterset_fields = ["cluster", "kind"]
    audit_name = "storage"


class NetworkViewSet(AuditedModelViewSet):
    """Networks of a cluster (admins); the node installer makes their bridges on every node."""

    queryset = Network.objects.all()
    serializer_class = s.NetworkSerializer
    permission_classes = [IsAdmin]
    filterset_fields = ["cluster", "kind"]
    audit_name = "network"


class IpPoolViewSet(AuditedModelViewSet):
    queryset = IpPool.objects.select_related("network")
    serializer_class = s.IpPoolSerializer
    permission_classes = [IsAdmin]
    filterset_fields = ["network", "name"]
    audit_name = "ip_pool"

    def delete_instance(self, instance):
        self.audit("ip_pool.delete", instance)
        ipam_actions.delete_pool(instance)


class IpAddressViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, PanelViewSet):
    """Addresses in use or in quarantine. Admins add, move and remove them; the owning customer
    may set the reverse DNS name of theirs."""

    queryset = IpAddress.objects.select_related("pool")
    serializer_class = s.IpAddressSerializer
    filterset_fields = ["pool", "server", "address"]
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def _admin_only(self):
        if not actor(self.request).is_admin:
            raise Refused("Only the provider manages addresses.", "permission_denied", 403)

    @extend_schema(request=s.IpAddressCreateSerializer, responses={201: s.IpAddressSerializer})
    def create(self, request):
        self._admin_only()
        data = s.IpAddressCreateSerializer(data=request.data, context={"request": request})
        data.is_valid(raise_exception=True)
        v = data.validated_data
        row = ipam_actions.add_address(actor(request), v["server"].pk, v["pool"], v["address"])
        return Response(s.IpAddressSerializer(row).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.IpAddressUpdateSerializer, responses={200: s.IpAddressSerializer})
    def partial_update(self, request, pk=None):
        row = self.get_object()
        data = s.IpAddressUpdateSerializer(data=request.data, context={"request": request})
        data.is_valid(raise_exception=True)
        v = data.validated_data
        if "server" in v:
            self._admin_only()
            row = ipam_actions.move_address(actor(request), row.pk, v["server"].pk)
        if "ptr" in v:
            row.ptr = v["ptr"]
            row.save(update_fields=["ptr"])
            self.audit("ip.ptr", row, ptr=row.ptr, customer_id=row.server.customer_id if row.server else None)
        return Response(s.IpAddressSerializer(row).data)

    @extend_schema(responses={204: None})
    def destroy(self, request, pk=None):
        self._admin_only()
        ipam_actions.remove_address(actor(request), self.get_object().pk)
        return Response(status=status.HTTP_204_NO_CONTENT)

"""API v1 for backups: a server's backup, restore and backups; targets, plans, the backups list
and the panel's own backup (admins). Every request goes through backup.actions."""


import django_filters
from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.response import Response

from backup import actions
from backup.models import Backup, BackupPlan, BackupTarget, check_cron
from nodes.models import Node
from panel.api import serializers as s
from panel.api.permissions import IsAdmin, actor
from panel.api.views import AuditedModelViewSet, PanelViewSet, accepted
from panel.crypto import encrypt
from panel.vps.models import VirtualServer, hostname_validator


class BackupSerializer(serializers.ModelSerializer):
    target = serializers.CharField(source="target.name", read_only=True, help_text="The target's name")

    class Meta:
        model = Backup
        fields = ["id", "server", "hostname", "kind", "status", "target", "parent", "size_bytes", "error",
                  "created_at", "finished_at"]
        read_only_fields = fields


class BackupRequestSerializer(serializers.Serializer):
    target = serializers.PrimaryKeyRelatedField(queryset=BackupTarget.objects.all(), required=False,
                                                help_text="Admins and billing keys only; default: the server's plan's")


class RestoreSerializer(serializers.Serializer):
    backup = serializers.IntegerField(help_text="One of this server's backups")


class RestoreAsNewSerializer(serializers.Serializer):
    hostname = serializers.CharField(max_length=253, required=False, allow_blank=True,
                                     validators=[hostname_validator], help_text="Default: the backed-up server's")
    node = serializers.PrimaryKeyRelatedField(queryset=Node.objects.all(), required=False, allow_null=True)


class RestoredAsNewSerializer(serializers.Serializer):
    server = serializers.IntegerField()
    operation = s.AcceptedSerializer()


class PanelBackupSerializer(serializers.Serializer):
    target = serializers.PrimaryKeyRelatedField(queryset=BackupTarget.objects.all())


class ServerBackupViewSet(PanelViewSet):
    """`/servers/{id}/backup|restore|backups/`: the server actions of backups, beside ServerViewSet."""

    queryset = VirtualServer.objects.all()
    serializer_class = BackupSerializer

    @extend_schema(request=BackupRequestSerializer, responses={202: s.AcceptedSerializer})
    @action(detail=True, methods=["post"])
    def backup(self, request, pk=None):
        """Back the server up now (a full or incremental backup, as its plan says)."""
        data = BackupRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return accepted(request, actions.request_backup(actor(request), pk, target=data.validated_data.get("target")))

    @extend_schema(request=RestoreSerializer, responses={202: s.AcceptedSerializer})
    @action(detail=True, methods=["post"])
    def restore(self, request, pk=None):
        """Overwrite the server's disk with one of its backups."""
        data = RestoreSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return accepted(request, actions.request_restore(actor(request), pk, data.validated_data["backup"]))

    @extend_schema(responses={200: BackupSerializer(many=True)}, filters=False)
    @action(detail=True, methods=["get"])
    def backups(self, request, pk=None):
        """The server's backups, newest first."""
        server = self.get_object()
        rows = actor(request).restrict(Backup.objects.select_related("target", "parent")).filter(
            server_uuid=server.uuid).order_by("-id")
        page = self.paginate_queryset(rows)
        return self.get_paginated_response(BackupSerializer(page, many=True).data)


class BackupTargetSerializer(serializers.ModelSerializer):
    password = serializers.CharField(write_only=True, required=False, allow_blank=True, max_length=200,
                                     trim_whitespace=False, style={"input_type": "password"},
                                     help_text="SFTP/FTP only; never shown; blank on an update keeps the stored "
                                               "one; SFTP without one logs in with the panel's key")
    host_key = serializers.CharField(required=False, allow_blank=True, max_length=0,
                                     help_text="SFTP: host key; FTPS: certificate (\"x509 <base64 DER>\"). Pinned at "
                                               "the first check; only \"\" may be written, to accept a changed "
                                               "key or certificate at the next check")
    host_key_fingerprint = serializers.CharField(
        read_only=True, help_text="SFTP: host key; FTPS: certificate. The pinned one's SHA256 fingerprint")

    class Meta:
        model = BackupTarget
        fields = ["id", "name", "kind", "path", "host", "port", "username", "password", "host_key",
                  "host_key_fingerprint", "enabled", "checked_at", "check_error", "free_bytes", "created_at"]
        read_only_fields = ["checked_at", "check_error", "free_bytes", "created_at"]

    def validate(self, attrs):
        probe = BackupTarget()
        for name in ("kind", "path", "host"):
            setattr(probe, name, attrs.get(name, getattr(self.instance or probe, name)))
        try:
            probe.clean()  # the model's invariants, the same for the UI and the API
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict)
        return attrs

    def create(self, validated_data):
        password = validated_data.pop("password", "")
        return super().create({**validated_data, "password": encrypt(password)})

    def update(self, instance, validated_data):
        password = validated_data.pop("password", "")
        if password:
            instance.password = encrypt(password)
        return super().update(instance, validated_data)


class BackupTargetViewSet(AuditedModelViewSet):
    """Backup targets (admins): saved only when their check (write, read, delete a file) passes."""

    queryset = BackupTarget.objects.all()
    serializer_class = BackupTargetSerializer
    permission_classes = [IsAdmin]
    filterset_fields = ["kind", "enabled"]

    def perform_create(self, serializer):
        target = actions.save_checked(serializer.save)
        self.audit("backup_target.create", target, name=target.name, kind=target.kind)

    def perform_update(self, serializer):
        target = actions.save_checked(serializer.save)
        self.audit("backup_target.update", target, fields=sorted(serializer.validated_data))  # no password

    def delete_instance(self, instance):
        instance.delete()
        self.audit("backup_target.delete", None, name=instance.name)

    @extend_schema(request=s.EmptySerializer, responses={200: BackupTargetSerializer})
    @action(detail=True, methods=["post"])
    def check(self, request, pk=None):
        """Check the target again now; the answer holds the result (`check_error` "" when fine)."""
        from backup.connect import check_target

        target = self.get_object()
        check_target(target)
        return Response(BackupTargetSerializer(target).data)


class BackupPlanSerializer(serializers.ModelSerializer):
    class Meta:
        model = BackupPlan
        fields = ["id", "name", "target", "schedule", "scope", "plans", "customers", "servers", "keep", "full_every",
                  "compression", "enabled", "last_run_at", "last_run_summary", "created_at"]
        read_only_fields = ["last_run_at", "last_run_summary", "created_at"]

    def validate_schedule(self, value: str) -> str:
        error = check_cron(value.strip())
        if error:
            raise serializers.ValidationError(error)
        return value.strip()


class BackupPlanViewSet(AuditedModelViewSet):
    """Backup plans (admins): a cron schedule, the servers (or the panel) it covers, a target."""

    queryset = BackupPlan.objects.select_related("target").prefetch_related("plans", "customers", "servers")
    serializer_class = BackupPlanSerializer
    permission_classes = [IsAdmin]
    filterset_fields = ["target", "scope", "enabled"]
    audit_name = "backup_plan"

    @extend_schema(request=s.EmptySerializer,
                   responses={200: inline_serializer("BackupPlanRun", {"summary": serializers.CharField()})})
    @action(detail=True, methods=["post"])
    def run(self, request, pk=None):
        """Run the plan now: queue its backups; the summary says what was queued and skipped."""
        from backup.schedules import run_plan

        plan = self.get_object()
        self.audit("backup_plan.run", plan)
        return Response({"summary": run_plan(plan.pk)})


class BackupFilter(django_filters.FilterSet):
    # A plain number, not a choice: no telling a customer which other servers exist.
    server = django_filters.NumberFilter(field_name="server_id")
    target = django_filters.NumberFilter(field_name="target_id")

    class Meta:
        model = Backup
        fields = ["server", "kind", "status", "target"]


class BackupViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, PanelViewSet):
    """Backups: admins see all (the panel's own too), a customer its servers' only."""

    queryset = Backup.objects.select_related("target", "parent").order_by("-id")
    serializer_class = BackupSerializer
    filterset_class = BackupFilter

    @extend_schema(request=RestoreAsNewSerializer, responses={202: RestoredAsNewSerializer}, filters=False)
    @action(detail=True, methods=["post"], url_path="restore-as-new")
    def restore_as_new(self, request, pk=None):
        """A new server (same customer and plan, new addresses) from this backup (admins)."""
        backup = self.get_object()  # another customer's backup: 404 before anything else
        data = RestoreAsNewSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        server, op = actions.restore_as_new_server(actor(request), backup.pk, hostname=v.get("hostname", ""),
                                                   node=v.get("node"))
        op.refresh_from_db()
        operation = s.AcceptedSerializer(op, context={"request": request}).data
        return Response({"server": server.pk, "operation": operation},
                        status=status.HTTP_202_ACCEPTED)


class PanelBackupViewSet(PanelViewSet):
    """`POST /panel-backup/`: back up the panel itself (database, settings, keys; encrypted)."""

    queryset = Backup.objects.none()
    permission_classes = [IsAdmin]
    serializer_class = PanelBackupSerializer

    @extend_schema(request=PanelBackupSerializer, responses={202: s.AcceptedSerializer})
    def create(self, request):
        data = PanelBackupSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return accepted(request, actions.request_panel_backup(actor(request), data.validated_data["target"]))

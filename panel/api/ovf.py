"""API v1 for OVA export and import (admins): /servers/{id}/export-ova/, /ova/import/ (the raw
OVA as the body, streamed to the panel's data dir) and /ova/{operation}/download/. Every request
goes through panel.images.ovf_jobs."""

from django.http import FileResponse
from django.utils.translation import gettext as _
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.decorators import action
from rest_framework.response import Response

from nodes.models import Node
from panel.accounts.models import Customer
from panel.api import serializers as s
from panel.api.permissions import IsAdmin, actor
from panel.api.views import PanelViewSet, accepted
from panel.images import ovf, ovf_jobs
from panel.refusals import Refused
from panel.vps.models import Operation, Plan, VirtualServer, hostname_validator
from templates_os.models import OsTemplate


class ExportSerializer(serializers.Serializer):
    format = serializers.ChoiceField(choices=ovf_jobs.FORMATS, default="vmdk",
                                     help_text="vmdk: streamOptimized VMDK (VirtualBox, VMware); qcow2")


class ImportedSerializer(serializers.Serializer):
    server = serializers.IntegerField()
    operation = s.AcceptedSerializer()
    mapping = serializers.ListField(child=serializers.CharField(), help_text="What became what")


def _chunks(stream):
    while chunk := stream.read(ovf.CHUNK):
        yield chunk


def _row(model, value, field: str, **extra):
    """The row `value` names (an id) or a 400 naming the parameter."""
    row = model.objects.filter(pk=value, **extra).first() if (value or "").isdigit() else None
    if row is None:
        raise Refused(_("%(field)s: does not exist.") % {"field": field}, "invalid", 400, field=field)
    return row


class ServerOvaViewSet(PanelViewSet):
    """`/servers/{id}/export-ova/`, beside ServerViewSet."""

    queryset = VirtualServer.objects.all()
    serializer_class = ExportSerializer
    permission_classes = [IsAdmin]

    @extend_schema(request=ExportSerializer, responses={202: s.AcceptedSerializer})
    @action(detail=True, methods=["post"], url_path="export-ova")
    def export_ova(self, request, pk=None):
        """Export the stopped server as an OVA (OVF 1.0 descriptor, disk, SHA256 manifest)."""
        data = ExportSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return accepted(request, ovf_jobs.request_export(actor(request), pk, data.validated_data["format"]))


class OvaViewSet(PanelViewSet):
    """`/ova/import/` and `/ova/{operation}/download/` (admins)."""

    queryset = Operation.objects.filter(kind=Operation.Kind.OVA_EXPORT)
    serializer_class = ImportedSerializer
    permission_classes = [IsAdmin]
    action_parameters = {"import_ova": frozenset({"customer", "hostname", "os_template", "plan", "node"})}

    @extend_schema(request={"application/octet-stream": bytes}, responses={202: ImportedSerializer}, parameters=[
        OpenApiParameter("customer", int, required=True), OpenApiParameter("hostname", str, required=True),
        OpenApiParameter("os_template", int, required=True, description="Whose boot method the disk uses"),
        OpenApiParameter("plan", int, description="Default: the smallest plan with the appliance's CPUs and memory"),
        OpenApiParameter("node", int)])
    @action(detail=False, methods=["put"], url_path="import")
    def import_ova(self, request):
        """Import an OVA (VirtualBox, VMware or this panel's) as a new server: the raw OVA as the body."""
        q = request.query_params
        customer = _row(Customer, q.get("customer"), "customer")
        hostname = q.get("hostname", "")
        try:
            hostname_validator(hostname)
        except Exception:
            raise Refused(_("A hostname is letters, digits, hyphens and dots (RFC 1123)."), "invalid", 400,
                          field="hostname") from None
        template = _row(OsTemplate, q.get("os_template"), "os_template")
        plan = _row(Plan, q["plan"], "plan") if q.get("plan") else None
        node = _row(Node, q["node"], "node") if q.get("node") else None
        # The WSGI/ASGI request's own stream: DRF's parsers never read (or hold) the body.
        upload = ovf_jobs.receive_upload(_chunks(request._request))
        server, op, _appliance = ovf_jobs.request_import(actor(request), upload, customer=customer, hostname=hostname,
                                                         os_template=template, plan=plan, node=node)
        op.refresh_from_db()
        return Response({"server": server.pk, "operation": s.AcceptedSerializer(op, context={"request": request}).data,
                         "mapping": op.params.get("mapping", [])}, status=status.HTTP_202_ACCEPTED)

    @extend_schema(responses={(200, "application/x-tar"): OpenApiResponse(OpenApiTypes.BINARY)}, filters=False)
    @action(detail=True, methods=["get"])
    def download(self, request, pk=None):
        """The OVA an export operation made (404 until it has succeeded)."""
        op = self.get_object()
        path = ovf_jobs.export_path(op)
        if path is None:
            raise Refused(_("This export has no OVA (yet)."), "not_ready", 404)
        return FileResponse(open(path, "rb"), as_attachment=True, filename=path.name, content_type="application/x-tar")

"""API v1 for a server's data disks (panel/images/disk_jobs.py does the work):
`GET|POST /servers/{id}/disks/` lists and adds, `PATCH /servers/{id}/disks/{disk}/` grows
(`size_gib`), `DELETE` detaches (with the guest's cooperation) and deletes the disk. The
writes answer 202 with the operation; a disk never lives on without its server."""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.decorators import action

from panel.api import serializers as s
from panel.api.permissions import actor
from panel.api.views import PanelViewSet, accepted
from panel.images import disk_jobs
from panel.images.disks import DataDisk
from panel.vps.models import VirtualServer


class DataDiskSerializer(serializers.ModelSerializer):
    class Meta:
        model = DataDisk
        fields = ["id", "name", "target", "size_gib", "state", "error", "created_at"]
        read_only_fields = fields


class DiskAddSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=64, help_text="Unique on the server: letters, digits, . _ -")
    size_gib = serializers.IntegerField(min_value=1, max_value=disk_jobs.MAX_DISK_GIB)


class DiskGrowSerializer(serializers.Serializer):
    size_gib = serializers.IntegerField(min_value=1, max_value=disk_jobs.MAX_DISK_GIB,
                                        help_text="The new size; larger than the present one")


DISK_ID = OpenApiParameter("disk_id", OpenApiTypes.INT, OpenApiParameter.PATH, description="The data disk's id")


class ServerDiskViewSet(PanelViewSet):
    """`/servers/{id}/disks/`: detail actions only, beside ServerViewSet's."""

    queryset = VirtualServer.objects.all()
    serializer_class = DataDiskSerializer

    @extend_schema(methods=["GET"], responses={200: DataDiskSerializer(many=True)}, filters=False)
    @extend_schema(methods=["POST"], request=DiskAddSerializer, responses={202: s.AcceptedSerializer})
    @action(detail=True, methods=["get", "post"])
    def disks(self, request, pk=None):
        """The server's data disks (GET), or add one (POST), hot-plugged when the server runs."""
        if request.method == "GET":
            server = self.get_object()
            page = self.paginate_queryset(server.data_disks.order_by("target"))
            return self.get_paginated_response(DataDiskSerializer(page, many=True).data)
        data = DiskAddSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return accepted(request, disk_jobs.request_add(actor(request), pk, **data.validated_data))

    @extend_schema(methods=["PATCH"], request=DiskGrowSerializer, responses={202: s.AcceptedSerializer},
                   parameters=[DISK_ID])
    @extend_schema(methods=["DELETE"], request=None, responses={202: s.AcceptedSerializer}, parameters=[DISK_ID])
    # Any segment reaches the view, so a malformed id is the API's JSON 404, not Django's page.
    @action(detail=True, methods=["patch", "delete"], url_path=r"disks/(?P<disk_id>[^/.]+)")
    def disk(self, request, pk=None, disk_id=None):
        """Grow a data disk (PATCH size_gib), or detach and delete it (DELETE)."""
        if request.method == "DELETE":
            return accepted(request, disk_jobs.request_delete(actor(request), pk, disk_id))
        data = DiskGrowSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return accepted(request, disk_jobs.request_grow(actor(request), pk, disk_id, data.validated_data["size_gib"]))

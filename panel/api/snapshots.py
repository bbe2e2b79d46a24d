"""API v1 for a server's snapshots (panel/images/snapshot_jobs.py does the work):
`GET|POST /servers/{id}/snapshots/` lists and takes one, `DELETE /servers/{id}/snapshots/{snapshot}/`
deletes it (merging it into the disk, online for a running server), `POST .../revert/` brings
the server back to it. The writes answer 202 with the operation. A snapshot is not a backup:
it lives in the server's own storage and goes with the server and with a restore or reinstall."""

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.decorators import action
from rest_framework.response import Response

from panel.api import serializers as s
from panel.api.permissions import actor
from panel.api.views import PanelViewSet, accepted
from panel.images import snapshot_actions
from panel.images.models import Snapshot
from panel.vps.models import VirtualServer


class SnapshotSerializer(serializers.ModelSerializer):
    class Meta:
        model = Snapshot
        fields = ["id", "name", "status", "memory", "frozen", "was_running", "size_bytes", "created_at"]
        read_only_fields = fields
        extra_kwargs = {"frozen": {"help_text": "The guest agent froze the file systems for it (disk-only)"},
                        "size_bytes": {"help_text": "Written since it, plus its memory, as of the last snapshot "
                                                    "operation on the server"}}


class SnapshotTakeSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100, required=False, allow_blank=True, help_text="Default: the time")
    memory = serializers.BooleanField(default=False, help_text="With the guest's memory (a running server, if the "
                                                               "plan allows): a revert resumes it where it was")


# Any path segment reaches the view (a non-number is a JSON 404 like every unknown id there).
SNAPSHOT_ID = OpenApiParameter("snapshot_id", int, OpenApiParameter.PATH, description="One of the server's snapshots")


class ServerSnapshotViewSet(PanelViewSet):
    """`/servers/{id}/snapshots/`: detail actions only, beside ServerViewSet's."""

    queryset = VirtualServer.objects.all()
    serializer_class = SnapshotSerializer

    @extend_schema(methods=["GET"], responses={200: SnapshotSerializer(many=True)}, filters=False)
    @extend_schema(methods=["POST"], request=SnapshotTakeSerializer, responses={202: s.AcceptedSerializer})
    @action(detail=True, methods=["get", "post"])
    def snapshots(self, request, pk=None):
        """The server's snapshots, newest first (GET), or take one (POST)."""
        if request.method == "GET":
            server = self.get_object()
            page = self.paginate_queryset(Snapshot.objects.filter(server=server).order_by("-id"))
            return self.get_paginated_response(SnapshotSerializer(page, many=True).data)
        data = SnapshotTakeSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        _snapshot, op = snapshot_actions.request_snapshot(actor(request), pk, **data.validated_data)
        return accepted(request, op)

    @extend_schema(methods=["DELETE"], request=None, responses={202: s.AcceptedSerializer}, parameters=[SNAPSHOT_ID])
    @action(detail=True, methods=["delete"], url_path=r"snapshots/(?P<snapshot_id>[^/.]+)")
    def snapshot(self, request, pk=None, snapshot_id=None):
        """Delete a snapshot: what was written since it is merged into the disk below it."""
        return accepted(request, snapshot_actions.request_delete(actor(request), pk, snapshot_id))

    @extend_schema(request=None, responses={202: s.AcceptedSerializer}, parameters=[SNAPSHOT_ID])
    @action(detail=True, methods=["post"], url_path=r"snapshots/(?P<snapshot_id>[^/.]+)/revert")
    def revert_snapshot(self, request, pk=None, snapshot_id=None):
        """Bring the server back to its newest snapshot (what it wrote since is discarded)."""
        return accepted(request, snapshot_actions.request_revert(actor(request), pk, snapshot_id))

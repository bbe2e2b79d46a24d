"""`GET /api/v1/servers/{id}/usage/?from=&to=`: a server's usage, summed from hourly buckets."""

import datetime as dt

from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from panel.api.permissions import actor
from panel.usage.collector import month_start, quota_bytes, usage_between
from panel.usage.models import UsageState
from panel.vps.models import VirtualServer

# "from" is a Python keyword, so the fields are given as a mapping.
UsageSerializer = type("UsageSerializer", (serializers.Serializer,), {
    "__doc__": "A server's usage between `from` and `to` (sums of whole UTC hours).",
    "from": serializers.DateTimeField(),
    "to": serializers.DateTimeField(),
    "traffic_rx_bytes": serializers.IntegerField(help_text="Received by the server, all NICs"),
    "traffic_tx_bytes": serializers.IntegerField(help_text="Sent by the server, all NICs"),
    "cpu_seconds": serializers.FloatField(help_text="CPU time used, all vCPUs"),
    "uptime_seconds": serializers.IntegerField(),
    "disk_read_bytes": serializers.IntegerField(),
    "disk_write_bytes": serializers.IntegerField(),
    "traffic_quota_bytes": serializers.IntegerField(help_text="The plan's monthly traffic (rx + tx); 0 = unlimited"),
    "throttled": serializers.BooleanField(help_text="Over this month's traffic quota: bandwidth reduced"),
})


def parse_moment(name: str, value: str | None, default: dt.datetime) -> dt.datetime:
    if value in (None, ""):
        return default
    value = value.strip()
    # A "+01:00" offset that was not URL-encoded arrives as " 01:00".
    if "T" in value and " " in value:
        value = value.replace(" ", "+")
    try:
        moment = parse_datetime(value)
        if moment is None and (day := parse_date(value)) is not None:
            moment = dt.datetime.combine(day, dt.time.min)
        if moment is not None:
            moment = moment.replace(tzinfo=dt.UTC) if timezone.is_naive(moment) else moment.astimezone(dt.UTC)
    except (ValueError, OverflowError):
        moment = None
    if moment is None or not 1970 <= moment.year <= 9998:
        raise ValidationError({name: ["An ISO 8601 date or date-time is required, e.g. 2026-11-01T00:00:00Z."]})
    return moment


class ServerUsageView(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        operation_id="servers_usage_retrieve",
        tags=["servers"],
        parameters=[
            OpenApiParameter("from", OpenApiTypes.DATETIME, description="Start (ISO 8601; default: the first "
                             "moment of the current month, UTC). Counted from the start of its hour."),
            OpenApiParameter("to", OpenApiTypes.DATETIME, description="End (ISO 8601; default: now)."),
        ],
        responses={200: UsageSerializer},
    )
    def get(self, request, pk: int):
        server = actor(request).get_or_404(VirtualServer.objects.select_related("plan"), pk=pk)
        now = timezone.now()
        start = parse_moment("from", request.query_params.get("from"), month_start(now))
        end = parse_moment("to", request.query_params.get("to"), now)
        if start > end:
            raise ValidationError({"from": ["from is after to."]})
        sums = usage_between(server, start, end)
        state = UsageState.objects.filter(server=server, month=month_start(now).date()).first()
        return Response(UsageSerializer({
            "from": start,
            "to": end,
            "traffic_rx_bytes": sums["rx_bytes"],
            "traffic_tx_bytes": sums["tx_bytes"],
            "cpu_seconds": round(sums["cpu_ns"] / 1e9, 3),
            "uptime_seconds": sums["uptime_seconds"],
            "disk_read_bytes": sums["read_bytes"],
            "disk_write_bytes": sums["write_bytes"],
            "traffic_quota_bytes": quota_bytes(server),
            "throttled": bool(state and state.throttled),
        }).data)

"""API v1 for monitoring: a target's graph data and the admins' "top" servers.

    GET /api/v1/{servers,nodes,storages,networks,ip-pools}/{id}/metrics/?from=&to=&series=&max_points=&format=csv
    GET /api/v1/metrics/top/?by=cpu|traffic|iops&from=&to=&limit=

A graph is `panel.metrics.store.read()` (columnar, the tier chosen for at most `max_points`
buckets, gaps with their reason) plus the server's `events` for markers. Customers reach their
own servers only (404 for anyone else's, as everywhere in the API); nodes, storages, networks
and pools are the provider's (403). `?format=csv` gives one row per bucket. The UI's graphs
call the same endpoints with the browser's session.
"""

import csv
import datetime as dt
import io
import math

from django.utils.translation import gettext as _
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import renderers, serializers
from rest_framework.exceptions import ValidationError
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from nodes.models import Network, Node, Storage
from panel.api.filters import refuse_unknown_write_parameters
from panel.api.permissions import IsAdmin, actor
from panel.ipam.models import IpPool
from panel.metrics import store
from panel.metrics.events import server_events
from panel.metrics.models import MetricBucket, TargetKind
from panel.metrics.series import lookup
from panel.usage.api import parse_moment
from panel.vps.models import VirtualServer

MIN_POINTS, MAX_POINTS, DEFAULT_POINTS = 10, 5000, 1500
MAX_SERIES = 64
DEFAULT_SPAN = dt.timedelta(hours=1)
PARAMETERS = frozenset({"from", "to", "series", "max_points"})


# -- input ---------------------------------------------------------------------------------------
def parse_time(name: str, value: str | None, default: dt.datetime) -> dt.datetime:
    """ISO 8601 (as /usage/ takes it) or epoch seconds; a clear 400 otherwise."""
    if value not in (None, "") and value.strip().lstrip("-").replace(".", "", 1).isdigit():
        try:
            seconds = float(value)
            moment = store.EPOCH + dt.timedelta(seconds=seconds) if math.isfinite(seconds) else None
        except (OverflowError, ValueError):
            moment = None
        if moment is None or not 1970 <= moment.year <= 9998:
            raise ValidationError({name: [_("Epoch seconds between 1970 and 9998 are required.")]})
        return moment
    return parse_moment(name, value, default)


def parse_range(params, default_span: dt.timedelta = DEFAULT_SPAN) -> tuple[dt.datetime, dt.datetime]:
    """`from` and `to` (default: the last `default_span` up to now); `from` must come first."""
    now = store.clock()
    end = parse_time("to", params.get("to"), now)
    start = parse_time("from", params.get("from"), end - default_span)
    if start >= end:
        raise ValidationError({"from": [_("from must be before to.")]})
    return start, end


def parse_int(params, name: str, default: int, low: int, high: int) -> int:
    value = params.get(name)
    if value in (None, ""):
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = None
    if number is None or not low <= number <= high:
        raise ValidationError({name: [_("A whole number from %(low)d to %(high)d is required.")
                                      % {"low": low, "high": high}]})
    return number


def parse_series(kind: str, value: str | None) -> list[str] | None:
    """`series=a,b` checked against the kind's catalogue (per-device names by their last part)."""
    if value in (None, ""):
        return None
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names or len(names) > MAX_SERIES:
        raise ValidationError({"series": [_("Between 1 and %(n)d series names, separated by commas.")
                                          % {"n": MAX_SERIES}]})
    for name in names:
        if len(name) > 100 or lookup(kind, name) is None:
            raise ValidationError({"series": [_("Unknown series %(name)s for a %(kind)s.")
                                              % {"name": name[:100], "kind": kind}]})
    return list(dict.fromkeys(names))


# -- the graph -----------------------------------------------------------------------------------
def graph(kind: str, target_id: int, params) -> dict:
    """The validated request's graph: store.read() of the range, plus the server's events."""
    start, end = parse_range(params)
    max_points = parse_int(params, "max_points", DEFAULT_POINTS, MIN_POINTS, MAX_POINTS)
    series = parse_series(kind, params.get("series"))
    now = store.clock()
    step = store.choose_step(start, end, max_points, now)
    if (end - start).total_seconds() / step > MAX_POINTS:
        raise ValidationError({"from": [_("The range is too long: at most %(n)d buckets of the coarsest tier.")
                                        % {"n": MAX_POINTS}]})
    view = store.read(kind, target_id, start, end, series=series, step=step, now=now)
    view["events"] = server_events(target_id, start, end) if kind == TargetKind.SERVER else []
    return view


def gap_column(view: dict) -> list[str]:
    """Each bucket's gap reason ("" where it has data)."""
    reasons, runs = [], iter(view["gaps"])
    run = next(runs, None)
    for t in view["t"]:
        while run is not None and run["to"] <= t:
            run = next(runs, None)
        reasons.append(run["reason"] if run is not None and run["from"] <= t < run["to"] else "")
    return reasons


class MetricsCSVRenderer(renderers.BaseRenderer):
    """`?format=csv`: one row per bucket: its time (UTC), each series' average and peak, and the
    gap's reason where the bucket has no data. Counters are per second, as in the JSON."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        names = list(data["series"])
        header = ["time"]
        for name in names:
            column = data["series"][name]
            unit = f"{column['unit']}/s" if column["counter"] else column["unit"]
            suffix = f" ({unit})" if unit else ""
            header += [f"{name} avg{suffix}", f"{name} max{suffix}"]
        writer.writerow([*header, "gap"])
        for i, (t, reason) in enumerate(zip(data["t"], gap_column(data))):
            row = [dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")]
            for name in names:
                column = data["series"][name]
                row += ["" if column["avg"][i] is None else f"{column['avg'][i]:.6g}",
                        "" if column["max"][i] is None else f"{column['max'][i]:.6g}"]
            writer.writerow([*row, reason])
        return out.getvalue().encode(self.charset)


SeriesSerializer = inline_serializer("MetricSeries", {
    "avg": serializers.ListField(child=serializers.FloatField(allow_null=True),
                                 help_text="Per bucket: the average (counters: per second); null in a gap"),
    "max": serializers.ListField(child=serializers.FloatField(allow_null=True),
                                 help_text="Per bucket: the peak (counters: the highest one-minute rate)"),
    "sum": serializers.FloatField(required=False, help_text="Counters only: what it grew by over the range"),
    "unit": serializers.CharField(),
    "counter": serializers.BooleanField(),
})
GraphSerializer = type("MetricsGraph", (serializers.Serializer,), {
    "__doc__": "A target's series between `from` and `to`, one column per series, one bucket per `step`.",
    "kind": serializers.CharField(),
    "id": serializers.IntegerField(),
    "step": serializers.IntegerField(help_text="Seconds per bucket: the tier chosen for at most max_points"),
    "from": serializers.IntegerField(allow_null=True, help_text="The first bucket's start, epoch seconds"),
    "to": serializers.IntegerField(),
    "t": serializers.ListField(child=serializers.IntegerField(), help_text="Bucket starts, epoch seconds"),
    "series": serializers.DictField(child=SeriesSerializer),
    "gaps": serializers.ListField(child=inline_serializer("MetricGap", {
        "from": serializers.IntegerField(), "to": serializers.IntegerField(),
        "reason": serializers.ChoiceField(choices=["stopped", "node_offline", "collector_failed", "no_data"])})),
    "events": serializers.ListField(child=inline_serializer("MetricEvent", {
        "t": serializers.IntegerField(), "kind": serializers.CharField(), "label": serializers.CharField()}),
        help_text="Servers: reboots, migrations, resizes, backups, throttles… for markers"),
})
GRAPH_PARAMETERS = [
    OpenApiParameter("from", OpenApiTypes.STR, description="Start: ISO 8601 or epoch seconds (default: 1 h before to)"),
    OpenApiParameter("to", OpenApiTypes.STR, description="End: ISO 8601 or epoch seconds (default: now)"),
    OpenApiParameter("series", OpenApiTypes.STR, description="Comma-separated series names (default: all it has), "
                     "e.g. cpu,mem_used,net_rx,disk.vda.rd_bytes"),
    OpenApiParameter("max_points", OpenApiTypes.INT, description=f"{MIN_POINTS}–{MAX_POINTS} (default "
                     f"{DEFAULT_POINTS}): the finest tier that draws the range in at most this many buckets"),
    OpenApiParameter("format", OpenApiTypes.STR, enum=["json", "csv"], description="csv: one row per bucket"),
]


class TargetMetricsView(APIView):
    """The graph of one target; subclasses say which kind and how its object is found."""

    kind = ""
    renderer_classes = [*api_settings.DEFAULT_RENDERER_CLASSES, MetricsCSVRenderer]

    def get_permissions(self):
        return [IsAuthenticated(), *super().get_permissions()]

    def check_target(self, request, pk) -> int:
        raise NotImplementedError

    def get(self, request, pk):
        refuse_unknown_write_parameters(request, PARAMETERS)
        target_id = self.check_target(request, pk)
        view = graph(self.kind, target_id, request.query_params)
        headers = {}
        if request.accepted_renderer.format == "csv":
            headers["Content-Disposition"] = f'attachment; filename="{self.kind}-{target_id}-metrics.csv"'
        return Response(view, headers=headers)

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        if response.status_code >= 400 and isinstance(response.accepted_renderer, MetricsCSVRenderer):
            # An error is the API's JSON error, whatever format was asked for.
            response.accepted_renderer = renderers.JSONRenderer()
            response.accepted_media_type = "application/json"
        return response


def _documented(kind: str, tag: str):
    return extend_schema(operation_id=f"{tag}_metrics_retrieve", tags=[tag], parameters=GRAPH_PARAMETERS,
                         responses={200: GraphSerializer},
                         description=f"The {kind}'s monitoring series over a range (see the API reference).")


class ServerMetricsView(TargetMetricsView):
    kind = TargetKind.SERVER

    def check_target(self, request, pk) -> int:
        return actor(request).get_or_404(VirtualServer.objects.only("pk"), pk=pk).pk

    @_documented("server", "servers")
    def get(self, request, pk):
        return super().get(request, pk)


class ProviderTargetMetricsView(TargetMetricsView):
    """Nodes, storages, networks and pools: the provider's alone."""

    permission_classes = [IsAdmin]
    model = None

    def check_target(self, request, pk) -> int:
        return actor(request).get_or_404(self.model.objects.only("pk"), pk=pk).pk


class NodeMetricsView(ProviderTargetMetricsView):
    kind, model = TargetKind.NODE, Node

    @_documented("node", "nodes")
    def get(self, request, pk):
        return super().get(request, pk)


class StorageMetricsView(ProviderTargetMetricsView):
    kind, model = TargetKind.STORAGE, Storage

    @_documented("storage", "storages")
    def get(self, request, pk):
        return super().get(request, pk)


class NetworkMetricsView(ProviderTargetMetricsView):
    kind, model = TargetKind.NETWORK, Network

    @_documented("network", "networks")
    def get(self, request, pk):
        return super().get(request, pk)


class PoolMetricsView(ProviderTargetMetricsView):
    kind, model = TargetKind.POOL, IpPool

    @_documented("IP pool", "ip-pools")
    def get(self, request, pk):
        return super().get(request, pk)


# -- top -----------------------------------------------------------------------------------------
TOP_BY = {"cpu": "%", "traffic": "B", "iops": "op/s"}
TOP_PARAMETERS = frozenset({"by", "from", "to", "limit"})
TOP_BUCKETS = 200  # the tier read for a top: the finest holding the period in this many buckets


def _score(by: str, data: dict) -> tuple[float, float, float]:
    """(sum, n, peak) of the ranked quantity in one bucket's data."""
    if by == "cpu":
        total, count, peak = data.get("cpu", (0, 0, 0))
        return total, count, peak
    if by == "traffic":
        names = [n for n in ("net_rx", "net_tx") if n in data]
    else:
        names = [n for n in data if n.endswith((".rd_ops", ".wr_ops"))]
    return sum(data[n][0] for n in names), 0, sum(data[n][2] for n in names)


def top(by: str, start: dt.datetime, end: dt.datetime, limit: int) -> dict:
    """The servers using most CPU (average % of their vCPUs), traffic (bytes in + out) or IOPS
    (average operations per second, all disks) over the period: one query over the buckets of
    the fitting tier, summed here, then one for the servers named."""
    now = store.clock()
    step = store.choose_step(start, end, TOP_BUCKETS, now)
    first = store.floor(start, step)
    totals: dict[int, list[float]] = {}
    rows = MetricBucket.objects.filter(kind=TargetKind.SERVER, step=step, start__gte=first, start__lt=end).filter(
        gap="").values_list("target_id", "data")
    for target_id, data in rows.iterator(chunk_size=5000):
        total, count, peak = _score(by, data)
        entry = totals.setdefault(target_id, [0.0, 0, 0.0])
        entry[0] += total
        entry[1] += count
        entry[2] = max(entry[2], peak)
    seconds = max((end - first).total_seconds(), 1)
    value = {"cpu": lambda e: e[0] / e[1] if e[1] else 0.0, "traffic": lambda e: e[0],
             "iops": lambda e: e[0] / seconds}[by]
    ranked = sorted(totals.items(), key=lambda item: value(item[1]), reverse=True)[:limit]
    servers = VirtualServer.objects.select_related("customer", "node").in_bulk([sid for sid, _ in ranked])
    results = []
    for server_id, entry in ranked:
        server = servers.get(server_id)
        results.append({
            "server": server_id, "hostname": server.hostname if server else "",
            "customer": server.customer_id if server else None,
            "customer_name": server.customer.name if server else "",
            "node": server.node.name if server and server.node else "",
            "value": value(entry), "peak": entry[2], "unit": TOP_BY[by],
        })
    return {"by": by, "step": step, "from": int((first - store.EPOCH).total_seconds()),
            "to": int((end - store.EPOCH).total_seconds()), "results": results}


TopSerializer = inline_serializer("MetricsTop", {
    "by": serializers.ChoiceField(choices=list(TOP_BY)),
    "step": serializers.IntegerField(help_text="The tier read, seconds per bucket"),
    "from": serializers.IntegerField(), "to": serializers.IntegerField(),
    "results": serializers.ListField(child=inline_serializer("MetricsTopServer", {
        "server": serializers.IntegerField(), "hostname": serializers.CharField(),
        "customer": serializers.IntegerField(allow_null=True), "customer_name": serializers.CharField(),
        "node": serializers.CharField(),
        "value": serializers.FloatField(help_text="cpu: average %; traffic: bytes in + out; iops: average op/s"),
        "peak": serializers.FloatField(help_text="cpu: peak %; traffic: peak B/s; iops: peak op/s"),
        "unit": serializers.CharField()})),
})


class MetricsTopView(APIView):
    """Admins: the servers that used most CPU, traffic or IOPS over a period."""

    permission_classes = [IsAuthenticated, IsAdmin]

    @extend_schema(
        operation_id="metrics_top_retrieve", tags=["metrics"],
        parameters=[
            OpenApiParameter("by", OpenApiTypes.STR, enum=list(TOP_BY), description="cpu (default), traffic or iops"),
            OpenApiParameter("from", OpenApiTypes.STR, description="ISO 8601 or epoch seconds (default: 24 h before to)"),
            OpenApiParameter("to", OpenApiTypes.STR, description="ISO 8601 or epoch seconds (default: now)"),
            OpenApiParameter("limit", OpenApiTypes.INT, description="1–100 (default 10)"),
        ],
        responses={200: TopSerializer},
    )
    def get(self, request):
        refuse_unknown_write_parameters(request, TOP_PARAMETERS)
        params = request.query_params
        by = params.get("by") or "cpu"
        if by not in TOP_BY:
            raise ValidationError({"by": [_("One of %(names)s.") % {"names": ", ".join(TOP_BY)}]})
        start, end = parse_range(params, dt.timedelta(hours=24))
        limit = parse_int(params, "limit", 10, 1, 100)
        return Response(top(by, start, end, limit))

"""`{% server_usage server as usage %}`: this month's usage of a server, for the server page."""

from django import template
from django.utils import timezone

register = template.Library()


@register.simple_tag
def server_usage(server) -> dict:
    from panel.usage.collector import month_start, quota_bytes, usage_between
    from panel.usage.models import UsageState

    now = timezone.now()
    sums = usage_between(server, month_start(now), now)
    traffic = sums["rx_bytes"] + sums["tx_bytes"]
    quota = quota_bytes(server)
    state = UsageState.objects.filter(server=server, month=month_start(now).date()).first()
    return {
        "rx_bytes": sums["rx_bytes"], "tx_bytes": sums["tx_bytes"], "traffic_bytes": traffic,
        "quota_bytes": quota, "percent": min(100, traffic * 100 // quota) if quota else None,
        "cpu_hours": round(sums["cpu_ns"] / 3.6e12, 2), "uptime_hours": sums["uptime_seconds"] // 3600,
        "read_bytes": sums["read_bytes"], "write_bytes": sums["write_bytes"],
        "throttled": bool(state and state.throttled),
    }

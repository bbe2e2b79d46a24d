"""The periodic tasks of the worker, kept as django-q2 schedules."""

from django.conf import settings


def ensure_schedules() -> None:
    from django_q.models import Schedule

    Schedule.objects.update_or_create(
        name="reconcile",
        defaults={
            "func": "panel.vps.reconciler.reconcile_all",
            "schedule_type": Schedule.MINUTES,
            "minutes": settings.RECONCILE_INTERVAL_MINUTES,
            "repeats": -1,
        },
    )
    # Template files copied onto the share by hand show up without anyone pressing "rescan".
    Schedule.objects.update_or_create(
        name="scan-os-templates",
        defaults={"func": "templates_os.repository.scan", "schedule_type": Schedule.MINUTES, "minutes": 5,
                  "repeats": -1},
    )
    # Monitoring and billing's counters from one read of each node, then the traffic quota
    # (panel/metrics/collector.py); it took over from "collect-usage" of older versions.
    Schedule.objects.filter(name="collect-usage").delete()
    Schedule.objects.update_or_create(
        name="collect-metrics",
        defaults={"func": "panel.metrics.collector.collect", "schedule_type": Schedule.MINUTES, "minutes": 1,
                  "repeats": -1},
    )
    Schedule.objects.update_or_create(
        name="collect-filesystems",
        defaults={"func": "panel.metrics.collector.collect_filesystems", "schedule_type": Schedule.MINUTES,
                  "minutes": 15, "repeats": -1},
    )
    # The alert rules against the minute's figures (panel/alerts/evaluation.py).
    Schedule.objects.update_or_create(
        name="evaluate-alerts",
        defaults={"func": "panel.alerts.evaluation.evaluate", "schedule_type": Schedule.MINUTES, "minutes": 1,
                  "repeats": -1},
    )

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

"""The worker's periodic webhook task: sends the deliveries whose next attempt is due."""


def ensure_schedule(using: str = "default", **_signal_kwargs) -> None:
    """Create or update the every-minute schedule of `deliver_due` (idempotent)."""
    from django_q.models import Schedule

    Schedule.objects.using(using).update_or_create(
        name="webhook-deliveries",
        defaults={
            "func": "panel.webhooks.delivery.deliver_due",
            "schedule_type": Schedule.MINUTES,
            "minutes": 1,
            "repeats": -1,
        },
    )

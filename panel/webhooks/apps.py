from django.apps import AppConfig
from django.db.models.signals import post_migrate


class WebhooksConfig(AppConfig):
    name = "panel.webhooks"
    label = "webhooks"
    verbose_name = "Webhooks"

    def ready(self) -> None:
        from panel.events import event_raised
        from panel.webhooks.delivery import fan_out_event
        from panel.webhooks.schedules import ensure_schedule

        # Every event raised by the domain gets its deliveries in the emitting transaction.
        event_raised.connect(fan_out_event, dispatch_uid="webhooks-fan-out")

        # After every migrate: `make run` migrates before it starts the worker, so the
        # retry schedule exists wherever the tables do.
        post_migrate.connect(ensure_schedule, sender=self, dispatch_uid="webhooks-schedule")

from django.apps import AppConfig


class MetricsConfig(AppConfig):
    name = "panel.metrics"
    label = "metrics"
    verbose_name = "Monitoring"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # The worker's task counter (django-q2's post_execute) and the /metrics settings check.
        from panel.metrics import prometheus  # noqa: F401

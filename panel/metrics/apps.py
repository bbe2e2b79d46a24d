from django.apps import AppConfig


class MetricsConfig(AppConfig):
    name = "panel.metrics"
    label = "metrics"
    verbose_name = "Monitoring"
    default_auto_field = "django.db.models.BigAutoField"

from django.apps import AppConfig


class NovncConfig(AppConfig):
    name = "novnc"
    verbose_name = "Browser console"

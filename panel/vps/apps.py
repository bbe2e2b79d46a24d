from django.apps import AppConfig


class VpsConfig(AppConfig):
    name = "panel.vps"
    label = "vps"
    verbose_name = "Virtual servers"

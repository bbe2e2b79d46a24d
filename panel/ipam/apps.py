from django.apps import AppConfig


class IpamConfig(AppConfig):
    name = "panel.ipam"
    label = "ipam"
    verbose_name = "IP address management"

from django.apps import AppConfig


class TemplatesOsConfig(AppConfig):
    name = "templates_os"
    verbose_name = "OS templates"

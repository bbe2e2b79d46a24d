from django.apps import AppConfig
from django.db.models.signals import post_migrate


def create_cache_table(sender, using="default", verbosity=1, **_kwargs) -> None:
    """The database cache's table (the API's rate limits count there, settings.CACHES) after
    every migrate, so `make run`, upgrades and test databases have it; nothing when CACHES is
    Redis, and nothing when the table is there already."""
    from django.core.management import call_command

    call_command("createcachetable", database=using, verbosity=max(verbosity - 1, 0))


class ApiConfig(AppConfig):
    name = "panel.api"
    label = "api"
    verbose_name = "REST API"

    def ready(self) -> None:
        post_migrate.connect(create_cache_table, sender=self, dispatch_uid="api-cache-table")

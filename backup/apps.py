from django.apps import AppConfig
from django.db.models.signals import post_migrate


class BackupConfig(AppConfig):
    name = "backup"
    verbose_name = "Backups"

    def ready(self) -> None:
        from backup.schedules import sync_schedules

        # Each backup plan is a django-q2 cron schedule; after every migrate they match the plans.
        post_migrate.connect(sync_schedules, sender=self, dispatch_uid="backup-schedules")

from django.core.management.base import BaseCommand

from templates_os.repository import scan


class Command(BaseCommand):
    help = "Read the OS template share again (also done every few minutes by the worker)."

    def handle(self, *args, **options):
        for t in scan():
            state = "offered" if t.offered else ("disabled" if t.valid else f"invalid: {t.invalid_reason}")
            self.stdout.write(f"{t.slug}: {state}")

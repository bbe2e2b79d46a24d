from django.core.management.base import BaseCommand

from recipes.catalog import load_catalog
from templates_os.repository import install_catalog, scan, share


class Command(BaseCommand):
    help = ("Put the shipped OS template definitions on the template share and the shipped recipes "
            "in the database (nothing already there is overwritten), then scan the share.")

    def handle(self, *args, **options):
        copied = install_catalog()
        added = load_catalog()
        templates = scan()
        self.stdout.write(f"template share {share()}: {len(copied)} files copied; recipes added: {len(added)}")
        for t in templates:
            state = "offered" if t.offered else ("disabled" if t.valid else f"invalid: {t.invalid_reason}")
            self.stdout.write(f"  {t.slug}: {state}")

"""`manage.py restore_panel FILE`: bring this panel (a fresh install, typically) back to a panel backup."""

import os
import sys

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from backup import panel_state

# What the admin checks first after a restore.
SUMMARY = [("accounts.customer", "customers"), ("vps.virtualserver", "servers"), ("nodes.node", "nodes"),
           ("accounts.apikey", "API keys")]


class Command(BaseCommand):
    help = "Replace everything in the panel's database with a panel backup, and restore its keys."

    def add_arguments(self, parser):
        parser.add_argument("file", help="the panel backup to restore")
        parser.add_argument("--key", default="", help="the backup key (default: PANEL_BACKUP_KEY or DATA_DIR/backup_key)")
        parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    def handle(self, *args, file: str, key: str, yes: bool, **options):
        given = key or os.environ.get("PANEL_BACKUP_KEY", "")
        key = given or panel_state.backup_key(create=False)
        if not key:
            raise CommandError("no backup key: pass --key=KEY (or set PANEL_BACKUP_KEY); "
                               f"{panel_state.key_file()} does not exist")
        try:
            with open(file, "rb") as inp:
                # Check the key and the file before asking or touching anything.
                manifest, _db, _keys = panel_state.read(inp, key)
                panel_state.check_versions(manifest)
                target = f"{connection.vendor}/{settings.DATABASES['default']['NAME']}"
                if not yes:
                    self.stdout.write(f"This replaces everything in the database at {target} with the backup "
                                      f"of {manifest['created_at']}. Type 'restore' to continue: ", ending="")
                    self.stdout.flush()
                    if sys.stdin.readline().strip() != "restore":
                        raise CommandError("not restored")
                # A fresh install has no tables yet; an existing one may lag behind this code.
                call_command("migrate", interactive=False, verbosity=0)
                inp.seek(0)
                result = panel_state.restore(inp, key)
        except OSError as exc:
            raise CommandError(f"cannot read {file}: {exc}") from exc
        except panel_state.PanelBackupError as exc:
            raise CommandError(f"{file}: {exc}") from exc

        self.stdout.write(self.style.SUCCESS(f"Restored the panel backup of {manifest['created_at']}:"))
        for label, title in SUMMARY:
            self.stdout.write(f"  {title}: {result['counts'].get(label, 0)}")
        if given and panel_state.save_backup_key(given):
            self.stdout.write(f"The backup key was saved to {panel_state.key_file()} for this panel's next backups.")
        for warning in result["warnings"]:
            self.stdout.write(self.style.WARNING(f"Warning: {warning}"))
        self.stdout.write("Restart the panel (web and worker) so that they use the restored keys.")

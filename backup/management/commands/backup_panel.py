"""`manage.py backup_panel FILE`: write a panel backup (database, settings, keys) by hand or from cron."""

import os
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from backup import panel_state


class Command(BaseCommand):
    help = "Write an encrypted backup of the panel itself (database, settings and keys) to FILE."

    def add_arguments(self, parser):
        parser.add_argument("file", help="where to write the backup (replaced if it exists)")
        parser.add_argument("--key", default="", help="the backup key (default: PANEL_BACKUP_KEY or DATA_DIR/backup_key)")

    def handle(self, *args, file: str, key: str, **options):
        from_file = not (key or os.environ.get("PANEL_BACKUP_KEY"))
        key = key or os.environ.get("PANEL_BACKUP_KEY", "") or panel_state.backup_key()
        from_file = from_file and not getattr(settings, "PANEL_BACKUP_KEY", "")
        path = Path(file)
        tmp = path.with_name(f".{path.name}.partial")
        try:
            # 0600 from the start: the file holds the panel's keys (encrypted, but still).
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                manifest = panel_state.dump(out, key)
            os.replace(tmp, path)  # never a half-written backup under the final name
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise CommandError(f"cannot write {path}: {exc}") from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.stdout.write(f"Panel backup written to {path}:")
        for label, count in manifest["counts"].items():
            self.stdout.write(f"  {label}: {count}")
        if from_file:
            self.stdout.write(f"It opens only with the backup key in {panel_state.key_file()}: keep a copy of it elsewhere.")


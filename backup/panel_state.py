"""The panel's own backup: its database, settings and keys, in one encrypted file.

A panel backup is MAGIC followed by a Fernet token (AES-CBC + HMAC, so any change to the file
is detected) of a gzipped tar holding:

- manifest.json: format, creation time, each app's last applied migration, row counts;
- db.json: Django's dumpdata of the project's data (everything but derived or transient tables);
- keys/credentials_key, keys/secret_key, keys/instance_id: the secrets the data depends on
  (node SSH keys and FTP passwords in the database are encrypted with CREDENTIALS_KEY).

The backup key is not CREDENTIALS_KEY: it is PANEL_BACKUP_KEY or a key generated once into the
data folder, and the admin must keep a copy elsewhere, since the keys inside the file cannot help
to open it. `restore()` brings a freshly installed (migrated) panel back to the backed-up state.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import secrets
import tarfile
import tempfile
from pathlib import Path
from typing import BinaryIO

from cryptography.fernet import Fernet, InvalidToken
from django.apps import apps
from django.conf import settings
from django.core.management import CommandError, call_command
from django.core.serializers.base import DeserializationError
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections, transaction
from django.db.migrations.loader import MigrationLoader
from django.utils import timezone

MAGIC = b"PANELBACKUP1\n"
FORMAT = 1

# Left out of the dump: content types and permissions are recreated by `migrate` (post_migrate),
# sessions and django-q2's tasks/queue are transient, and its schedules are rebuilt from the
# panel's own rows (webhooks' post_migrate, backup plans' sync_schedules) after a restore.
EXCLUDED_APPS = frozenset({"contenttypes", "sessions", "admin", "django_q"})
EXCLUDED_MODELS = frozenset({"auth.permission"})

# The secrets a backup carries: file name inside the archive -> (setting, environment variable,
# file in DATA_DIR that settings.py reads when the variable is unset).
KEYS = {
    "credentials_key": ("CREDENTIALS_KEY", "CREDENTIALS_KEY", "credentials_key"),
    "secret_key": ("SECRET_KEY", "SECRET_KEY", "secret_key"),
    "instance_id": ("PANEL_INSTANCE_ID", "PANEL_INSTANCE_ID", "instance_id"),
}


class PanelBackupError(Exception):
    """A panel backup cannot be read or restored; the message is meant for the admin."""


# --- The backup key ------------------------------------------------------------------------------

def key_file() -> Path:
    return Path(settings.DATA_DIR) / "backup_key"


def backup_key(*, create: bool = True) -> str:
    """PANEL_BACKUP_KEY, else the key in DATA_DIR/backup_key, generated (mode 0600) on first use.

    With create=False a missing key file gives "" instead: a restore must not invent a key that
    cannot open anything.
    """
    configured = getattr(settings, "PANEL_BACKUP_KEY", "")
    if configured:
        return configured
    path = key_file()
    if not create:
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            return ""
    return _secret_in_file(path)


def _secret_in_file(path: Path, nbytes: int = 32) -> str:
    # Like panel.env.secret_in_file: O_EXCL so two processes racing on first use agree on one key.
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        value = secrets.token_urlsafe(nbytes)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_text().strip()
        with os.fdopen(fd, "w") as fh:
            fh.write(value)
        return value


def save_backup_key(value: str) -> bool:
    """Keep `value` as this panel's backup key when it has none yet (after restoring with --key,
    later backups then open with the key the admin already keeps). True when written."""
    if getattr(settings, "PANEL_BACKUP_KEY", "") or key_file().exists():
        return False
    _write_secret(key_file(), value)
    return True


def _write_secret(path: Path, value: str) -> None:
    # Write beside and rename: a crash never leaves a half-written key, and the mode is 0600
    # from the start (never briefly world-readable).
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(value)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fernet(key: str) -> Fernet:
    # The same derivation as panel/crypto.py: any string becomes a 32-byte Fernet key.
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(key.encode()).digest()))


# --- What is dumped --------------------------------------------------------------------------------

def _included(model) -> bool:
    meta = model._meta
    return (meta.app_label not in EXCLUDED_APPS and meta.label_lower not in EXCLUDED_MODELS
            and meta.managed and not meta.proxy and not meta.swapped)


def dumped_models() -> list:
    """The concrete models a panel backup covers (auto-created M2M tables travel with their owner)."""
    return [m for m in apps.get_models() if _included(m)]


def applied_migrations(using: str = DEFAULT_DB_ALIAS) -> dict[str, str]:
    """{app: the last applied migration} of this database."""
    loader = MigrationLoader(connections[using], ignore_no_migrations=True)
    latest: dict[str, tuple[int, str]] = {}
    for app, name in loader.applied_migrations:
        if (app, name) not in loader.graph.nodes:
            continue  # a squashed-away or deleted migration still recorded
        # The applied migration with the most ancestors is the app's latest.
        depth = len(loader.graph.forwards_plan((app, name)))
        if app not in latest or depth > latest[app][0]:
            latest[app] = (depth, name)
    return {app: name for app, (_depth, name) in sorted(latest.items())}


# --- Writing a backup -----------------------------------------------------------------------------

def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o600
    info.mtime = int(timezone.now().timestamp())
    tar.addfile(info, io.BytesIO(data))


def _dumpdata(using: str) -> bytes:
    out = io.StringIO()
    # use_base_manager: a model whose default manager hides rows (soft delete) is dumped whole.
    # Naming the models (rather than excluding) keeps dump and `_wipe` to the very same set.
    labels = [model._meta.label for model in dumped_models()]
    call_command("dumpdata", *labels, use_base_manager=True, database=using,
                 format="json", indent=None, stdout=out)
    return out.getvalue().encode()


def _consistent_dump(using: str) -> bytes:
    """dumpdata in one snapshot, so rows written meanwhile never leave dangling references."""
    connection = connections[using]
    if connection.in_atomic_block:
        return _dumpdata(using)
    if connection.vendor == "mysql":
        # The panel runs READ COMMITTED, where each SELECT sees a new snapshot; this applies to
        # the next transaction only.
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    with transaction.atomic(using=using):
        return _dumpdata(using)


def pack(manifest: dict, db_json: bytes, keys: dict[str, str], key: str) -> bytes:
    """The bytes of a panel backup of these parts (the inverse of `read`)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        _add(tar, "manifest.json", json.dumps(manifest, indent=2, sort_keys=True).encode())
        _add(tar, "db.json", db_json)
        for name, value in keys.items():
            _add(tar, f"keys/{name}", value.encode())
    return MAGIC + _fernet(key).encrypt(buffer.getvalue())


def dump(out: BinaryIO, key: str | None = None, *, using: str = DEFAULT_DB_ALIAS) -> dict:
    """Write a panel backup to `out` (encrypted with `key`, default `backup_key()`); returns its manifest."""
    key = key or backup_key()
    db_json = _consistent_dump(using)
    counts: dict[str, int] = {}
    for row in json.loads(db_json):
        counts[row["model"]] = counts.get(row["model"], 0) + 1
    manifest = {
        "format": FORMAT,
        "created_at": timezone.now().isoformat(),
        "django_migrations": applied_migrations(using),
        "counts": dict(sorted(counts.items())),
    }
    keys = {name: getattr(settings, setting) for name, (setting, _env, _file) in KEYS.items()}
    out.write(pack(manifest, db_json, keys, key))
    return manifest


# --- Reading and restoring ------------------------------------------------------------------------

def read(inp: BinaryIO, key: str) -> tuple[dict, bytes, dict[str, str]]:
    """(manifest, db.json, {key name: value}) of a panel backup; PanelBackupError when it cannot be."""
    if inp.read(len(MAGIC)) != MAGIC:
        raise PanelBackupError("not a panel backup")
    try:
        archive = _fernet(key).decrypt(inp.read())
    except InvalidToken:
        raise PanelBackupError("cannot decrypt: wrong backup key or a damaged file") from None
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
        manifest = json.loads(files["manifest.json"])
        db_json = files["db.json"]
        keys = {name: files[f"keys/{name}"].decode() for name in KEYS}
    except (tarfile.TarError, KeyError, ValueError, OSError) as exc:
        # Authenticated yet malformed: written by something else with the same key.
        raise PanelBackupError(f"the panel backup's contents are malformed ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise PanelBackupError(f"unsupported panel backup format {manifest.get('format')!r}; upgrade first")
    return manifest, db_json, keys


def check_versions(manifest: dict, using: str = DEFAULT_DB_ALIAS) -> None:
    """Refuse a backup made by a newer panel: its data may not fit this install's tables."""
    loader = MigrationLoader(connections[using], ignore_no_migrations=True)
    for app, name in manifest.get("django_migrations", {}).items():
        if (app, name) not in loader.graph.nodes:
            raise PanelBackupError(
                f"this backup comes from a newer panel version; upgrade first (migration {app}.{name} is unknown here)")


def _wipe(using: str) -> None:
    """Delete every row the dump covers (and the M2M rows of those models)."""
    connection = connections[using]
    tables = []
    for model in dumped_models():
        tables.append(model._meta.db_table)
        tables.extend(f.remote_field.through._meta.db_table for f in model._meta.local_many_to_many
                      if f.remote_field.through._meta.auto_created)
    existing = set(connection.introspection.table_names())
    # Plain DELETEs, not flush: TRUNCATE commits implicitly on MariaDB, and this must roll back
    # as a whole. Checks are off so the order does not matter (SQLite defers them to commit).
    with connection.constraint_checks_disabled(), connection.cursor() as cursor:
        for table in dict.fromkeys(tables):
            if table in existing:
                cursor.execute(f"DELETE FROM {connection.ops.quote_name(table)}")


def _install_keys(keys: dict[str, str]) -> list[str]:
    warnings = []
    data_dir = Path(settings.DATA_DIR)
    for name, (setting, env, filename) in KEYS.items():
        value = keys[name]
        if os.environ.get(env):
            # settings.py takes the variable over the file, so a file would be ignored.
            if os.environ[env] != value:
                warnings.append(f"{env} is set in the environment: set it to the backup's value "
                                f"(in keys/{name} of the backup) and restart, or the restored data "
                                f"will not match it")
            continue
        _write_secret(data_dir / filename, value)
    return warnings


def restore(inp: BinaryIO, key: str, *, write_keys: bool = True, using: str = DEFAULT_DB_ALIAS) -> dict:
    """Replace this (migrated) database's data with the backup's; returns {"counts", "warnings"}.

    All or nothing: a bad file, a newer panel's backup or a failed load leaves the database as it was.
    """
    from panel import crypto

    manifest, db_json, keys = read(inp, key)
    check_versions(manifest, using)
    warnings: list[str] = []
    current = applied_migrations(using)
    if any(current.get(app) != name for app, name in manifest["django_migrations"].items()):
        warnings.append("the backup comes from an older panel version: its data was loaded into the "
                        "current tables (fields added since then got their defaults)")

    with tempfile.TemporaryDirectory() as tmp:
        fixture = Path(tmp) / "db.json"  # loaddata needs a file and tells formats by extension
        fixture.write_bytes(db_json)
        try:
            with transaction.atomic(using=using):
                _wipe(using)
                # ignorenonexistent: an older backup may carry fields removed since.
                call_command("loaddata", str(fixture), database=using, ignorenonexistent=True, verbosity=0)
                _resync_schedules()
        except (DatabaseError, DeserializationError, CommandError) as exc:
            # Rolled back: the database is as it was before.
            raise PanelBackupError(f"the backup's data does not load into this database, nothing changed ({exc})") from exc

    if write_keys:
        warnings.extend(_install_keys(keys))
    # The restored rows are encrypted with the backup's key: use it in this process at once.
    settings.CREDENTIALS_KEY = keys["credentials_key"]
    crypto._fernet.cache_clear()
    counts = {model._meta.label_lower: model._base_manager.using(using).count() for model in dumped_models()}
    return {"counts": counts, "warnings": warnings, "manifest": manifest}


def _resync_schedules() -> None:
    # django-q2 schedules are not in the dump: drop the replaced panel's backup-plan schedules and
    # create the restored plans' ones.
    try:
        from backup.schedules import sync_schedules
    except ImportError:
        return
    sync_schedules()

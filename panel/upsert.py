"""Writing many rows whether or not they exist, in one statement per batch.

Django's `bulk_update` builds a `CASE WHEN pk=… THEN …` per field and row, which costs more in
Python than the database takes to run it (the monitoring collector's minute spent most of its
time there). `bulk_create(update_conflicts=True)` is `INSERT … ON DUPLICATE KEY UPDATE` on
MariaDB/MySQL and `INSERT … ON CONFLICT (…) DO UPDATE` on SQLite.
"""

from django.db import connection


def upsert(objs: list, update_fields: list[str], unique_fields: list[str], batch_size: int = 500) -> None:
    """Insert `objs`, or update `update_fields` of the rows that exist with their `unique_fields`
    (MariaDB matches on any unique key of the table and takes no list of them)."""
    if not objs:
        return
    options = {"update_conflicts": True, "update_fields": update_fields}
    if connection.features.supports_update_conflicts_with_target:
        options["unique_fields"] = unique_fields
    type(objs[0]).objects.bulk_create(objs, batch_size=batch_size, **options)

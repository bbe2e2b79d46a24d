"""Fixtures shared by the backup tests (import them into a test module to use them)."""

import pytest

from backup.models import BackupTarget


@pytest.fixture
def target(db, tmp_path):
    """A folder backup target in the test's tmp_path."""
    folder = tmp_path / "backups"
    folder.mkdir()
    return BackupTarget.objects.create(name="disk", kind="dir", path=str(folder))


@pytest.fixture
def queued_server(world, alice_server, monkeypatch):
    """Alice's running server on a plan with 3 backups; from here on operations stay queued."""
    from panel import operations

    world.plan.backups = 3
    world.plan.save()
    monkeypatch.setattr(operations, "enqueue", lambda op_id: None)
    return alice_server

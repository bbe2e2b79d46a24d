"""Backups to a folder on the server's node (the fake driver; the real path is in
tests/e2e/test_backups.py and benchmarks/backup.py)."""

import blake3
import pytest
from django.core.exceptions import ValidationError

from backup import actions
from backup.models import Backup, BackupPlan, BackupTarget
from backup.node_folder import NodeFolderTarget, pool_name
from backup.connect import check_target
from backup.targets import TargetError
from nodes.connection import driver_for
from panel.accounts.tenancy import SYSTEM
from panel.vps.models import Operation
from tests.backup_fixtures import target as folder_target  # noqa: F401 (a fixture)


@pytest.fixture
def server(alice_server):
    alice_server.plan.backups = 5
    alice_server.plan.save()
    return alice_server


@pytest.fixture
def node_target(db):
    return BackupTarget.objects.create(name="on the node", kind="node", path="/srv/vps-backups")


def files_on(server, target) -> dict[str, bytes]:
    driver = driver_for(server.node.uri)
    pool = driver.host.pools.get(pool_name(target.id, target.path), {})
    return {name: driver.content(name) for name in pool}


def back_up(server, target, plan=None):
    op = actions.request_backup(SYSTEM, server.id, target=target, plan=plan)
    op.refresh_from_db()
    return op, Backup.objects.filter(operation=op).first()


def test_the_job_writes_into_the_nodes_folder_which_checksums_it_in_place(server, node_target):
    driver = driver_for(server.node.uri)
    driver.set_content(server.disk_volume, b"version one" * 1000)
    op, full = back_up(server, node_target)
    assert op.status == "succeeded", op.error
    assert (full.kind, full.node_id, full.compression) == ("full", server.node_id, "none")
    stored = files_on(server, node_target)
    image = f"{server.uuid}.{full.id:06d}-full.qcow2"
    assert stored[image] == b"version one" * 1000  # no staging copy, no compression
    assert full.checksum == f"blake3:{blake3.blake3(stored[image]).hexdigest()}"
    assert f"{server.uuid}.{full.id:06d}-full.manifest.json" in stored
    assert not [n for n in stored if n.endswith(".part")]
    # nothing went through the panel: no stream out of the node
    assert not [c for c in driver.calls if c[0] == "read_volume" and c[1] == image]
    assert "checksumming the image on node" in op.log

    driver.set_content(server.disk_volume, b"version two" * 1000)
    _op, second = back_up(server, node_target)
    assert (second.kind, second.parent_id) == ("incremental", full.id)

    driver.set_content(server.disk_volume, b"")
    op = actions.request_restore(SYSTEM, server.id, second.id)
    op.refresh_from_db()
    assert op.status == "succeeded", op.error
    assert driver.content(server.disk_volume) == b"version two" * 1000


def test_a_damaged_image_in_the_nodes_folder_is_refused(server, node_target):
    driver = driver_for(server.node.uri)
    driver.set_content(server.disk_volume, b"precious" * 500)
    _op, backup = back_up(server, node_target)
    image = f"{server.uuid}.{backup.id:06d}-full.qcow2"
    driver.set_content(image, b"precious" * 499 + b"PRECIOUS")
    driver.set_content(server.disk_volume, b"now")
    op = actions.request_restore(SYSTEM, server.id, backup.id)
    op.refresh_from_db()
    assert op.status == "failed" and "nothing was overwritten" in op.error
    assert driver.content(server.disk_volume) == b"now"


def restore_wiped_disk(server, backup, expected: bytes) -> None:
    """Wipe the disk, forget the driver's calls so far, restore `backup`: the disk is `expected`."""
    driver = driver_for(server.node.uri)
    driver.calls.clear()
    driver.set_content(server.disk_volume, b"")
    op = actions.request_restore(SYSTEM, server.id, backup.id)
    op.refresh_from_db()
    assert op.status == "succeeded", op.error
    assert driver.content(server.disk_volume) == expected


def test_a_restore_on_the_same_node_copies_and_checksums_the_files_there(server, node_target):
    driver = driver_for(server.node.uri)
    driver.set_content(server.disk_volume, b"first" * 1000)
    _op, full = back_up(server, node_target)
    driver.set_content(server.disk_volume, b"second" * 1000)
    _op, second = back_up(server, node_target)
    restore_wiped_disk(server, second, b"second" * 1000)
    images = {f"{server.uuid}.{b.id:06d}-{b.kind}.qcow2" for b in (full, second)}
    assert not [c for c in driver.calls if c[0] == "read_volume"]  # nothing streamed through the panel
    staged = [c[1] for c in driver.calls if c[0] == "copy_volume"]
    assert len(staged) == 2 and [c[1] for c in driver.calls if c[0] == "checksum_volume"] == staged
    assert not images & set(staged)  # the copies are checked, never the folder's files in place


def test_a_backup_with_another_checksum_algorithm_is_streamed_and_checked_by_the_panel(server, node_target):
    import hashlib

    driver = driver_for(server.node.uri)
    driver.set_content(server.disk_volume, b"old" * 1000)
    _op, backup = back_up(server, node_target)
    backup.checksum = "sha256:" + hashlib.sha256(b"old" * 1000).hexdigest()  # taken before b3sum was there
    backup.save()
    restore_wiped_disk(server, backup, b"old" * 1000)
    assert [c for c in driver.calls if c[0] == "read_volume"]
    assert not [n for n in driver.host.pools[server.storage.pool_name] if "restore" in n]  # no staging left


def test_retention_deletes_the_files_in_the_nodes_folder(server, node_target):
    plan = BackupPlan.objects.create(name="nightly", target=node_target, keep=1, full_every=1, scope="servers")
    made = [back_up(server, node_target, plan)[1] for _ in range(3)]
    assert [b.kind for b in made] == ["full", "full", "full"]
    assert list(Backup.objects.filter(server_uuid=server.uuid)) == [made[-1]]
    assert sorted(files_on(server, node_target)) == sorted([
        f"{server.uuid}.{made[-1].id:06d}-full.qcow2", f"{server.uuid}.{made[-1].id:06d}-full.manifest.json"])


def test_a_backup_fails_with_the_reason_when_the_folder_cannot_be_used(server, node_target, monkeypatch):
    from nodes.fake import FakeDriver
    from nodes.driver import DriverError

    def refuse(self, name, path):
        raise DriverError(f"cannot create {path}: Permission denied")

    monkeypatch.setattr(FakeDriver, "ensure_pool", refuse)
    op, backup = back_up(server, node_target)
    assert op.status == "failed" and "Permission denied" in op.error and server.node.name in op.error
    assert backup is None  # refused before anything was made


def test_the_check_runs_on_every_node_and_names_the_one_that_fails(server, node_target, monkeypatch):
    from nodes.fake import FakeDriver
    from nodes.driver import DriverError

    assert check_target(node_target) == ""
    node_target.refresh_from_db()
    assert node_target.free_bytes == 100 * 2**30

    original = FakeDriver.ensure_pool

    def refuse_on_alices_node(self, name, path):
        if self.uri == server.node.uri:
            raise DriverError("read-only file system")
        return original(self, name, path)

    monkeypatch.setattr(FakeDriver, "ensure_pool", refuse_on_alices_node)
    error = check_target(node_target)
    assert f"node {server.node.name}" in error and "read-only" in error


def test_the_panel_is_not_backed_up_to_a_nodes_folder(node_target, world):
    plan = BackupPlan(name="panel", target=node_target, scope="panel")
    with pytest.raises(ValidationError) as refused:
        plan.full_clean()
    assert "target" in refused.value.message_dict
    op = actions.request_panel_backup(SYSTEM, node_target)
    op.refresh_from_db()
    assert op.status == "failed" and "server backups only" in op.error
    assert Operation.objects.filter(kind="panel_backup", status="failed").count() == 1


def test_names_cannot_escape_the_pool(server, node_target):
    store = NodeFolderTarget(node_target.id, node_target.path, server.node)
    assert store.volume("3f2a/000001-full.qcow2") == "3f2a.000001-full.qcow2"
    for bad in ("../x", "/abs", "a/b/c", "a\nb"):
        with pytest.raises(ValueError):
            store.volume(bad)
    with pytest.raises(TargetError):  # disk images never go through the panel to a node folder
        with store.writer("big") as out:
            out.write(bytes(17 * 2**20))


def test_the_pool_follows_the_path(node_target):
    assert pool_name(node_target.id, "/a") != pool_name(node_target.id, "/b")


def test_backups_on_a_removed_node_refuse_to_restore_and_are_forgotten_by_retention(server, node_target):
    from backup import retention

    _op, backup = back_up(server, node_target)
    Backup.objects.filter(pk=backup.pk).update(node=None)  # what removing the node does (SET_NULL)
    op = actions.request_restore(SYSTEM, server.id, backup.id)
    op.refresh_from_db()
    assert op.status == "failed" and "no longer in the panel" in op.error and "nothing was overwritten" in op.error
    assert retention.delete_backups([Backup.objects.get(pk=backup.pk)]) == [backup.id]
    assert not Backup.objects.filter(pk=backup.pk).exists()


def test_only_a_removed_node_makes_retention_forget_a_backup(server, world):
    from backup import retention

    ftp = BackupTarget.objects.create(name="ftp", kind="ftp", host="127.0.0.1", password="not encrypted")
    backup = Backup.objects.create(server=server, server_uuid=server.uuid, target=ftp, kind="full", status="done",
                                   file_name="x/000001-full.qcow2")
    with pytest.raises(ValueError):  # an undecryptable password is an error, not a gone file
        retention.delete_backups([backup])
    assert Backup.objects.filter(pk=backup.pk).exists()

"""Backups and restores through the worker's real code path, on the fake driver, with a folder
target in tmp_path (the real libvirt/QEMU/FTP run is tests/e2e/test_backups.py)."""

import blake3
import json

import pytest

from backup import actions, retention
from backup.models import Backup, BackupPlan, BackupTarget
from backup.models import check_cron
from backup.schedules import run_plan, schedule_name
from nodes.connection import driver_for
from panel.accounts.tenancy import SYSTEM
from panel.api.models import Event
from panel.vps import lifecycle
from panel.vps.models import Operation
from tests.backup_fixtures import target  # noqa: F401 (a fixture)


@pytest.fixture
def server(alice_server):
    alice_server.plan.backups = 5
    alice_server.plan.save()
    return alice_server


def disk_of(server):
    return driver_for(server.node.uri)


def back_up(server, target, plan=None):
    op = actions.request_backup(SYSTEM, server.id, target=target, plan=plan)
    op.refresh_from_db()
    return op, Backup.objects.filter(operation=op).first()


def restore(server, backup):
    op = actions.request_restore(SYSTEM, server.id, backup.id)
    op.refresh_from_db()
    return op


def test_it_backs_up_a_running_server_then_incrementally_and_restores_a_destroyed_disk(server, target):
    driver = disk_of(server)
    driver.set_content(server.disk_volume, b"version one" * 1000)
    op, full = back_up(server, target)
    assert op.status == "succeeded", op.error
    assert (full.kind, full.status, full.parent) == ("full", "done", None)
    stored = (target_path(target) / full.file_name).read_bytes()
    assert full.checksum == f"blake3:{blake3.blake3(stored).hexdigest()}" and len(stored) == full.size_bytes
    manifest = json.loads((target_path(target) / full.file_name.replace(".qcow2.zst", ".manifest.json")).read_bytes())
    assert manifest["file"]["checksum"] == full.checksum and manifest["server"]["hostname"] == "alice-web"

    driver.set_content(server.disk_volume, b"version two" * 1000)
    _op, second = back_up(server, target)
    assert (second.kind, second.parent_id) == ("incremental", full.id)
    assert driver.checkpoints(server.domain_name) == [second.checkpoint]  # older bitmaps dropped

    driver.set_content(server.disk_volume, b"")  # the disk is destroyed
    op = restore(server, second)
    assert op.status == "succeeded", op.error
    assert driver.content(server.disk_volume) == b"version two" * 1000
    server.refresh_from_db()
    assert server.state == "running"
    assert not [v for v in driver.host.pools[server.storage.pool_name] if "-restore" in v or "-backup" in v]
    finished = Event.objects.filter(event="backup.finished").order_by("id")
    assert [e.data["status"] for e in finished] == ["done", "done"]
    assert finished.last().customer_id == server.customer_id


def target_path(target):
    from pathlib import Path

    return Path(target.path)


def test_a_corrupted_backup_file_is_refused_and_nothing_is_overwritten(server, target):
    driver = disk_of(server)
    driver.set_content(server.disk_volume, b"precious" * 5000)
    _op, backup = back_up(server, target)
    path = target_path(target) / backup.file_name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    driver.set_content(server.disk_volume, b"what the customer has now")

    op = restore(server, backup)
    assert op.status == "failed"
    assert "damaged" in op.error and "nothing was overwritten" in op.error
    assert driver.content(server.disk_volume) == b"what the customer has now"
    server.refresh_from_db()
    assert server.state == "running"
    assert ("stop" not in op.log) and not [c for c in driver.calls if c[0] == "move_volume"]


def test_a_missing_file_in_the_chain_refuses_the_restore(server, target):
    driver = disk_of(server)
    _op, full = back_up(server, target)
    _op, incremental = back_up(server, target)
    (target_path(target) / full.file_name).unlink()
    driver.set_content(server.disk_volume, b"current")
    op = restore(server, incremental)
    assert op.status == "failed" and f"#{full.id}" in op.error and "missing" in op.error
    assert driver.content(server.disk_volume) == b"current"


def test_a_restore_is_refused_up_front_when_the_chain_has_a_failed_backup(server, target):
    _op, full = back_up(server, target)
    _op, incremental = back_up(server, target)
    Backup.objects.filter(pk=full.pk).update(status="failed")
    with pytest.raises(lifecycle.Refused) as refused:
        actions.request_restore(SYSTEM, server.id, incremental.id)
    assert refused.value.code == "broken_chain"
    assert not Operation.objects.filter(kind="restore").exists()


def test_retention_deletes_only_whole_chains_and_keeps_at_least_keep(server, target):
    plan = BackupPlan.objects.create(name="nightly", target=target, keep=2, full_every=2, scope="servers")
    made = [back_up(server, target, plan)[1] for _ in range(5)]
    assert [b.kind for b in made] == ["full", "incremental", "full", "incremental", "full"]
    left = list(Backup.objects.filter(server_uuid=server.uuid).order_by("id"))
    assert [b.id for b in left] == [b.id for b in made[2:]]
    for backup in left:  # every kept incremental still has its parent, file and row
        assert backup.parent is None or backup.parent in left
        assert (target_path(target) / backup.file_name).exists()
    for gone in made[:2]:
        assert not (target_path(target) / gone.file_name).exists()


def test_the_server_plan_caps_how_many_backups_are_kept(server, target):
    server.plan.backups = 1
    server.plan.save()
    plan = BackupPlan.objects.create(name="nightly", target=target, keep=10, full_every=1, scope="servers")
    for _ in range(3):
        back_up(server, target, plan)
    assert Backup.objects.filter(server_uuid=server.uuid).count() == 1
    assert retention.keep_for(server, plan) == 1


def test_a_stopped_server_is_copied_again_only_when_its_disk_changed(server, target, tmp_path):
    driver = disk_of(server)
    lifecycle.request_action(SYSTEM, server.id, "stop")
    _op, first = back_up(server, target)
    op, second = back_up(server, target)  # nothing wrote to the disk: an incremental with no change
    assert (first.kind, first.checkpoint, second.kind, second.parent_id) == ("full", "", "incremental", first.id)
    assert "unchanged since backup" in op.log
    assert second.manifest["disk_stamp"] == first.manifest["disk_stamp"]
    (tmp_path / "other").mkdir()
    other = BackupTarget.objects.create(name="other", kind="dir", path=str(tmp_path / "other"))
    _op, elsewhere = back_up(server, other)  # another target has no copy to build on
    assert elsewhere.kind == "full"

    driver.set_content(server.disk_volume, b"written while stopped (a rescue mount)")
    _op, third = back_up(server, target)
    _op, fourth = back_up(server, target)
    lifecycle.request_action(SYSTEM, server.id, "start")
    lifecycle.request_action(SYSTEM, server.id, "stop")
    _op, fifth = back_up(server, target)  # a boot writes: its stamp moves
    assert [b.kind for b in (third, fourth, fifth)] == ["full", "incremental", "full"]
    assert fourth.parent_id == third.id

    driver.set_content(server.disk_volume, b"")
    assert restore(server, fourth).status == "succeeded"
    assert driver.content(server.disk_volume) == b"written while stopped (a rescue mount)"


def test_an_unchanged_stopped_disk_still_starts_a_new_chain_after_full_every(server, target):
    plan = BackupPlan.objects.create(name="nightly", target=target, keep=10, full_every=2, scope="servers")
    lifecycle.request_action(SYSTEM, server.id, "stop")
    kinds = [back_up(server, target, plan)[1].kind for _ in range(3)]
    assert kinds == ["full", "incremental", "full"]


def test_each_target_keeps_its_own_incremental_chain(server, target, tmp_path):
    # A nightly folder and a weekly remote copy: each backup's bitmap clean-up must leave the
    # other target's checkpoint, or every backup to it would be full.
    (tmp_path / "second").mkdir()
    second = BackupTarget.objects.create(name="offsite", kind="dir", path=str(tmp_path / "second"))
    driver = disk_of(server)
    _op, a1 = back_up(server, target)
    _op, b1 = back_up(server, second)
    _op, a2 = back_up(server, target)
    _op, b2 = back_up(server, second)
    assert [(b.kind, b.parent_id) for b in (a1, b1, a2, b2)] == [
        ("full", None), ("full", None), ("incremental", a1.id), ("incremental", b1.id)]
    assert sorted(driver.checkpoints(server.domain_name)) == sorted([a2.checkpoint, b2.checkpoint])

    lifecycle.request_action(SYSTEM, server.id, "stop")
    _op, a3 = back_up(server, target)  # no checkpoint: this target's chain starts anew
    assert (a3.kind, a3.checkpoint) == ("full", "")
    assert driver.checkpoints(server.domain_name) == [b2.checkpoint]


def test_an_unreachable_target_fails_the_backup_with_the_reason_and_stores_nothing(server):
    ftp = BackupTarget.objects.create(name="ftp", kind="ftp", host="127.0.0.1", port=9, username="u")
    op, backup = back_up(server, ftp)
    assert op.status == "failed" and "failed its check" in op.error and "127.0.0.1" in op.error
    assert backup is None
    ftp.refresh_from_db()
    assert ftp.check_error
    server.refresh_from_db()
    assert server.state == "running"


def test_a_failed_upload_leaves_a_failed_backup_and_no_file(server, target, monkeypatch):
    from nodes.driver import DriverError

    driver_for(server.node.uri).fail_next["read_volume"] = DriverError("the node went away", retryable=True)
    op, backup = back_up(server, target)
    assert op.status == "failed" and "went away" in op.error
    assert backup.status == "failed" and "went away" in backup.error
    assert not any(p.is_file() for p in target_path(target).rglob("*"))
    assert Event.objects.filter(event="backup.finished", data__status="failed").exists()


def test_a_plan_run_queues_backups_for_its_servers_and_says_what_it_skipped(server, target, world):
    other = lifecycle.create_server(SYSTEM, customer=world.bob_customer, plan=world.plan, hostname="bob-db",
                                    os_template="tiny")[0]
    plan = BackupPlan.objects.create(name="alice only", target=target, scope="customers")
    plan.customers.add(world.alice_customer)
    summary = run_plan(plan.id)
    assert "queued 1" in summary
    assert Backup.objects.filter(server=server, status="done").count() == 1
    assert not Backup.objects.filter(server=other).exists()
    plan.refresh_from_db()
    assert plan.last_run_summary == summary


def test_plans_become_cron_schedules_and_bad_cron_is_refused(target):
    from django.core.exceptions import ValidationError
    from django_q.models import Schedule

    plan = BackupPlan.objects.create(name="nightly", target=target, schedule="30 2 * * 1-5")
    schedule = Schedule.objects.get(name=schedule_name(plan.id))
    assert (schedule.schedule_type, schedule.cron, schedule.func) == ("C", "30 2 * * 1-5", "backup.schedules.run_plan")
    plan.enabled = False
    plan.save()
    assert not Schedule.objects.filter(name=schedule_name(plan.id)).exists()
    assert check_cron("61 * * * *") and check_cron("* * *") and not check_cron("*/15 * * * *")
    with pytest.raises(ValidationError):
        BackupPlan(name="bad", target=target, schedule="every night").full_clean()


def test_deleting_a_server_deletes_its_backups_unless_asked_to_keep_them(server, target, world):
    _op, backup = back_up(server, target)
    kept = lifecycle.create_server(SYSTEM, customer=world.alice_customer, plan=server.plan, hostname="keeper",
                                   os_template="tiny")[0]
    _op, kept_backup = back_up(kept, target)
    lifecycle.request_action(SYSTEM, server.id, "delete")
    assert not Backup.objects.filter(pk=backup.pk).exists()
    assert not (target_path(target) / backup.file_name).exists()
    lifecycle.request_action(SYSTEM, kept.id, "delete", {"keep_backups": True})
    kept_backup.refresh_from_db()
    assert kept_backup.server is None and kept_backup.hostname == "keeper"
    assert (target_path(target) / kept_backup.file_name).exists()


def test_a_backup_restores_as_a_new_server_with_new_addresses(server, target, world):
    driver = disk_of(server)
    driver.set_content(server.disk_volume, b"clone me")
    _op, backup = back_up(server, target)
    from panel.accounts.tenancy import Actor

    admin = Actor(user=world.admin, api_key=None, customer_id=None, is_admin=True)
    new, op = actions.restore_as_new_server(admin, backup.id, hostname="alice-clone")
    op.refresh_from_db()
    new.refresh_from_db()
    assert op.status == "succeeded", op.error
    assert (new.state, new.customer_id, new.hostname) == ("running", server.customer_id, "alice-clone")
    assert driver_for(new.node.uri).content(new.disk_volume) == b"clone me"


def test_customers_need_a_plan_with_backups(alice_server, target, world):
    from panel.accounts.tenancy import Actor

    alice = Actor(user=world.alice, api_key=None, customer_id=world.alice_customer.id, is_admin=False)
    with pytest.raises(lifecycle.Refused) as refused:
        actions.request_backup(alice, alice_server.id)
    assert refused.value.code == "backups_not_included"
    bob = Actor(user=world.bob, api_key=None, customer_id=world.bob_customer.id, is_admin=False)
    with pytest.raises(Exception) as not_found:
        actions.request_backup(bob, alice_server.id)
    assert not_found.type.__name__ == "Http404"


def test_the_panel_backs_itself_up_to_a_target(world, target):
    op = actions.request_panel_backup(SYSTEM, target)
    op.refresh_from_db()
    assert op.status == "succeeded", op.error
    backup = Backup.objects.get(kind="panel")
    data = (target_path(target) / backup.file_name).read_bytes()
    assert backup.checksum == f"blake3:{blake3.blake3(data).hexdigest()}"
    assert b"Alice Ltd" not in data  # encrypted


def test_a_transfer_that_breaks_off_is_not_called_damage(server, target, monkeypatch):
    import os

    from nodes.driver import DriverError
    from nodes.fake import FakeDriver

    driver = disk_of(server)
    driver.set_content(server.disk_volume, os.urandom(10 * 2**20))  # several chunks, incompressible
    _op, backup = back_up(server, target)
    driver.set_content(server.disk_volume, b"current")

    def breaks_off(self, pool, name, chunks, size):
        next(iter(chunks))  # the first chunk arrives, then the node goes away
        raise DriverError("the node went away", retryable=True)

    monkeypatch.setattr(FakeDriver, "write_volume", breaks_off)
    op = restore(server, backup)
    assert op.status == "failed" and "went away" in op.error and "damaged" not in op.error
    assert driver.content(server.disk_volume) == b"current"


def test_the_progress_counts_the_image_not_the_disks_virtual_size(server, target):
    disk_of(server).set_content(server.disk_volume, b"x" * (3 * 2**20))
    op, backup = back_up(server, target)
    assert backup.status == "done", backup.error
    assert "sent: 0 of 3 MiB" in op.log and "of 1024 MiB" not in op.log

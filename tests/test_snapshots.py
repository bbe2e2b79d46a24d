"""Snapshots through the worker's real code path on the fake driver and MariaDB (the real
libvirt/QEMU run is tests/e2e/test_snapshots.py): the chain of overlays, the plan's limits,
what is refused and leaves nothing, and how backups, restores and definitions use the top file."""

import pytest

from backup import actions as backup_actions
from backup.models import Backup
from nodes.connection import driver_for
from nodes.driver import DriverError
from panel.accounts.tenancy import SYSTEM, Actor
from panel.images import snapshot_actions
from panel.images.models import Snapshot
from panel.refusals import Refused
from panel.vps import lifecycle
from panel.vps.models import Operation
from tests.backup_fixtures import target  # noqa: F401 (a fixture)


@pytest.fixture
def server(alice_server):
    plan = alice_server.plan
    plan.snapshots, plan.snapshot_memory, plan.backups = 3, True, 5
    plan.save()
    return alice_server


def alice(world):
    return Actor(user=world.alice, api_key=None, customer_id=world.alice_customer.id, is_admin=False)


def drv(server):
    return driver_for(server.node.uri)


def take(server, actor=SYSTEM, **kw):
    snapshot, op = snapshot_actions.request_snapshot(actor, server.id, **kw)
    op.refresh_from_db()
    assert op.status == "succeeded", op.log
    snapshot.refresh_from_db()
    return snapshot


def run(request, server, snapshot, actor=SYSTEM):
    op = request(actor, server.id, snapshot.id)
    op.refresh_from_db()
    assert op.status == "succeeded", op.log
    server.refresh_from_db()
    return op


def defined_disk(server) -> str:
    return drv(server).host.domains[server.domain_name]["spec"].disks[0].path.rsplit("/", 1)[-1]


def test_a_snapshot_of_a_running_server_moves_the_domain_onto_its_overlay(server):
    driver = drv(server)
    driver.host.agent.add(server.domain_name)
    driver.set_content(server.disk_volume, b"marker one")
    snapshot = take(server, name="before upgrade")
    assert (snapshot.status, snapshot.frozen, snapshot.was_running, snapshot.memory) == ("ready", True, True, False)
    assert snapshot.image == server.disk_volume and Snapshot.top_volume(server) == snapshot.overlay
    assert defined_disk(server) == snapshot.overlay  # the next boot writes the overlay, not the frozen file
    assert driver.content(snapshot.overlay) == b"marker one"


def test_without_an_answering_agent_the_snapshot_says_it_was_not_frozen(server):
    assert take(server).frozen is False


def test_revert_brings_the_disk_back_and_boots_a_server_that_was_running(server):
    driver = drv(server)
    driver.set_content(server.disk_volume, b"marker one")
    snapshot = take(server)
    driver.set_content(snapshot.overlay, b"marker two")
    boot = driver.info(server.domain_name).boot_id
    run(snapshot_actions.request_revert, server, snapshot)
    assert driver.content(snapshot.overlay) == b"marker one"
    assert server.state == "running" and driver.info(server.domain_name).boot_id != boot  # booted anew
    assert Snapshot.objects.filter(server=server).count() == 1  # the snapshot stays, to revert to again


def test_a_memory_snapshot_resumes_the_same_boot(server):
    driver = drv(server)
    boot = driver.info(server.domain_name).boot_id
    snapshot = take(server, memory=True)
    assert snapshot.memory and driver.volume_exists(server.storage.pool_name, snapshot.memory_volume)
    lifecycle.request_action(SYSTEM, server.id, "reboot")
    assert driver.info(server.domain_name).boot_id != boot
    run(snapshot_actions.request_revert, server, snapshot)
    assert server.state == "running" and driver.info(server.domain_name).boot_id == boot


def test_a_stopped_servers_snapshot_reverts_to_stopped(server):
    lifecycle.request_action(SYSTEM, server.id, "stop")
    server.refresh_from_db()
    snapshot = take(server)
    assert snapshot.was_running is False
    run(snapshot_actions.request_revert, server, snapshot)
    assert server.state == "stopped"


def test_beyond_the_plans_limit_is_refused_and_leaves_nothing(server, world):
    server.plan.snapshots = 1
    server.plan.save()
    take(server, actor=alice(world))
    ops, volumes = Operation.objects.count(), set(drv(server).host.pools[server.storage.pool_name])
    with pytest.raises(Refused) as refused:
        snapshot_actions.request_snapshot(alice(world), server.id)
    assert (refused.value.code, refused.value.status) == ("snapshot_limit", 409)
    assert Snapshot.objects.filter(server=server).count() == 1 and Operation.objects.count() == ops
    assert set(drv(server).host.pools[server.storage.pool_name]) == volumes


def test_memory_needs_the_plan_and_a_running_server(server, world):
    server.plan.snapshot_memory = False
    server.plan.save()
    with pytest.raises(Refused) as refused:
        snapshot_actions.request_snapshot(alice(world), server.id, memory=True)
    assert refused.value.code == "plan_limit"
    server.plan.snapshot_memory = True
    server.plan.save()
    lifecycle.request_action(SYSTEM, server.id, "stop")
    with pytest.raises(Refused) as refused:
        snapshot_actions.request_snapshot(alice(world), server.id, memory=True)
    assert (refused.value.code, refused.value.field) == ("invalid", "memory")
    assert not Snapshot.objects.exists()


def test_a_bad_name_is_refused(server):
    with pytest.raises(Refused) as refused:
        snapshot_actions.request_snapshot(SYSTEM, server.id, name="a\x00b")
    assert (refused.value.status, refused.value.field) == (400, "name")


def test_revert_while_another_operation_runs_is_refused(server, monkeypatch):
    from panel import operations

    snapshot = take(server)
    monkeypatch.setattr(operations, "enqueue", lambda op_id: None)  # operations stay queued from here on
    lifecycle.request_action(SYSTEM, server.id, "reboot")
    with pytest.raises(Refused) as refused:
        snapshot_actions.request_revert(SYSTEM, server.id, snapshot.id)
    assert (refused.value.code, refused.value.status) == ("operation_in_progress", 409)
    assert not Operation.objects.filter(kind=snapshot_actions.REVERT).exists()


def test_only_the_newest_snapshot_is_reverted_to(server):
    older = take(server)
    take(server)
    with pytest.raises(Refused) as refused:
        snapshot_actions.request_revert(SYSTEM, server.id, older.id)
    assert refused.value.code == "not_newest_snapshot"


def test_a_failed_snapshot_leaves_no_row_and_no_file(server):
    driver = drv(server)
    driver.fail_next["snapshot_disk"] = DriverError("libvirt said no")
    snapshot, op = snapshot_actions.request_snapshot(SYSTEM, server.id)
    op.refresh_from_db()
    assert op.status == "failed"
    assert not Snapshot.objects.exists() and not driver.volume_exists(server.storage.pool_name, snapshot.overlay)
    assert defined_disk(server) == server.disk_volume


def test_deleting_the_newest_snapshot_merges_it_and_the_server_keeps_running(server):
    driver = drv(server)
    snapshot = take(server)
    driver.set_content(snapshot.overlay, b"written since")
    boot = driver.info(server.domain_name).boot_id
    run(snapshot_actions.request_delete, server, snapshot)
    assert driver.content(server.disk_volume) == b"written since"
    assert not driver.volume_exists(server.storage.pool_name, snapshot.overlay)
    assert Snapshot.top_volume(server) == server.disk_volume == defined_disk(server)
    assert driver.info(server.domain_name).boot_id == boot and server.state == "running"


def test_deleting_an_older_snapshot_hands_its_image_to_the_newer_one(server):
    driver = drv(server)
    older = take(server)
    driver.set_content(older.overlay, b"between")
    newer = take(server)
    driver.set_content(newer.overlay, b"latest")
    run(snapshot_actions.request_delete, server, older)
    newer.refresh_from_db()
    assert newer.image == server.disk_volume and driver.content(server.disk_volume) == b"between"
    assert driver.host.backing[newer.overlay] == server.disk_volume
    run(snapshot_actions.request_revert, server, newer)
    assert driver.content(newer.overlay) == b"between"


def test_every_rebuilt_definition_names_the_top_file(server, world):
    snapshot = take(server)
    bigger = type(world.plan).objects.create(name="bigger", vcpus=2, ram_mib=512, disk_gib=2)
    op = lifecycle.request_plan_change(SYSTEM, server.id, bigger)
    op.refresh_from_db()
    assert op.status == "succeeded", op.log
    assert defined_disk(server) == snapshot.overlay
    assert drv(server).host.pools[server.storage.pool_name][snapshot.overlay] == 2  # the guest's disk grew


def test_reinstall_and_delete_take_the_snapshots_files_with_them(server):
    driver, pool = drv(server), server.storage.pool_name
    snapshot = take(server, memory=True)
    op, _password = lifecycle.request_reinstall(SYSTEM, server.id)
    op.refresh_from_db()
    assert op.status == "succeeded", op.log
    assert not Snapshot.objects.exists() and defined_disk(server) == server.disk_volume
    assert not any(driver.volume_exists(pool, v) for v in snapshot.volumes())
    snapshot = take(server)
    lifecycle.request_action(SYSTEM, server.id, "delete")
    assert not driver.volume_exists(pool, snapshot.overlay)


def test_a_snapshot_drops_the_backup_checkpoints_and_the_next_backup_is_full(server, target):  # noqa: F811
    driver = drv(server)
    backup_actions.request_backup(SYSTEM, server.id, target=target)
    assert driver.checkpoints(server.domain_name)
    take(server)
    assert driver.checkpoints(server.domain_name) == []
    backup_actions.request_backup(SYSTEM, server.id, target=target)
    assert Backup.objects.order_by("-id").first().kind == "full"


def test_a_stopped_servers_backup_after_a_snapshot_reads_the_top_file_and_restores_it(server, target):  # noqa: F811
    driver = drv(server)
    driver.set_content(server.disk_volume, b"old data")
    lifecycle.request_action(SYSTEM, server.id, "stop")
    snapshot = take(server)
    driver.set_content(snapshot.overlay, b"new data")
    backup_actions.request_backup(SYSTEM, server.id, target=target)
    backup = Backup.objects.get()
    assert backup.status == "done", backup.error
    driver.set_content(snapshot.overlay, b"lost")
    op = backup_actions.request_restore(SYSTEM, server.id, backup.id)
    op.refresh_from_db()
    assert op.status == "succeeded", op.log
    # The restore replaced the disk: the overlays of the old one are gone with their rows.
    assert not Snapshot.objects.exists() and defined_disk(server) == server.disk_volume
    assert driver.content(server.disk_volume) == b"new data"


def test_a_backup_after_a_revert_restores_the_reverted_data(server, target):  # noqa: F811
    driver = drv(server)
    driver.set_content(server.disk_volume, b"kept")
    snapshot = take(server)
    driver.set_content(snapshot.overlay, b"discarded")
    run(snapshot_actions.request_revert, server, snapshot)
    backup_actions.request_backup(SYSTEM, server.id, target=target)
    backup = Backup.objects.get()
    driver.set_content(snapshot.overlay, b"broken")
    op = backup_actions.request_restore(SYSTEM, server.id, backup.id)
    op.refresh_from_db()
    assert op.status == "succeeded", op.log
    assert driver.content(server.disk_volume) == b"kept"


# -- API ------------------------------------------------------------------------------------------
def test_the_api_takes_lists_reverts_and_deletes_and_hides_other_customers(server, world):
    alice_api, bob_api = world.client(world.alice_key), world.client(world.bob_key)
    url = f"/api/v1/servers/{server.id}/snapshots/"
    made = alice_api.post(url, {"name": "first"}, format="json")
    assert made.status_code == 202, made.content
    listed = alice_api.get(url).json()["results"]
    assert [(s["name"], s["status"], s["memory"]) for s in listed] == [("first", "ready", False)]
    snapshot = listed[0]["id"]
    assert bob_api.get(url).status_code == 404
    assert bob_api.post(f"{url}{snapshot}/revert/").status_code == 404
    assert bob_api.delete(f"{url}{snapshot}/").status_code == 404
    assert alice_api.post(f"{url}{snapshot}/revert/").status_code == 202
    assert alice_api.delete(f"{url}{snapshot}/").status_code == 202
    assert alice_api.get(url).json()["results"] == []
    assert alice_api.delete(f"{url}not-a-number/").json()["code"] == "not_found"


def test_the_api_refuses_beyond_the_limit_in_the_error_format(server, world):
    server.plan.snapshots = 0
    server.plan.save()
    answer = world.client(world.alice_key).post(f"/api/v1/servers/{server.id}/snapshots/", {}, format="json")
    assert answer.status_code == 409 and answer.json()["code"] == "snapshot_limit", answer.content
    assert not Snapshot.objects.exists()


# -- UI -------------------------------------------------------------------------------------------
def logged_in(user):
    from django.test import Client

    client = Client()
    client.force_login(user)
    return client


def test_the_server_page_card_takes_reverts_and_deletes_and_says_it_is_not_a_backup(server, world):
    page = f"/servers/{server.id}/"
    client = logged_in(world.alice)
    body = client.get(page).content.decode()
    assert 'id="snapshots"' in body and "A snapshot is not a backup" in body
    answer = client.post(f"/servers/{server.id}/snapshots/", {"name": "from the ui", "memory": "1"})
    assert answer.status_code == 302 and answer["Location"].endswith("#snapshots")
    snapshot = Snapshot.objects.get()
    assert (snapshot.name, snapshot.memory, snapshot.status) == ("from the ui", True, "ready")
    body = client.get(page).content.decode()
    assert "from the ui" in body and "disk and memory" in body and f"/snapshots/{snapshot.id}/revert/" in body
    assert logged_in(world.bob).post(f"/servers/{server.id}/snapshots/{snapshot.id}/delete/").status_code == 404
    client.post(f"/servers/{server.id}/snapshots/{snapshot.id}/revert/")
    assert Operation.objects.filter(kind=snapshot_actions.REVERT, status="succeeded").exists()
    client.post(f"/servers/{server.id}/snapshots/{snapshot.id}/delete/")
    assert not Snapshot.objects.exists()


def test_the_card_shows_the_refusal_of_a_snapshot_beyond_the_plan(server, world):
    server.plan.snapshots = 0
    server.plan.save()
    client = logged_in(world.alice)
    assert "Your plan includes no snapshots." in client.get(f"/servers/{server.id}/").content.decode()
    answer = client.post(f"/servers/{server.id}/snapshots/", {}, follow=True)
    assert "allows 0 snapshot(s)" in answer.content.decode() and not Snapshot.objects.exists()

"""Data disks through the API and the worker's real code path, on MariaDB with the fake driver
(the real libvirt/QEMU run, hot-plug into a running guest, is tests/e2e/test_data_disks.py)."""

import pytest

from nodes.connection import driver_for
from nodes.models import Node
from panel.images.disks import DataDisk
from panel.vps.domain import disk_path, domain_spec
from panel.vps.models import Operation


@pytest.fixture
def server(alice_server):
    alice_server.plan.data_disks, alice_server.plan.data_disk_gib = 2, 10
    alice_server.plan.save()
    return alice_server


def url(server, disk=None):
    return f"/api/v1/servers/{server.id}/disks/" + (f"{disk.id}/" if disk else "")


def add(world, server, name="data", size=4, key=None):
    return world.client(key or world.alice_key).post(url(server), {"name": name, "size_gib": size}, format="json")


def node_gib(server):
    return Node.objects.get(pk=server.node_id).alloc_disk_gib


def test_a_disk_is_added_hot_plugged_grown_and_deleted(world, server):
    driver = driver_for(server.node.uri)
    before = node_gib(server)
    answer = add(world, server)
    assert answer.status_code == 202, answer.json()
    op = Operation.objects.get(pk=answer.json()["id"])
    assert (op.kind, op.status) == ("disk_add", "succeeded"), op.error
    assert "the guest sees vdb now" in op.customer_log
    disk = DataDisk.objects.get(server=server)
    assert (disk.name, disk.target, disk.size_gib, disk.state) == ("data", "vdb", 4, "attached")
    assert driver.volume_exists(server.storage.pool_name, disk.volume)
    assert "vdb" in driver.live_disks(server.domain_name)  # in the running guest
    assert [d.target for d in driver.host.domains[server.domain_name]["spec"].disks] == ["vda", "vdb"]
    assert node_gib(server) == before + 4
    listed = world.client(world.alice_key).get(url(server)).json()["results"]
    assert [(d["name"], d["target"], d["size_gib"]) for d in listed] == [("data", "vdb", 4)]

    grown = world.client(world.alice_key).patch(url(server, disk), {"size_gib": 6}, format="json")
    assert grown.status_code == 202, grown.json()
    disk.refresh_from_db()
    assert disk.size_gib == 6 and driver.host.pools[server.storage.pool_name][disk.volume] == 6
    assert node_gib(server) == before + 6

    gone = world.client(world.alice_key).delete(url(server, disk))
    assert gone.status_code == 202, gone.json()
    assert Operation.objects.get(pk=gone.json()["id"]).status == "succeeded"
    assert not DataDisk.objects.filter(server=server).exists()
    assert not driver.volume_exists(server.storage.pool_name, disk.volume)
    assert "vdb" not in driver.live_disks(server.domain_name)
    assert [d.target for d in driver.host.domains[server.domain_name]["spec"].disks] == ["vda"]
    assert node_gib(server) == before


def test_every_rebuilt_definition_keeps_the_data_disks(world, server):
    add(world, server, "one", 2)
    add(world, server, "two", 2)
    driver = driver_for(server.node.uri)
    spec = domain_spec(server, disk_path(server, driver))
    assert [(d.target, d.path.rsplit("/", 1)[-1]) for d in spec.disks] == [
        ("vda", server.disk_volume), ("vdb", f"{server.domain_name}-vdb.qcow2"),
        ("vdc", f"{server.domain_name}-vdc.qcow2")]
    # A redefine on the node (here the network update) still names them.
    op = world.client(world.admin_key).post(f"/api/v1/servers/{server.id}/stop/")
    assert op.status_code == 202
    assert [d.target for d in driver.host.domains[server.domain_name]["spec"].disks] == ["vda", "vdb", "vdc"]


def test_a_stopped_server_gets_the_disk_in_its_definition_for_its_next_start(world, server):
    world.client(world.alice_key).post(f"/api/v1/servers/{server.id}/stop/")
    answer = add(world, server)
    op = Operation.objects.get(pk=answer.json()["id"])
    assert op.status == "succeeded" and "from its next start" in op.customer_log
    driver = driver_for(server.node.uri)
    world.client(world.alice_key).post(f"/api/v1/servers/{server.id}/start/")
    assert "vdb" in driver.live_disks(server.domain_name)


@pytest.mark.parametrize("name,size,code,field", [
    ("", 1, "invalid", "name"), ("bad name", 1, "invalid", "name"), ("x" * 65, 1, "invalid", "name"),
    ("ok", 0, "invalid", "size_gib"), ("ok", "1.5", "invalid", "size_gib"),
])
def test_bad_input_is_refused_and_leaves_nothing(world, server, name, size, code, field):
    answer = add(world, server, name, size)
    assert answer.status_code == 400 and answer.json()["code"] == code and field in answer.json()["fields"]
    assert not DataDisk.objects.exists() and not Operation.objects.filter(kind="disk_add").exists()


def test_the_plans_count_and_gib_bound_the_disks(world, server):
    before = node_gib(server)
    over_gib = add(world, server, "big", 11)
    assert over_gib.status_code == 409 and over_gib.json()["code"] == "data_disk_limit", over_gib.json()
    assert add(world, server, "a", 6).status_code == 202
    second_over = add(world, server, "b", 5)
    assert second_over.status_code == 409 and "10 GiB" in second_over.json()["detail"]
    assert add(world, server, "b", 4).status_code == 202
    third = add(world, server, "c", 0 + 1)
    assert third.status_code == 409 and "2 data disk" in third.json()["detail"]
    disk = DataDisk.objects.get(server=server, name="a")
    grow = world.client(world.alice_key).patch(url(server, disk), {"size_gib": 7}, format="json")
    assert grow.status_code == 409 and grow.json()["code"] == "data_disk_limit"
    assert DataDisk.objects.filter(server=server).count() == 2 and node_gib(server) == before + 10
    server.plan.data_disks = 0
    server.plan.save()
    assert world.client(world.admin_key).post(url(server), {"name": "z", "size_gib": 1}, format="json").status_code == 409


def test_a_name_clash_and_a_smaller_size_are_refused(world, server):
    assert add(world, server, "data", 2).status_code == 202
    clash = add(world, server, "data", 2)
    assert clash.status_code == 409 and clash.json()["code"] == "name_taken" and "name" in clash.json()["fields"]
    disk = DataDisk.objects.get(server=server)
    for size in (2, 1):
        smaller = world.client(world.alice_key).patch(url(server, disk), {"size_gib": size}, format="json")
        assert smaller.status_code == 400 and "only grows" in smaller.json()["detail"]
    disk.refresh_from_db()
    assert disk.size_gib == 2 and DataDisk.objects.count() == 1
    assert not Operation.objects.filter(kind="disk_grow").exists()


def test_a_stopped_node_refuses_and_a_failing_node_leaves_nothing(world, server):
    Node.objects.filter(pk=server.node_id).update(state=Node.State.OFFLINE)
    refused = add(world, server)
    assert refused.status_code == 409 and refused.json()["code"] == "node_unavailable"
    Node.objects.filter(pk=server.node_id).update(state=Node.State.ONLINE)
    before = node_gib(server)
    from nodes.driver import DriverError
    driver = driver_for(server.node.uri)
    driver.fail_next["attach_disk"] = DriverError("the node stopped answering", retryable=True)
    answer = add(world, server)
    op = Operation.objects.get(pk=answer.json()["id"])
    assert op.status == "failed"
    assert not DataDisk.objects.exists()
    assert not driver.volume_exists(server.storage.pool_name, f"{server.domain_name}-vdb.qcow2")
    assert node_gib(server) == before
    server.refresh_from_db()
    assert server.state == "running"


def test_a_guest_that_does_not_release_the_disk_is_reported_and_the_disk_stays(world, server, settings):
    settings.DISK_DETACH_TIMEOUT_SECONDS = 1
    add(world, server)
    disk = DataDisk.objects.get(server=server)
    driver = driver_for(server.node.uri)
    driver.host.holds_disks.add(server.domain_name)
    answer = world.client(world.alice_key).delete(url(server, disk))
    op = Operation.objects.get(pk=answer.json()["id"])
    assert op.status == "failed" and "did not release vdb" in op.customer_error
    disk.refresh_from_db()
    assert disk.state == "attached" and "did not release" in disk.error
    assert driver.volume_exists(server.storage.pool_name, disk.volume) and "vdb" in driver.live_disks(server.domain_name)
    assert [d.target for d in driver.host.domains[server.domain_name]["spec"].disks] == ["vda", "vdb"]


def test_another_customers_server_and_disk_do_not_exist(world, server):
    add(world, server)
    disk = DataDisk.objects.get(server=server)
    bob = world.client(world.bob_key)
    assert bob.get(url(server)).status_code == 404
    assert bob.post(url(server), {"name": "x", "size_gib": 1}, format="json").status_code == 404
    assert bob.delete(url(server, disk)).status_code == 404
    assert DataDisk.objects.filter(pk=disk.pk, state="attached").exists()


def test_deleting_the_server_deletes_its_data_disks(world, server):
    add(world, server)
    disk = DataDisk.objects.get(server=server)
    volume, pool = disk.volume, server.storage.pool_name
    before = node_gib(server)
    answer = world.client(world.admin_key).delete(f"/api/v1/servers/{server.id}/")
    assert answer.status_code == 202
    driver = driver_for(server.node.uri)
    assert not driver.volume_exists(pool, volume) and not DataDisk.objects.exists()
    assert node_gib(server) == before - 4 - server.disk_gib


# -- backups: every disk of the server (backup/disks.py) -----------------------------------------
from tests.backup_fixtures import target  # noqa: E402,F401 (a fixture)


def back_up(server, target):
    from backup import actions
    from backup.models import Backup
    from panel.accounts.tenancy import SYSTEM

    op = actions.request_backup(SYSTEM, server.id, target=target)
    op.refresh_from_db()
    assert op.status == "succeeded", op.error
    return Backup.objects.get(operation=op)


def restore(server, backup):
    from backup import actions
    from panel.accounts.tenancy import SYSTEM

    op = actions.request_restore(SYSTEM, server.id, backup.id)
    op.refresh_from_db()
    return op


@pytest.fixture
def with_disk(world, server):
    server.plan.backups = 5
    server.plan.save()
    assert add(world, server, "data", 2).status_code == 202
    return server, DataDisk.objects.get(server=server)


def test_a_backup_holds_every_disk_and_restores_both(with_disk, target):
    from pathlib import Path

    server, disk = with_disk
    driver = driver_for(server.node.uri)
    driver.set_content(server.disk_volume, b"system one" * 100)
    driver.set_content(disk.volume, b"data one" * 100)
    full = back_up(server, target)
    assert full.kind == "full"
    (entry,) = full.manifest["disks"]
    assert (entry["target"], entry["name"], entry["size_gib"]) == ("vdb", "data", 2)
    stored = Path(target.path) / entry["file"]
    assert stored.exists() and entry["file"].endswith("-full-vdb.qcow2.zst")
    import blake3
    assert entry["checksum"] == f"blake3:{blake3.blake3(stored.read_bytes()).hexdigest()}"

    driver.set_content(server.disk_volume, b"system two" * 100)
    driver.set_content(disk.volume, b"data two" * 100)
    second = back_up(server, target)
    assert (second.kind, second.parent_id) == ("incremental", full.id)  # one chain for both disks
    assert second.manifest["disks"][0]["file"].endswith("-incremental-vdb.qcow2.zst")

    driver.set_content(server.disk_volume, b"")  # both disks destroyed
    driver.set_content(disk.volume, b"")
    op = restore(server, second)
    assert op.status == "succeeded", op.error
    assert driver.content(server.disk_volume) == b"system two" * 100
    assert driver.content(disk.volume) == b"data two" * 100
    assert "data disk(s) vdb restored" in op.customer_log
    assert [d.target for d in driver.host.domains[server.domain_name]["spec"].disks] == ["vda", "vdb"]
    assert not [v for v in driver.host.pools[server.storage.pool_name] if "-restore" in v or "-backup" in v]


def test_a_disk_added_after_the_checkpoint_makes_the_next_backup_full(world, with_disk, target):
    server, _disk = with_disk
    first = back_up(server, target)
    assert add(world, server, "more", 1).status_code == 202
    second = back_up(server, target)
    assert second.kind == "full" and [e["target"] for e in second.manifest["disks"]] == ["vdb", "vdc"]
    assert first.kind == "full"


def test_a_stopped_server_with_unchanged_disks_gets_an_empty_incremental_and_a_changed_data_disk_a_full(
        world, with_disk, target):
    server, disk = with_disk
    world.client(world.admin_key).post(f"/api/v1/servers/{server.id}/stop/")
    driver = driver_for(server.node.uri)
    first = back_up(server, target)
    second = back_up(server, target)
    assert (first.kind, second.kind) == ("full", "incremental")
    driver.set_content(disk.volume, b"written while stopped")  # only the data disk changes
    third = back_up(server, target)
    assert third.kind == "full"


def test_a_restore_as_a_new_server_brings_its_data_disks(world, with_disk, target):
    from backup import actions
    from panel.accounts.tenancy import Actor

    server, disk = with_disk
    driver = driver_for(server.node.uri)
    driver.set_content(disk.volume, b"data to clone")
    backup = back_up(server, target)
    admin = Actor(user=world.admin, api_key=None, customer_id=None, is_admin=True)
    new, op = actions.restore_as_new_server(admin, backup.id, hostname="alice-copy")
    op.refresh_from_db()
    assert op.status == "succeeded", op.error
    (copy,) = DataDisk.objects.filter(server=new)
    assert (copy.name, copy.target, copy.size_gib, copy.state) == ("data", "vdb", 2, "attached")
    assert driver_for(new.node.uri).content(copy.volume) == b"data to clone"


def test_a_missing_data_disk_file_refuses_the_restore_and_overwrites_nothing(with_disk, target):
    from pathlib import Path

    server, disk = with_disk
    driver = driver_for(server.node.uri)
    driver.set_content(disk.volume, b"keep me")
    driver.set_content(server.disk_volume, b"system")
    backup = back_up(server, target)
    (Path(target.path) / backup.manifest["disks"][0]["file"]).unlink()
    driver.set_content(disk.volume, b"newer data")
    op = restore(server, backup)
    assert op.status == "failed" and "missing" in op.error
    assert driver.content(disk.volume) == b"newer data" and driver.content(server.disk_volume) == b"system"


def test_retention_and_a_failed_backup_leave_no_data_disk_file(with_disk, target, monkeypatch):
    from pathlib import Path

    from backup import retention
    from backup.models import Backup

    server, _disk = with_disk
    backup = back_up(server, target)
    files = [Path(target.path) / backup.file_name, Path(target.path) / backup.manifest["disks"][0]["file"]]
    assert all(f.exists() for f in files)
    retention.delete_backups([backup])
    assert not any(f.exists() for f in files) and not Backup.objects.filter(pk=backup.pk).exists()

    from backup import files as backup_files
    real = backup_files.manifest_bytes
    monkeypatch.setattr(backup_files, "manifest_bytes", lambda b: (_ for _ in ()).throw(OSError("disk full")))
    from backup import actions
    from panel.accounts.tenancy import SYSTEM
    op = actions.request_backup(SYSTEM, server.id, target=target)
    op.refresh_from_db()
    assert op.status == "failed"
    monkeypatch.setattr(backup_files, "manifest_bytes", real)
    assert not [p for p in Path(target.path).rglob("*") if p.is_file() and "vdb" in p.name]


# -- the server page's card (panel/ui/views/disks.py) ---------------------------------------------

def signed_in(world, user="alice", password="alice-pass-123"):
    from django.test import Client

    client = Client()
    assert client.post("/login/", {"username": user, "password": password}).status_code == 302
    return client


def test_the_card_adds_grows_and_deletes_a_disk_and_shows_a_refusal(world, server):
    alice = signed_in(world)
    page = alice.get(f"/servers/{server.id}/").content.decode()
    assert 'id="disks"' in page and 'id="disk-add-form"' in page
    r = alice.post(f"/servers/{server.id}/disks/", {"name": "web data", "size_gib": "1"}, follow=True)
    assert "A disk&#x27;s name is" in r.content.decode() or "A disk's name is" in r.content.decode()
    assert not DataDisk.objects.exists()
    r = alice.post(f"/servers/{server.id}/disks/", {"name": "web", "size_gib": "3"}, follow=True)
    disk = DataDisk.objects.get(server=server)
    assert disk.state == "attached" and "/dev/vdb" in r.content.decode()
    alice.post(f"/servers/{server.id}/disks/{disk.id}/", {"size_gib": "5"})
    disk.refresh_from_db()
    assert disk.size_gib == 5
    alice.post(f"/servers/{server.id}/disks/{disk.id}/", {"delete": "1"})
    assert not DataDisk.objects.exists()


def test_the_card_is_not_another_customers(world, server):
    add(world, server)
    disk = DataDisk.objects.get(server=server)
    bob = signed_in(world, "bob", "bob-pass-1234")
    assert bob.post(f"/servers/{server.id}/disks/", {"name": "x", "size_gib": "1"}).status_code == 404
    assert bob.post(f"/servers/{server.id}/disks/{disk.id}/", {"delete": "1"}).status_code == 404
    assert DataDisk.objects.filter(pk=disk.pk, state="attached").exists()

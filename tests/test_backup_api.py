"""API v1 for backups: a server's backup/restore/backups, targets, plans, the backups list and
the panel's own backup. The worker's backup and restore handlers are not under test here:
operations are only queued (enqueue is a no-op), backups are rows made with the ORM."""

import pytest

from backup.models import Backup, BackupPlan, BackupTarget
from panel.vps.models import Operation, VirtualServer

from tests.backup_fixtures import queued_server, target  # noqa: F401 (fixtures)

pytestmark = pytest.mark.django_db


@pytest.fixture
def server(queued_server):
    return queued_server


def make_backup(server, target, **fields) -> Backup:
    values = {"server": server, "server_uuid": server.uuid, "hostname": server.hostname,
              "customer_id": server.customer_id, "target": target, "kind": "full", "status": "done",
              "manifest": {"server": {"plan_id": server.plan_id, "os_template": "tiny", "disk_gib": server.disk_gib}}}
    return Backup.objects.create(**{**values, **fields})


def other_server(world, customer, hostname: str) -> VirtualServer:
    return VirtualServer.objects.create(customer=customer, plan=world.plan, node=world.node, hostname=hostname,
                                        vcpus=1, ram_mib=256, disk_gib=1, state="stopped")


def backup_ops():
    return Operation.objects.filter(kind=Operation.Kind.BACKUP)


# --- POST /servers/{id}/backup/ --------------------------------------------------------------

def test_it_backs_up_a_server_and_answers_202_with_the_operation(world, server, target):
    r = world.client(world.alice_key).post(f"/api/v1/servers/{server.id}/backup/", {}, format="json")
    assert r.status_code == 202, r.json()
    assert r.json()["kind"] == "backup" and r.json()["server"] == server.id
    op = backup_ops().get()
    assert op.params["target"] == target.id


def test_it_refuses_a_customer_whose_plan_includes_no_backups(world, server, target):
    world.plan.backups = 0
    world.plan.save()
    r = world.client(world.alice_key).post(f"/api/v1/servers/{server.id}/backup/", {}, format="json")
    assert r.status_code == 403 and r.json()["code"] == "backups_not_included"
    assert not backup_ops().exists()


def test_it_refuses_a_customer_who_chooses_the_target(world, server, target):
    r = world.client(world.alice_key).post(f"/api/v1/servers/{server.id}/backup/", {"target": target.id}, format="json")
    assert r.status_code == 403 and "target" in r.json()["fields"]
    assert not backup_ops().exists()


def test_it_lets_an_admin_choose_the_target(world, server, target, tmp_path):
    other = BackupTarget.objects.create(name="other", kind="dir", path=str(tmp_path))
    r = world.client(world.admin_key).post(f"/api/v1/servers/{server.id}/backup/", {"target": other.id}, format="json")
    assert r.status_code == 202
    assert backup_ops().get().params["target"] == other.id


def test_it_answers_409_when_no_target_is_configured(world, server):
    r = world.client(world.alice_key).post(f"/api/v1/servers/{server.id}/backup/", {}, format="json")
    assert r.status_code == 409 and r.json()["code"] == "no_backup_target"


def test_it_answers_409_when_the_server_is_busy(world, server, target):
    Operation.objects.create(kind=Operation.Kind.REBOOT, server=server, customer=server.customer,
                             status=Operation.Status.RUNNING)
    r = world.client(world.alice_key).post(f"/api/v1/servers/{server.id}/backup/", {}, format="json")
    assert r.status_code == 409 and r.json()["code"] == "operation_in_progress"
    assert not backup_ops().exists()


def test_bob_cannot_back_up_alices_server(world, server, target):
    r = world.client(world.bob_key).post(f"/api/v1/servers/{server.id}/backup/", {}, format="json")
    assert r.status_code == 404
    assert not backup_ops().exists()


# --- POST /servers/{id}/restore/ -------------------------------------------------------------

def test_it_restores_a_server_from_its_own_backup(world, server, target):
    backup = make_backup(server, target)
    r = world.client(world.alice_key).post(f"/api/v1/servers/{server.id}/restore/", {"backup": backup.id},
                                           format="json")
    assert r.status_code == 202, r.json()
    op = Operation.objects.get(kind=Operation.Kind.RESTORE)
    assert op.server_id == server.id and op.params["backup"] == backup.id


def test_bob_cannot_restore_alices_backup(world, server, target):
    backup = make_backup(server, target)
    bob_server = other_server(world, world.bob_customer, "bob1")
    bob = world.client(world.bob_key)
    r = bob.post(f"/api/v1/servers/{server.id}/restore/", {"backup": backup.id}, format="json")
    assert r.status_code == 404
    r = bob.post(f"/api/v1/servers/{bob_server.id}/restore/", {"backup": backup.id}, format="json")
    assert r.status_code == 400 and "backup" in r.json()["fields"]
    assert not Operation.objects.filter(kind=Operation.Kind.RESTORE).exists()


def test_it_refuses_to_restore_a_backup_whose_parent_failed(world, server, target):
    full = make_backup(server, target, status="failed")
    incremental = make_backup(server, target, kind="incremental", parent=full)
    r = world.client(world.alice_key).post(f"/api/v1/servers/{server.id}/restore/", {"backup": incremental.id},
                                           format="json")
    assert r.status_code == 409 and r.json()["code"] == "broken_chain"
    assert not Operation.objects.filter(kind=Operation.Kind.RESTORE).exists()


def test_it_refuses_to_restore_another_servers_backup(world, server, target):
    second = other_server(world, world.alice_customer, "alice-db")
    backup = make_backup(second, target)
    r = world.client(world.alice_key).post(f"/api/v1/servers/{server.id}/restore/", {"backup": backup.id},
                                           format="json")
    assert r.status_code == 400 and "backup" in r.json()["fields"]


# --- GET /servers/{id}/backups/ and /backups/ ------------------------------------------------

def test_the_server_backups_list_shows_only_that_servers_backups_to_its_owner(world, server, target):
    mine = make_backup(server, target)
    make_backup(other_server(world, world.alice_customer, "alice-db"), target)
    r = world.client(world.alice_key).get(f"/api/v1/servers/{server.id}/backups/")
    assert r.status_code == 200
    rows = r.json()["results"]
    assert [row["id"] for row in rows] == [mine.id]
    assert rows[0]["target"] == "disk" and rows[0]["kind"] == "full" and rows[0]["parent"] is None
    assert world.client(world.bob_key).get(f"/api/v1/servers/{server.id}/backups/").status_code == 404


def test_the_backups_list_never_shows_bob_alices_backups(world, server, target):
    alices = make_backup(server, target)
    panel = Backup.objects.create(target=target, kind="panel", status="done")
    bobs = make_backup(other_server(world, world.bob_customer, "bob1"), target)
    ids = lambda r: {row["id"] for row in r.json()["results"]}  # noqa: E731
    assert ids(world.client(world.bob_key).get("/api/v1/backups/")) == {bobs.id}
    assert world.client(world.bob_key).get(f"/api/v1/backups/{alices.id}/").status_code == 404
    assert ids(world.client(world.admin_key).get("/api/v1/backups/")) == {alices.id, panel.id, bobs.id}
    assert ids(world.client(world.billing_key).get("/api/v1/backups/")) == {alices.id, bobs.id}
    assert ids(world.client(world.admin_key).get(f"/api/v1/backups/?server={server.id}")) == {alices.id}


def test_an_admin_restores_a_backup_as_a_new_server(world, server, target):
    backup = make_backup(server, target)
    r = world.client(world.admin_key).post(f"/api/v1/backups/{backup.id}/restore-as-new/",
                                           {"hostname": "alice-copy"}, format="json")
    assert r.status_code == 202, r.json()
    copy = VirtualServer.objects.get(pk=r.json()["server"])
    assert copy.hostname == "alice-copy" and copy.customer_id == world.alice_customer.id
    assert r.json()["operation"]["kind"] == "restore"


# --- admin endpoints -------------------------------------------------------------------------

def test_admin_endpoints_refuse_customer_and_billing_keys(world, server, target):
    backup = make_backup(server, target)
    for key in (world.alice_key, world.billing_key):
        client = world.client(key)
        assert client.get("/api/v1/backup-targets/").status_code == 403
        assert client.post("/api/v1/backup-targets/", {"name": "x", "path": "/tmp"}, format="json").status_code == 403
        assert client.get("/api/v1/backup-plans/").status_code == 403
        assert client.post("/api/v1/panel-backup/", {"target": target.id}, format="json").status_code == 403
    r = world.client(world.alice_key).post(f"/api/v1/backups/{backup.id}/restore-as-new/", {}, format="json")
    assert r.status_code == 403
    assert BackupTarget.objects.count() == 1 and VirtualServer.objects.count() == 1


def test_a_target_with_a_relative_path_is_refused(world):
    r = world.client(world.admin_key).post("/api/v1/backup-targets/", {"name": "rel", "kind": "dir",
                                                                       "path": "backups"}, format="json")
    assert r.status_code == 400 and "path" in r.json()["fields"]


def test_a_target_whose_folder_does_not_exist_is_not_saved(world, tmp_path):
    r = world.client(world.admin_key).post("/api/v1/backup-targets/", {
        "name": "gone", "kind": "dir", "path": str(tmp_path / "missing")}, format="json")
    assert r.status_code == 400 and r.json()["code"] == "target_check_failed"
    assert "does not exist" in r.json()["detail"]
    assert not BackupTarget.objects.exists()


def test_a_good_target_is_saved_checked_and_never_shows_its_password(world, tmp_path):
    admin = world.client(world.admin_key)
    r = admin.post("/api/v1/backup-targets/", {"name": "disk", "kind": "dir", "path": str(tmp_path),
                                               "password": "s3cret"}, format="json")
    assert r.status_code == 201, r.json()
    assert "password" not in r.json() and r.json()["checked_at"] and r.json()["check_error"] == ""
    row = BackupTarget.objects.get()
    assert row.password and row.password != "s3cret"
    r = admin.patch(f"/api/v1/backup-targets/{row.id}/", {"password": "", "enabled": False}, format="json")
    assert r.status_code == 200 and "password" not in r.json()
    after = BackupTarget.objects.get()
    assert after.password == row.password and not after.enabled  # blank keeps the password
    r = admin.post(f"/api/v1/backup-targets/{row.id}/check/", {}, format="json")
    assert r.status_code == 200 and r.json()["check_error"] == ""


def test_an_ftps_target_shows_its_pinned_certificates_fingerprint(world):
    import base64
    import hashlib

    from backup.targets import certificate_pin

    der = b"0\x82 not really a certificate"
    row = BackupTarget.objects.create(name="offsite", kind="ftps", host="ftp.example.com",
                                      host_key=certificate_pin(der))
    admin = world.client(world.admin_key)
    body = admin.get(f"/api/v1/backup-targets/{row.id}/").json()
    assert body["host_key_fingerprint"] == "SHA256:" + base64.b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")
    # Only "" may be written: nobody pins a certificate of their choosing through the API.
    r = admin.patch(f"/api/v1/backup-targets/{row.id}/", {"host_key": certificate_pin(b"mine")}, format="json")
    assert r.status_code == 400 and BackupTarget.objects.get(pk=row.id).host_key == certificate_pin(der)


def test_deleting_a_target_that_has_backups_answers_409(world, server, target):
    make_backup(server, target)
    r = world.client(world.admin_key).delete(f"/api/v1/backup-targets/{target.id}/")
    assert r.status_code == 409 and r.json()["code"] == "target_in_use"
    assert BackupTarget.objects.filter(pk=target.pk).exists()


def test_a_plan_with_a_bad_schedule_is_refused(world, target):
    r = world.client(world.admin_key).post("/api/v1/backup-plans/", {
        "name": "nightly", "target": target.id, "schedule": "every night"}, format="json")
    assert r.status_code == 400 and "schedule" in r.json()["fields"]
    assert not BackupPlan.objects.exists()


def test_running_a_plan_now_returns_its_summary(world, server, target):
    admin = world.client(world.admin_key)
    r = admin.post("/api/v1/backup-plans/", {"name": "nightly", "target": target.id, "schedule": "0 3 * * *",
                                             "scope": "servers", "servers": [server.id]}, format="json")
    assert r.status_code == 201, r.json()
    r = admin.post(f"/api/v1/backup-plans/{r.json()['id']}/run/", {}, format="json")
    assert r.status_code == 200
    assert "queued 1 backup" in r.json()["summary"]
    assert backup_ops().get().params["target"] == target.id


def test_an_admin_backs_up_the_panel(world, target):
    r = world.client(world.admin_key).post("/api/v1/panel-backup/", {"target": target.id}, format="json")
    assert r.status_code == 202, r.json()
    assert Operation.objects.get(kind=Operation.Kind.PANEL_BACKUP).params["target"] == target.id


# --- DELETE /servers/{id}/?keep_backups=1 ----------------------------------------------------

@pytest.mark.parametrize("query, kept", [("?keep_backups=1", True), ("?keep_backups=true", True), ("", False)])
def test_deleting_a_server_says_whether_to_keep_its_backups(world, server, query, kept):
    r = world.client(world.admin_key).delete(f"/api/v1/servers/{server.id}/{query}")
    assert r.status_code == 202
    assert Operation.objects.get(kind=Operation.Kind.DELETE).params["keep_backups"] is kept

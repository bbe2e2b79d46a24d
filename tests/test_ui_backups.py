"""The web UI of backups: the admin's Backups page (targets, plans, recent backups, the panel's
own backup) and the server page's Backups card. Operations are only queued here."""

import pytest
from django.test import Client

from backup.models import Backup, BackupPlan, BackupTarget
from panel.vps.models import Operation

from tests.backup_fixtures import queued_server, target  # noqa: F401 (fixtures)

pytestmark = pytest.mark.django_db


@pytest.fixture
def server(queued_server):
    return queued_server


@pytest.fixture
def backup(server, target):
    return Backup.objects.create(server=server, server_uuid=server.uuid, hostname=server.hostname,
                                 customer_id=server.customer_id, target=target, kind="full", status="done",
                                 size_bytes=1024)


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


# --- the admin's Backups page ----------------------------------------------------------------

def test_the_backups_page_shows_targets_plans_backups_and_the_key_notice(world, server, target, backup):
    BackupPlan.objects.create(name="nightly", target=target, schedule="0 3 * * *")
    r = logged_in(world.admin).get("/admin/backups/")
    assert r.status_code == 200
    page = r.content.decode()
    assert "disk" in page and "nightly" in page and "alice-web" in page
    assert "PANEL_BACKUP_KEY" in page and 'id="panel-backup"' in page
    for path in ("/admin/backups/targets/new/", f"/admin/backups/targets/{target.pk}/edit/",
                 "/admin/backups/plans/new/"):
        assert logged_in(world.admin).get(path).status_code == 200


def test_the_targets_table_shows_an_ftps_targets_pinned_certificate(world):
    import base64
    import hashlib

    from backup.targets import certificate_pin

    der = b"0\x82 not really a certificate"
    BackupTarget.objects.create(name="offsite", kind="ftps", host="ftp.example.com", host_key=certificate_pin(der))
    page = logged_in(world.admin).get("/admin/backups/").content.decode()
    expected = "SHA256:" + base64.b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")
    assert expected in page and "The pinned TLS certificate of the FTPS server" in page
    assert "The pinned SSH host key" not in page


def test_the_backups_pages_do_not_exist_for_customers(world, target):
    alice = logged_in(world.alice)
    assert alice.get("/admin/backups/").status_code == 404
    assert alice.post("/admin/backups/targets/new/", {"name": "x", "kind": "dir", "path": "/tmp"}).status_code == 404
    assert alice.post(f"/admin/backups/targets/{target.pk}/delete/").status_code == 404
    assert BackupTarget.objects.count() == 1


def test_an_admin_creates_a_target_that_passes_its_check(world, tmp_path):
    r = logged_in(world.admin).post("/admin/backups/targets/new/", {
        "name": "disk", "kind": "dir", "path": str(tmp_path), "password": "", "enabled": "on"})
    assert r.status_code == 302, r.content.decode()
    row = BackupTarget.objects.get()
    assert row.checked_at and row.check_error == ""


def test_a_target_that_fails_its_check_is_not_saved_and_says_why(world, tmp_path):
    r = logged_in(world.admin).post("/admin/backups/targets/new/", {
        "name": "gone", "kind": "dir", "path": str(tmp_path / "missing"), "enabled": "on"})
    assert r.status_code == 200
    assert "does not exist" in r.content.decode()
    assert not BackupTarget.objects.exists()


def test_the_target_form_forgets_a_pinned_key_only_when_asked(world, tmp_path):
    from nodes.hostkeys import fingerprint

    row = BackupTarget.objects.create(name="disk", kind="dir", path=str(tmp_path), host_key="x509 AAAA",
                                      check_error="the certificate changed: pinned A, offered B")
    form = {"name": "disk", "kind": "dir", "path": str(tmp_path), "enabled": "on"}
    client = logged_in(world.admin)
    page = client.get(f"/admin/backups/targets/{row.pk}/edit/").content.decode()
    assert f'<code id="pinned-fingerprint">{fingerprint("x509 AAAA")}</code>' in page
    assert "the certificate changed: pinned A, offered B" in page  # in full, to compare before accepting
    assert client.post(f"/admin/backups/targets/{row.pk}/edit/", form).status_code == 302
    row.refresh_from_db()
    assert row.host_key == "x509 AAAA"
    assert client.post(f"/admin/backups/targets/{row.pk}/edit/", {**form, "forget_pin": "on"}).status_code == 302
    row.refresh_from_db()
    assert row.host_key == ""
    assert "Accept a new host key or certificate" in client.get(f"/admin/backups/targets/{row.pk}/edit/").content.decode()


def test_a_target_form_shows_the_models_validation_errors(world):
    r = logged_in(world.admin).post("/admin/backups/targets/new/", {"name": "rel", "kind": "dir", "path": "rel"})
    assert r.status_code == 200 and "absolute path" in r.content.decode()
    assert not BackupTarget.objects.exists()


def test_an_admin_creates_a_plan_and_runs_it_now(world, server, target):
    admin = logged_in(world.admin)
    r = admin.post("/admin/backups/plans/new/", {"name": "nightly", "target": target.pk, "schedule": "bad",
                                                 "scope": "all", "keep": 7, "full_every": 7, "compression": "zstd"})
    assert r.status_code == 200 and not BackupPlan.objects.exists()  # the schedule is refused
    r = admin.post("/admin/backups/plans/new/", {"name": "nightly", "target": target.pk, "schedule": "0 3 * * *",
                                                 "scope": "all", "keep": 7, "full_every": 7, "compression": "zstd",
                                                 "enabled": "on"})
    assert r.status_code == 302
    plan = BackupPlan.objects.get()
    r = admin.post(f"/admin/backups/plans/{plan.pk}/run/", follow=True)
    assert any("queued 1 backup" in m for m in messages_of(r))
    assert Operation.objects.filter(kind="backup").count() == 1


# --- the server page's Backups card ----------------------------------------------------------

def test_the_owner_sees_the_backups_card_with_a_restore_form(world, server, backup):
    page = logged_in(world.alice).get(f"/servers/{server.pk}/").content.decode()
    assert 'id="backups"' in page and 'id="backup-now"' in page
    assert f'value="{backup.pk}"' in page and 'name="confirm"' in page
    assert "restore-as-new" not in page  # admins only


def test_a_restore_needs_the_hostname_typed(world, server, backup):
    alice = logged_in(world.alice)
    r = alice.post(f"/servers/{server.pk}/backups/restore/", {"backup": backup.pk, "confirm": "wrong"}, follow=True)
    assert any("alice-web" in m for m in messages_of(r))
    assert not Operation.objects.filter(kind="restore").exists()
    alice.post(f"/servers/{server.pk}/backups/restore/", {"backup": backup.pk, "confirm": "alice-web"})
    assert Operation.objects.get(kind="restore").params["backup"] == backup.pk


def test_the_owner_backs_up_now(world, server, target):
    r = logged_in(world.alice).post(f"/servers/{server.pk}/backups/backup/", follow=True)
    assert r.status_code == 200
    assert Operation.objects.get(kind="backup").params["target"] == target.pk


def test_bob_gets_404_for_alices_server_backup_actions(world, server, backup):
    bob = logged_in(world.bob)
    assert bob.post(f"/servers/{server.pk}/backups/backup/").status_code == 404
    assert bob.post(f"/servers/{server.pk}/backups/restore/", {"backup": backup.pk, "confirm": "alice-web"}
                    ).status_code == 404
    assert bob.post(f"/admin/backups/{backup.pk}/restore-as-new/", {"hostname": "x"}).status_code == 404
    assert not Operation.objects.filter(kind__in=["backup", "restore"]).exists()


def test_a_customer_without_backups_in_the_plan_sees_the_notice(world, server, backup):
    world.plan.backups = 0
    world.plan.save()
    alice = logged_in(world.alice)
    page = alice.get(f"/servers/{server.pk}/").content.decode()
    assert "Your plan includes no backups." in page and 'id="backup-now"' not in page and 'name="confirm"' not in page
    r = alice.post(f"/servers/{server.pk}/backups/backup/", follow=True)
    assert any("no backups" in m for m in messages_of(r))
    assert not Operation.objects.filter(kind="backup").exists()


def test_an_admin_restores_a_backup_as_a_new_server(world, server, backup):
    admin = logged_in(world.admin)
    assert "restore-as-new" in admin.get(f"/servers/{server.pk}/").content.decode()
    r = admin.post(f"/admin/backups/{backup.pk}/restore-as-new/", {"hostname": "alice-copy"})
    assert r.status_code == 302
    assert Operation.objects.get(kind="restore").params["new_server"] is True

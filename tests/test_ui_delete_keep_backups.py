"""The server page's delete form offers to keep the server's backups (the API's
DELETE /servers/{id}/?keep_backups=1): the checkbox, what it passes to the delete operation,
and what the operation then does with the backups, on the fake driver."""

from pathlib import Path

import pytest
from django.test import Client

from backup.models import Backup
from panel.accounts.tenancy import SYSTEM
from panel import jobs, operations
from panel.vps import lifecycle
from panel.vps.models import Operation, VirtualServer
from tests.backup_fixtures import target  # noqa: F401 (a fixture)
from tests.test_ui_views import ui_russian_catalog  # noqa: F401 (a fixture)

pytestmark = pytest.mark.django_db

CHECKBOX = 'name="keep_backups"'


@pytest.fixture
def server(alice_server):
    alice_server.plan.backups = 5
    alice_server.plan.save()
    return alice_server


def make_backup(server, target, *, status="done", parent=None) -> Backup:
    """A backup row of `server` with its file in the folder target (as the worker leaves them)."""
    backup = Backup.objects.create(server=server, server_uuid=server.uuid, hostname=server.hostname,
                                   customer_id=server.customer_id, target=target, parent=parent,
                                   kind="incremental" if parent else "full", status=status, size_bytes=5)
    backup.file_name = f"{server.uuid}/{backup.id:06d}-{backup.kind}.qcow2"
    backup.save(update_fields=["file_name"])
    path = Path(target.path) / backup.file_name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"disk!")
    return backup


@pytest.fixture
def backups(server, target):
    """Two finished backups of Alice's server: a full one and an incremental after it."""
    full = make_backup(server, target)
    return [full, make_backup(server, target, parent=full)]


def files_of(target) -> list[str]:
    return sorted(p.name for p in Path(target.path).rglob("*.qcow2"))


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def page_of(client, server) -> str:
    r = client.get(f"/servers/{server.pk}/")
    assert r.status_code == 200
    return r.content.decode()


# --- the checkbox ----------------------------------------------------------------------------

def test_the_delete_form_offers_to_keep_the_backups_with_their_count(world, server, backups, target):
    # A failed backup is not counted: only finished ones can be restored.
    make_backup(server, target, status="failed")
    page = page_of(logged_in(world.admin), server)
    assert 'id="action-delete"' in page and CHECKBOX in page
    assert "Keep this server's 2 backups (they can be restored as a new server)" in page
    form = page[page.index('data-action="delete"'):]
    form = form[:form.index("</form>")]
    assert CHECKBOX in form and 'id="keep-backups"' in form
    assert " checked" not in form  # unchecked by default


def test_one_backup_is_said_in_the_singular(world, server, target):
    make_backup(server, target)
    page = page_of(logged_in(world.admin), server)
    assert "Keep this server's 1 backup (it can be restored as a new server)" in page


def test_no_checkbox_without_backups(world, server, target):
    # Not even with a failed backup of it, or a finished backup of another server.
    make_backup(server, target, status="failed")
    other = lifecycle.create_server(SYSTEM, customer=world.alice_customer, plan=server.plan, hostname="other",
                                    os_template="tiny")[0]
    make_backup(other, target)
    page = page_of(logged_in(world.admin), server)
    assert 'id="action-delete"' in page
    assert CHECKBOX not in page and "Keep this server" not in page


def test_customers_have_no_delete_form_and_so_no_checkbox(world, server, backups):
    page = page_of(logged_in(world.alice), server)
    assert 'id="server-backups"' in page  # Alice sees her backups...
    assert 'id="action-delete"' not in page and CHECKBOX not in page  # ...but deleting is the provider's


def test_the_checkbox_is_in_russian(world, server, backups, ui_russian_catalog):
    admin = logged_in(world.admin)
    admin.post("/language/", {"language": "ru", "next": f"/servers/{server.pk}/"})
    page = page_of(admin, server)
    assert "Сохранить 2 резервные копии этого сервера" in page and "Keep this server" not in page


# --- what the form posts ---------------------------------------------------------------------

def test_checked_it_queues_the_delete_with_keep_backups_and_the_backups_stay(world, server, backups, target,
                                                                            monkeypatch):
    monkeypatch.setattr(operations, "enqueue", lambda op_id: None)  # queued only, run below
    r = logged_in(world.admin).post(f"/servers/{server.pk}/actions/delete/", {"keep_backups": "1"})
    assert r.status_code == 302
    op = Operation.objects.get(kind=Operation.Kind.DELETE)
    assert op.status == Operation.Status.QUEUED and op.params["keep_backups"] is True
    jobs.run_operation(op.id)
    op.refresh_from_db()
    assert op.status == Operation.Status.SUCCEEDED, op.error
    assert not VirtualServer.objects.filter(pk=server.pk).exists()
    kept = Backup.objects.filter(pk__in=[b.pk for b in backups]).order_by("id")
    assert kept.count() == 2
    assert all(b.server_id is None and b.hostname == "alice-web" and b.status == "done" for b in kept)
    assert len(files_of(target)) == 2  # and their files


def test_the_browsers_on_value_counts_as_checked(world, server, backups):
    logged_in(world.admin).post(f"/servers/{server.pk}/actions/delete/", {"keep_backups": "on"})
    assert Operation.objects.get(kind=Operation.Kind.DELETE).params["keep_backups"] is True
    assert Backup.objects.filter(pk__in=[b.pk for b in backups]).count() == 2


def test_unchecked_the_delete_removes_the_backups(world, server, target):
    # One backup: deleting two or more of a server's backups at once currently fails the delete
    # operation in backup.retention.delete_backups (it collects ids after .delete() set them to None).
    backups = [make_backup(server, target)]
    assert len(files_of(target)) == 1
    r = logged_in(world.admin).post(f"/servers/{server.pk}/actions/delete/")
    assert r.status_code == 302 and r["Location"] == "/admin/servers/"
    op = Operation.objects.get(kind=Operation.Kind.DELETE)
    assert op.status == Operation.Status.SUCCEEDED, op.error
    assert not op.params.get("keep_backups")
    assert not VirtualServer.objects.filter(pk=server.pk).exists()
    assert not Backup.objects.filter(pk__in=[b.pk for b in backups]).exists()
    assert files_of(target) == []


def test_a_customer_cannot_delete_another_customers_server_with_it(world, server, backups):
    r = logged_in(world.bob).post(f"/servers/{server.pk}/actions/delete/", {"keep_backups": "1"})
    assert r.status_code == 404
    assert VirtualServer.objects.filter(pk=server.pk).exists()
    assert not Operation.objects.filter(kind=Operation.Kind.DELETE).exists()
    assert Backup.objects.filter(pk__in=[b.pk for b in backups]).count() == 2


def test_the_owner_cannot_delete_their_server_either(world, server, backups):
    r = logged_in(world.alice).post(f"/servers/{server.pk}/actions/delete/", {"keep_backups": "1"}, follow=True)
    assert r.status_code == 200
    assert any("Only the provider" in str(m) for m in r.context["messages"])
    server.refresh_from_db()
    assert server.state == "running"
    assert not Operation.objects.filter(kind=Operation.Kind.DELETE).exists()

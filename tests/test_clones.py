"""Clones and golden templates on the fake driver (panel/images/cloning.py, clone_jobs.py): a
clone is a new server with its own identity whose disk comes from a stopped source, a thin
overlay on a frozen copy (never on the live disk) or a full copy; golden templates are locked
servers new servers are thin clones of, versioned by edit and publish. The real guests do it in
tests/e2e/test_clones.py."""

import pytest
from django.db.models import ProtectedError

from nodes.connection import driver_for
from nodes.models import Network
from panel.accounts.tenancy import SYSTEM
from panel.images.golden import CloneBase, CloneOrigin, GoldenTemplate
from panel.ipam.models import IpAddress, IpPool
from panel.vps import lifecycle
from panel.vps.models import Operation, VirtualServer

pytestmark = pytest.mark.django_db


@pytest.fixture
def public(world):
    network = Network.objects.create(cluster=world.node.cluster, name="public", kind="bridged", bridge="br-pub",
                                     interface="eth1")
    IpPool.objects.create(name="pub", network=network, cidr="10.77.61.0/24", gateway="10.77.61.1",
                          quarantine_minutes=0)
    return network


@pytest.fixture
def stopped(world, public):
    """Alice's installed server, stopped: what clones are made of."""
    server, _op, _pw = lifecycle.create_server(SYSTEM, customer=world.alice_customer, plan=world.plan,
                                               hostname="alice-web", os_template="tiny")
    lifecycle.request_action(SYSTEM, server.pk, "stop", {"force": True})
    server.refresh_from_db()
    assert server.state == "stopped", server.error
    return server


def clone(world, server, key=None, **body):
    return world.client(key or world.admin_key).post(f"/api/v1/servers/{server.pk}/clone/",
                                                     {"hostname": "alice-copy", **body}, format="json")


def made(response) -> VirtualServer:
    assert response.status_code == 202, response.content
    op = Operation.objects.get(pk=response.json()["id"])
    assert op.status == "succeeded", op.log
    return op.server


def test_a_thin_clone_is_a_new_server_with_its_own_identity_on_a_frozen_copy(world, stopped):
    copy = made(clone(world, stopped))
    driver = driver_for(world.node.uri)
    assert copy.state == "running" and copy.hostname == "alice-copy" and copy.uuid != stopped.uuid
    assert copy.customer_id == stopped.customer_id and copy.plan_id == stopped.plan_id
    macs = {n.mac for n in stopped.nics.all()}, {n.mac for n in copy.nics.all()}
    assert macs[0] and macs[1] and not macs[0] & macs[1]
    ips = set(IpAddress.objects.filter(server=stopped).values_list("address", flat=True)), \
        set(IpAddress.objects.filter(server=copy).values_list("address", flat=True))
    assert ips[0] and ips[1] and not ips[0] & ips[1]
    # The guest is told its own addresses at boot (the tiny OS's kernel command line).
    spec = driver.host.domains[copy.domain_name]["spec"]
    assert spec.uuid == str(copy.uuid) and {n.mac for n in spec.nics} == macs[1]
    assert f",{next(iter(ips[1]))}/24," in spec.kernel_boot.cmdline and next(iter(ips[0])) not in spec.kernel_boot.cmdline
    # The overlay's backing file is a frozen copy, not the source's live disk.
    base = CloneOrigin.objects.get(server=copy).base
    assert driver.host.backing[copy.disk_volume] == base.path
    assert base.volume != stopped.disk_volume and stopped.disk_volume not in base.path
    assert driver.content(base.volume) == driver.content(stopped.disk_volume)
    assert driver.state(stopped.domain_name) == "shutoff"  # the source stays as it was


def test_the_source_running_again_does_not_change_the_clone_and_a_changed_source_gets_a_new_base(world, stopped):
    first = made(clone(world, stopped))
    again = made(clone(world, stopped, hostname="alice-copy2"))
    driver = driver_for(world.node.uri)
    shared = CloneOrigin.objects.get(server=first).base
    assert CloneOrigin.objects.get(server=again).base == shared  # unchanged source: one base
    frozen = driver.content(shared.volume)
    driver.set_content(stopped.disk_volume, b"the source wrote after the clone")
    third = made(clone(world, stopped, hostname="alice-copy3"))
    assert CloneOrigin.objects.get(server=third).base != shared
    assert driver.content(shared.volume) == frozen
    assert driver.content(CloneOrigin.objects.get(server=third).base.volume) == b"the source wrote after the clone"
    with pytest.raises(ProtectedError):  # a base in use is kept
        shared.delete()


def test_a_full_copy_has_its_own_disk(world, stopped):
    driver = driver_for(world.node.uri)
    driver.set_content(stopped.disk_volume, b"source data")
    copy = made(clone(world, stopped, mode="full"))
    assert driver.content(copy.disk_volume) == b"source data"
    assert CloneOrigin.objects.get(server=copy).base is None and not CloneBase.objects.exists()
    driver.set_content(stopped.disk_volume, b"changed")
    assert driver.content(copy.disk_volume) == b"source data"


@pytest.mark.parametrize("body, field", [({"mode": "sparse"}, "mode"), ({"hostname": "bad host;rm"}, "hostname")])
def test_bad_input_is_refused_and_makes_nothing(world, stopped, body, field):
    r = clone(world, stopped, **body)
    assert r.status_code == 400 and field in r.content.decode()
    assert VirtualServer.objects.count() == 1 and not CloneOrigin.objects.exists()


def test_a_running_server_is_not_cloned(world, public):
    server, _op, _pw = lifecycle.create_server(SYSTEM, customer=world.alice_customer, plan=world.plan,
                                               hostname="alice-web", os_template="tiny")
    r = clone(world, server)
    assert r.status_code == 409 and r.json()["code"] == "invalid_state"
    assert VirtualServer.objects.count() == 1 and not CloneOrigin.objects.exists()


def test_customers_clone_only_when_their_plan_allows_and_within_their_server_limit(world, stopped, settings):
    r = clone(world, stopped, world.alice_key)
    assert r.status_code == 403 and r.json()["code"] == "permission_denied"
    world.plan.clones = True
    world.plan.save()
    assert clone(world, stopped, world.bob_key).status_code == 404  # another's server does not exist
    settings.LIMIT_SERVERS_PER_CUSTOMER = 1
    r = clone(world, stopped, world.alice_key)
    assert r.status_code in (403, 409, 429) and "limit" in r.content.decode()
    assert VirtualServer.objects.count() == 1 and not CloneOrigin.objects.exists()
    settings.LIMIT_SERVERS_PER_CUSTOMER = 5
    copy = made(clone(world, stopped, world.alice_key))
    assert copy.customer_id == world.alice_customer.pk


def test_the_source_takes_no_operation_while_a_clone_reads_its_disk(world, stopped):
    Operation.objects.create(kind="create", status="running", params={"clone_of": stopped.pk})
    r = world.client(world.admin_key).post(f"/api/v1/servers/{stopped.pk}/start/")
    assert r.status_code == 409 and "clone" in r.json()["detail"]


def test_a_clone_that_fails_to_boot_leaves_no_disk_behind(world, stopped):
    from nodes.driver import DriverError

    driver = driver_for(world.node.uri)
    driver.fail_next["start"] = DriverError("no boot")
    r = clone(world, stopped)
    op = Operation.objects.get(pk=r.json()["id"])
    assert op.status == "failed"
    assert op.server.state == "error" and not driver.volume_exists(op.server.storage.pool_name, op.server.disk_volume)


# -- golden templates ----------------------------------------------------------------------------

def make_template(world, server, **body):
    r = world.client(world.admin_key).post(f"/api/v1/servers/{server.pk}/make-template/",
                                           {"name": "web-golden", **body}, format="json")
    assert r.status_code == 201, r.content
    return r.json()


def from_template(world, template_id, key=None, hostname="made1", customer=None):
    body = {"plan": world.plan.pk, "hostname": hostname}
    if customer is not None:
        body["customer"] = customer
    return world.client(key or world.admin_key).post(f"/api/v1/golden-templates/{template_id}/servers/", body,
                                                     format="json")


@pytest.mark.parametrize("path, body", [("start/", {}), ("reinstall/", {}), ("clone/", {"hostname": "x1"})])
def test_a_golden_template_refuses_start_and_change(world, stopped, path, body):
    make_template(world, stopped)
    r = world.client(world.admin_key).post(f"/api/v1/servers/{stopped.pk}/{path}", body, format="json")
    assert r.status_code == 409 and r.json()["code"] == "golden_template", r.content
    assert "golden template web-golden" in r.json()["detail"]
    stopped.refresh_from_db()
    assert stopped.state == "stopped" and not stopped.operations.filter(kind__in=("start", "reinstall")).exists()


def test_servers_made_from_a_template_and_its_versions(world, stopped):
    driver = driver_for(world.node.uri)
    driver.set_content(stopped.disk_volume, b"version 1")
    template = make_template(world, stopped)
    first = made(from_template(world, template["id"], customer=world.bob_customer.pk))
    origin = CloneOrigin.objects.get(server=first)
    assert first.customer_id == world.bob_customer.pk and origin.template_id == template["id"] and origin.version == 1
    assert driver.content(origin.base.volume) == b"version 1"
    # Edit: the template's server may start and change; no server is made from it meanwhile.
    assert world.client(world.admin_key).post(f"/api/v1/golden-templates/{template['id']}/edit/").json()["editing"]
    r = from_template(world, template["id"], hostname="made-during-edit", customer=world.bob_customer.pk)
    assert r.status_code == 409 and r.json()["code"] == "golden_template_editing"
    assert world.client(world.admin_key).post(f"/api/v1/servers/{stopped.pk}/start/").status_code == 202
    driver.set_content(stopped.disk_volume, b"version 2")
    r = world.client(world.admin_key).post(f"/api/v1/golden-templates/{template['id']}/publish/")
    assert r.status_code == 409 and r.json()["code"] == "invalid_state"  # running: stop it first
    lifecycle.request_action(SYSTEM, stopped.pk, "stop", {"force": True})
    r = world.client(world.admin_key).post(f"/api/v1/golden-templates/{template['id']}/publish/")
    assert r.status_code == 200 and r.json()["version"] == 2 and not r.json()["editing"]
    second = made(from_template(world, template["id"], hostname="made2", customer=world.bob_customer.pk))
    new_origin = CloneOrigin.objects.get(server=second)
    assert new_origin.version == 2 and driver.content(new_origin.base.volume) == b"version 2"
    # The server of version 1 keeps its base, unchanged.
    origin.refresh_from_db()
    assert driver.content(origin.base.volume) == b"version 1"
    assert driver.host.backing[first.disk_volume] == origin.base.path


def test_customers_see_and_use_only_offered_templates(world, stopped):
    template = make_template(world, stopped)
    alice = world.client(world.alice_key)
    assert alice.get("/api/v1/golden-templates/").json()["results"] == []
    r = from_template(world, template["id"], world.alice_key)
    assert r.status_code == 404 and VirtualServer.objects.count() == 1
    GoldenTemplate.objects.filter(pk=template["id"]).update(offered=True)
    listed = alice.get("/api/v1/golden-templates/").json()["results"]
    assert [t["name"] for t in listed] == ["web-golden"] and "server" not in listed[0]
    r = from_template(world, template["id"], world.alice_key, customer=world.bob_customer.pk)
    assert r.status_code == 400  # not a customer of theirs
    server = made(from_template(world, template["id"], world.alice_key))
    assert server.customer_id == world.alice_customer.pk


def test_only_admins_manage_templates(world, stopped):
    r = world.client(world.alice_key).post(f"/api/v1/servers/{stopped.pk}/make-template/", {"name": "mine"})
    assert r.status_code == 403 and not GoldenTemplate.objects.exists()


def test_a_base_leaves_the_node_with_its_last_user_and_not_before(world, stopped):
    driver = driver_for(world.node.uri)
    copy = made(clone(world, stopped))
    base = CloneOrigin.objects.get(server=copy).base
    admin = world.client(world.admin_key)
    # The source goes first: its clone still runs on the base.
    assert Operation.objects.get(pk=admin.delete(f"/api/v1/servers/{stopped.pk}/").json()["id"]).status == "succeeded"
    assert CloneBase.objects.filter(pk=base.pk).exists() and driver.volume_exists(base.storage.pool_name, base.volume)
    assert Operation.objects.get(pk=admin.delete(f"/api/v1/servers/{copy.pk}/").json()["id"]).status == "succeeded"
    assert not CloneBase.objects.exists() and not driver.volume_exists(base.storage.pool_name, base.volume)


# -- the UI --------------------------------------------------------------------------------------

def ui(user):
    from django.test import Client

    client = Client()
    client.force_login(user)
    return client


def test_the_server_page_offers_clone_on_a_stopped_server_and_the_ui_clones(world, stopped):
    admin, alice = ui(world.admin), ui(world.alice)
    page = admin.get(f"/servers/{stopped.pk}/").content.decode()
    assert 'id="clone-form"' in page and 'id="make-template-form"' in page
    assert 'id="clone"' not in alice.get(f"/servers/{stopped.pk}/").content.decode()  # the plan has no clones
    r = alice.post(f"/servers/{stopped.pk}/clone/", {"hostname": "ui-copy"})
    assert VirtualServer.objects.count() == 1  # refused: the plan has no clones
    world.plan.clones = True
    world.plan.save()
    page = alice.get(f"/servers/{stopped.pk}/").content.decode()
    assert 'id="clone-form"' in page and 'id="make-template-form"' not in page
    r = alice.post(f"/servers/{stopped.pk}/clone/", {"hostname": "bad host"})
    assert r.status_code == 302 and VirtualServer.objects.count() == 1
    r = alice.post(f"/servers/{stopped.pk}/clone/", {"hostname": "ui-copy", "mode": "full"})
    copy = VirtualServer.objects.get(hostname="ui-copy")
    assert r.status_code == 302 and r.url == f"/servers/{copy.pk}/" and copy.state == "running"
    assert CloneOrigin.objects.get(server=copy).mode == "full"
    assert alice.post(f"/servers/{stopped.pk}/make-template/", {"name": "x"}).status_code == 404


def test_the_admin_templates_page_edits_publishes_and_creates(world, stopped):
    admin = ui(world.admin)
    r = admin.post(f"/servers/{stopped.pk}/make-template/", {"name": "ui-golden", "offered": "on"})
    template = GoldenTemplate.objects.get(name="ui-golden")
    assert r.status_code == 302 and template.offered
    page = admin.get(f"/servers/{stopped.pk}/").content.decode()
    assert 'id="golden-template-note"' in page and "ui-golden" in page and 'id="clone-form"' not in page
    page = admin.get("/admin/golden-templates/").content.decode()
    assert f'data-template="{template.pk}"' in page
    admin.post(f"/admin/golden-templates/{template.pk}/servers/",
               {"customer": world.bob_customer.pk, "plan": world.plan.pk, "hostname": "ui-made"})
    assert VirtualServer.objects.get(hostname="ui-made").customer_id == world.bob_customer.pk
    admin.post(f"/admin/golden-templates/{template.pk}/edit/")
    admin.post(f"/admin/golden-templates/{template.pk}/publish/")
    template.refresh_from_db()
    assert template.version == 2 and not template.editing
    assert ui(world.alice).get("/admin/golden-templates/").status_code == 404
    admin.post(f"/admin/golden-templates/{template.pk}/delete/")
    assert not GoldenTemplate.objects.exists()


def test_a_cloud_init_image_clone_gets_a_seed_with_a_new_instance_id_and_its_hostname(world, stopped):
    from templates_os.seed import read_seed

    template = stopped.os_template
    template.metadata = {**template.metadata, "seed": "iso"}
    template.save(update_fields=["metadata"])
    copy = made(clone(world, stopped, hostname="seeded-copy"))
    driver = driver_for(world.node.uri)
    files = read_seed(driver.host.uploads[copy.seed_volume])
    assert f"instance-id: {copy.uuid}-clone" in files["meta-data"] and 'local-hostname: "seeded-copy"' in files["meta-data"]
    assert str(stopped.uuid) not in files["meta-data"]
    # The first boot had the seed; the persistent definition boots without it, as an installed server does.
    assert ("define", copy.domain_name) in driver.calls
    assert not any(d.device == "cdrom" for d in driver.host.domains[copy.domain_name]["spec"].disks)


def test_a_golden_template_refuses_a_restore_of_its_disk(world, stopped):
    from backup.models import Backup, BackupTarget

    target = BackupTarget.objects.create(name="disk", kind="dir", path="/tmp")
    backup = Backup.objects.create(server=stopped, server_uuid=stopped.uuid, customer_id=stopped.customer_id,
                                   target=target, kind="full", status="done")
    make_template(world, stopped)
    r = world.client(world.admin_key).post(f"/api/v1/servers/{stopped.pk}/restore/", {"backup": backup.pk},
                                           format="json")
    assert r.status_code == 409 and r.json()["code"] == "golden_template", r.content
    assert not stopped.operations.filter(kind="restore").exists()

"""Tenancy and delete rules declared once, on the models, and used by the UI and the API alike.

Each model with customer data declares `customer_path` (and rows only admins see,
`admins_only`); `Actor.restrict()` is the one method that reads them. Why a record cannot be
deleted is its model's `delete_refusal()`: the API answers 409 with it, the UI shows its message.
"""

from pathlib import Path

import pytest
from django.apps import apps
from django.db import models
from django.test import Client
from django.utils import timezone

from backup.models import Backup, BackupPlan, BackupTarget
from nodes.models import Cluster, Network, Storage
from panel.accounts.models import AuditEntry, Customer
from panel.accounts.tenancy import SYSTEM, actor_for_user
from panel.api.models import Event
from panel.ipam.models import IpAddress, IpPool
from panel.vps.models import ServerNic, VirtualServer
from panel.webhooks.models import Delivery, Webhook

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.django_db


def project_models() -> list[type[models.Model]]:
    return [m for m in apps.get_models() if Path(apps.get_app_config(m._meta.app_label).path).is_relative_to(ROOT)]


def holds_customer_data(model, seen=()) -> bool:
    """Customer itself, or a model with a foreign key to one that holds customer data."""
    if model is Customer:
        return True
    return any(f.many_to_one or f.one_to_one for f in model._meta.concrete_fields if f.is_relation
               and f.related_model not in seen and holds_customer_data(f.related_model, (*seen, model)))


def path_target(model, path: str):
    """The model that `path` ends at, walked through `_meta` ("pk" is the model itself)."""
    for name in path.split("__"):
        if name == "pk":
            continue
        model = model._meta.get_field(name).related_model
    return model


def owner(row, path: str):
    """The customer id of `row`, walked in Python (not by the queryset under test)."""
    value = row
    for name in path.split("__"):
        value = value.pk if name == "pk" else getattr(value, name, None)
        if value is None:
            return None
    return value.pk if isinstance(value, models.Model) else value


TENANT_MODELS = sorted((m for m in project_models() if holds_customer_data(m)), key=lambda m: m._meta.label)


def test_the_walk_finds_the_tenant_models():
    assert {VirtualServer, Backup, IpAddress, Customer, Webhook, Delivery, ServerNic, Event} <= set(TENANT_MODELS)
    assert not {Cluster, Storage, Network, IpPool, BackupTarget, BackupPlan} & set(TENANT_MODELS)


@pytest.mark.parametrize("model", TENANT_MODELS, ids=lambda m: m._meta.label)
def test_every_model_with_customer_data_declares_its_path_to_the_customer(model):
    path = getattr(model, "customer_path", None)
    assert path, f"{model._meta.label} holds customer data but declares no customer_path"
    assert path_target(model, path) is Customer


@pytest.fixture
def two_customers(world, alice_server):
    """Rows of every kind for Alice and for Bob, and rows that only admins see."""
    bob_server = VirtualServer.objects.create(customer=world.bob_customer, plan=world.plan, node=world.node,
                                              hostname="bob-web", vcpus=1, ram_mib=256, disk_gib=1, state="stopped")
    network = Network.objects.create(cluster=world.node.cluster, name="public", kind="bridged", bridge="br-pub",
                                     interface="eth1")
    pool = IpPool.objects.create(name="pub4", network=network, cidr="203.0.113.0/28")
    target = BackupTarget.objects.create(name="disk", kind="dir", path="/tmp")
    for n, server in enumerate((alice_server, bob_server, None)):
        ServerNic.objects.get_or_create(server=server or alice_server, network=network)
        IpAddress.objects.create(pool=pool, address=f"203.0.113.{n + 5}", ordinal=str(n + 5).zfill(39), server=server)
        Backup.objects.create(server=server, server_uuid=server.uuid if server else None,
                              customer_id=server.customer_id if server else None, target=target,
                              kind="full" if server else "panel", status="done")
        hook = Webhook(url=f"https://hooks.example.com/{n}", events=["*"],
                       customer_id=server.customer_id if server else None)
        hook.secret = "s" * 32
        hook.save()
        event = Event.objects.create(event="server.created", customer_id=server.customer_id if server else None)
        Delivery.objects.create(webhook=hook, event=event, give_up_at=timezone.now())
        AuditEntry.objects.create(actor_repr="test", customer_id=server.customer_id if server else None,
                                  action="test", object_type="test")
    return world, bob_server


@pytest.mark.parametrize("model", TENANT_MODELS, ids=lambda m: m._meta.label)
def test_a_customer_sees_only_its_own_rows_through_the_one_method(two_customers, model):
    world, _bob_server = two_customers
    path = model.customer_path
    hidden = getattr(model, "admins_only", None)
    rows = list(model.objects.all())
    admin_only = set(model.objects.filter(hidden).values_list("pk", flat=True)) if hidden is not None else set()
    for user, customer in ((world.alice, world.alice_customer), (world.bob, world.bob_customer)):
        seen = set(actor_for_user(user).restrict(model.objects.all()).values_list("pk", flat=True))
        own = {row.pk for row in rows if owner(row, path) == customer.pk} - admin_only
        assert seen == own
    assert set(SYSTEM.restrict(model.objects.all()).values_list("pk", flat=True)) == {row.pk for row in rows}


@pytest.mark.parametrize("model", [VirtualServer, Customer, IpAddress, Backup, Webhook, Delivery, Event, ServerNic])
def test_the_rows_above_are_there_for_both_customers(two_customers, model):
    world, _ = two_customers
    owners = {owner(row, model.customer_path) for row in model.objects.all()}
    assert {world.alice_customer.pk, world.bob_customer.pk} <= owners


def test_rows_for_admins_only_are_hidden_from_billing_keys_too(two_customers):
    world, _ = two_customers
    billing = world.client(world.billing_key)
    admin = world.client(world.admin_key)
    assert Backup.objects.filter(kind="panel").count() == 1 and IpAddress.objects.filter(server=None).count() == 1
    assert {b["kind"] for b in billing.get("/api/v1/backups/").json()["results"]} == {"full"}
    assert "panel" in {b["kind"] for b in admin.get("/api/v1/backups/").json()["results"]}
    assert None not in {a["server"] for a in billing.get("/api/v1/ip-addresses/").json()["results"]}
    assert None in {a["server"] for a in admin.get("/api/v1/ip-addresses/").json()["results"]}


# --- Delete rules: the same in the UI and the API ------------------------------------------------

def cluster_with_a_server_on_its_storage(world, alice_server):
    """A cluster without nodes or networks whose storage holds Alice's server's disk."""
    cluster = Cluster.objects.create(name="c2")
    storage = Storage.objects.create(cluster=cluster, name="disks2", kind="dir", path="/fake2")
    VirtualServer.objects.filter(pk=alice_server.pk).update(storage=storage)
    return cluster


def test_the_api_refuses_to_delete_a_cluster_whose_storage_holds_servers(world, alice_server):
    cluster = cluster_with_a_server_on_its_storage(world, alice_server)
    r = world.client(world.admin_key).delete(f"/api/v1/clusters/{cluster.pk}/")
    assert r.status_code == 409, (r.status_code, r.content)
    assert r.json() == {"detail": "Servers have disks on this cluster's storages.", "code": "cluster_in_use"}
    assert Cluster.objects.filter(pk=cluster.pk).exists() and Storage.objects.filter(cluster=cluster).exists()
    assert not AuditEntry.objects.filter(action="cluster.delete").exists()


def _cluster_with_nodes(world, alice_server):
    return world.node.cluster


def _cluster_with_a_pool(world, alice_server):
    cluster = Cluster.objects.create(name="c3")
    IpPool.objects.create(name="p", network=Network.objects.create(cluster=cluster, name="public", bridge="br0",
                                                                   interface="eth0"), cidr="192.0.2.0/24")
    return cluster


def _storage_in_use(world, alice_server):
    return VirtualServer.objects.get(pk=alice_server.pk).storage


def _network_with_a_nic(world, alice_server):
    network = Network.objects.create(cluster=world.node.cluster, name="lan", bridge="br-lan", interface="eth2")
    ServerNic.objects.create(server=alice_server, network=network)
    return network


def _pool_in_use(world, alice_server):
    pool = IpPool.objects.create(name="pub4", network=Network.objects.create(
        cluster=world.node.cluster, name="public", bridge="br-pub", interface="eth1"), cidr="203.0.113.0/28")
    IpAddress.objects.create(pool=pool, address="203.0.113.5", ordinal="5".zfill(39), server=alice_server)
    return pool


def _target_with_a_plan(world, alice_server):
    target = BackupTarget.objects.create(name="disk", kind="dir", path="/tmp")
    BackupPlan.objects.create(name="nightly", target=target, schedule="0 3 * * *")
    return target


def _target_with_a_backup(world, alice_server):
    target = BackupTarget.objects.create(name="disk", kind="dir", path="/tmp")
    Backup.objects.create(server=alice_server, server_uuid=alice_server.uuid, customer_id=alice_server.customer_id,
                          target=target, kind="full", status="done")
    return target


REFUSED_DELETES = {
    # case: (make the record, API path, UI path, code)
    "cluster-with-nodes": (_cluster_with_nodes, "/api/v1/clusters/{}/", "/admin/clusters/{}/delete/",
                           "cluster_has_nodes"),
    "cluster-storage-in-use": (cluster_with_a_server_on_its_storage, "/api/v1/clusters/{}/",
                               "/admin/clusters/{}/delete/", "cluster_in_use"),
    "cluster-with-a-pool": (_cluster_with_a_pool, "/api/v1/clusters/{}/", "/admin/clusters/{}/delete/",
                            "cluster_in_use"),
    "storage-in-use": (_storage_in_use, "/api/v1/storages/{}/", "/admin/storages/{}/delete/", "storage_in_use"),
    "network-with-a-nic": (_network_with_a_nic, "/api/v1/networks/{}/", "/admin/networks/{}/delete/",
                           "network_in_use"),
    "pool-in-use": (_pool_in_use, "/api/v1/ip-pools/{}/", "/admin/ip-pools/{}/delete/", "pool_in_use"),
    "target-with-a-plan": (_target_with_a_plan, "/api/v1/backup-targets/{}/", "/admin/backups/targets/{}/delete/",
                           "target_in_use"),
    "target-with-a-backup": (_target_with_a_backup, "/api/v1/backup-targets/{}/",
                             "/admin/backups/targets/{}/delete/", "target_in_use"),
}


@pytest.mark.parametrize("case", REFUSED_DELETES)
def test_the_ui_and_the_api_refuse_the_same_deletes_with_the_same_message(world, alice_server, case):
    make, api_path, ui_path, code = REFUSED_DELETES[case]
    record = make(world, alice_server)
    assert record is not None
    audit_before = AuditEntry.objects.count()

    r = world.client(world.admin_key).delete(api_path.format(record.pk))
    assert r.status_code == 409 and r.json()["code"] == code, (r.status_code, r.content)
    message = r.json()["detail"]
    assert message == record.delete_refusal().message

    ui = Client()
    ui.force_login(world.admin)
    r = ui.post(ui_path.format(record.pk), follow=True)
    assert r.status_code == 200 and message in [str(m) for m in r.context["messages"]]

    assert type(record).objects.filter(pk=record.pk).exists()
    assert AuditEntry.objects.count() == audit_before


@pytest.mark.parametrize("path", ["/api/v1/clusters/{}/", "/admin/clusters/{}/delete/"])
def test_an_unused_cluster_is_deleted_by_either(world, path):
    cluster = Cluster.objects.create(name="empty")
    Storage.objects.create(cluster=cluster, name="unused", kind="dir", path="/unused")
    if path.startswith("/api/"):
        assert world.client(world.admin_key).delete(path.format(cluster.pk)).status_code == 204
    else:
        ui = Client()
        ui.force_login(world.admin)
        assert ui.post(path.format(cluster.pk)).status_code == 302
    assert not Cluster.objects.filter(pk=cluster.pk).exists()
    assert AuditEntry.objects.filter(action="cluster.delete").count() == 1


def test_a_delete_the_database_protects_against_is_a_409_in_any_viewset(world, alice_server, monkeypatch):
    """A rule that missed a protecting row (say, one added meanwhile): 409, and no audit entry."""
    storage = VirtualServer.objects.get(pk=alice_server.pk).storage
    monkeypatch.setattr(Storage, "delete_refusal", lambda self: None)
    r = world.client(world.admin_key).delete(f"/api/v1/storages/{storage.pk}/")
    assert r.status_code == 409 and r.json()["code"] == "in_use", (r.status_code, r.content)
    assert Storage.objects.filter(pk=storage.pk).exists()
    assert not AuditEntry.objects.filter(action="storage.delete").exists()

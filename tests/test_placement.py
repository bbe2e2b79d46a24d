"""Placement: filters with reasons, the spread weigher, over-commit, and no over-fill under
concurrent creates (threads on the suite's database, MariaDB in `make test`)."""

from decimal import Decimal

import pytest
from django.db import connection

from nodes import placement
from nodes.models import Cluster, Node
from panel.vps.models import VirtualServer
from tests.conftest import create_concurrently, fake_node

pytestmark = pytest.mark.django_db


def want(vcpus=1, ram=1024, disk=10):
    return placement.Request(vcpus, ram, disk)


def test_it_spreads_over_equal_nodes(db):
    nodes = [fake_node(f"n{i}") for i in range(3)]
    chosen = []
    for _ in range(6):
        decision = placement.reserve(want())
        chosen.append(decision.node.name)
    assert sorted(chosen) == ["n0", "n0", "n1", "n1", "n2", "n2"]
    for node in nodes:
        node.refresh_from_db()
        assert (node.alloc_vcpus, node.alloc_ram_mib, node.alloc_disk_gib) == (2, 2048, 20)


def test_it_packs_when_asked(db, settings):
    settings.PLACEMENT_WEIGHER = "pack"
    fake_node("n0")
    fake_node("n1", alloc_ram_mib=4096)
    assert placement.decide(want()).node.name == "n1"


def test_it_explains_why_each_node_was_filtered_out(db):
    fake_node("ok")
    fake_node("down", state=Node.State.OFFLINE, last_error="libvirtd does not answer")
    fake_node("maint", state=Node.State.MAINTENANCE)
    fake_node("full-ram", alloc_ram_mib=16384 - 512)
    fake_node("full-cpu", alloc_vcpus=8 * 4)
    fake_node("full-disk", alloc_disk_gib=995)
    assert placement.decide(want(ram=1024, disk=10)).node.name == "ok"
    decision = placement.decide(want(ram=1024, disk=10), explain=True)
    assert decision.node.name == "ok"
    why = decision.rejected
    assert why["down"].startswith("offline") and "libvirtd does not answer" in why["down"]
    assert why["maint"] == "maintenance"
    assert "not enough RAM: 512 MiB free, needs 1024" in why["full-ram"]
    assert "not enough vCPUs: 0 free" in why["full-cpu"]
    assert "not enough disk on disks: 5 GiB free, needs 10" in why["full-disk"]
    assert "down: offline" in decision.explain()


def test_cpu_and_ram_over_commit_come_from_the_cluster(db):
    node = fake_node("n")  # 8 CPUs, 16384 MiB
    Cluster.objects.filter(pk=node.cluster_id).update(cpu_overcommit=Decimal("2"), ram_overcommit=Decimal("1.5"))
    assert placement.decide(want(vcpus=16, ram=1024)).node is not None
    assert placement.decide(want(vcpus=17, ram=1024)).node is None
    assert "vCPUs" in placement.decide(want(vcpus=17, ram=1024)).rejected["n"]
    assert placement.decide(want(ram=24576)).node is not None
    assert "RAM" in placement.decide(want(ram=24577)).rejected["n"]


def test_no_capacity_is_a_409_that_explains_to_admins_only(world):
    Node.objects.filter(pk=world.node.pk).update(alloc_ram_mib=16384)
    body = {"customer": world.alice_customer.id, "plan": world.plan.id, "hostname": "full", "os_template": "tiny"}
    r = world.client(world.admin_key).post("/api/v1/servers/", body, format="json")
    assert r.status_code == 409 and r.data["code"] == "no_capacity" and "fake1: not enough RAM" in r.data["detail"]
    r = world.client(world.alice_key).post("/api/v1/servers/", {k: v for k, v in body.items() if k != "customer"},
                                           format="json")
    assert r.status_code == 409 and "fake1" not in r.data["detail"]
    assert VirtualServer.objects.count() == 0


def test_delete_gives_the_capacity_back(world, alice_server):
    world.node.refresh_from_db()
    assert world.node.alloc_ram_mib == world.plan.ram_mib
    world.client(world.billing_key).delete(f"/api/v1/servers/{alice_server.id}/")
    world.node.refresh_from_db()
    assert (world.node.alloc_vcpus, world.node.alloc_ram_mib, world.node.alloc_disk_gib) == (0, 0, 0)


def test_the_reconciler_recounts_drifted_allocations(world, alice_server):
    from panel.vps.reconciler import reconcile_all

    Node.objects.filter(pk=world.node.pk).update(alloc_ram_mib=99999, alloc_vcpus=77)
    reconcile_all()
    world.node.refresh_from_db()
    assert (world.node.alloc_vcpus, world.node.alloc_ram_mib) == (1, world.plan.ram_mib)


@pytest.mark.django_db(transaction=True)
def test_concurrent_creates_never_over_fill_a_node():
    """16 creates at once against two nodes with room for 5 servers each: exactly 10 made."""
    from panel.accounts.models import Customer
    from panel.vps.models import Plan

    if connection.vendor == "sqlite":
        pytest.skip("needs a database with row locks and concurrent writers (make test runs MariaDB)")
    customer = Customer.objects.create(name="C", email="c@example.com")
    plan = Plan.objects.create(name="p", vcpus=1, ram_mib=1024, disk_gib=1)
    for name in ("a", "b"):
        fake_node(name, ram_mib=5 * 1024)
    results = create_concurrently(16, customer=customer, plan=plan)
    assert results.count("ok") == 10 and results.count("no_capacity") == 6, results
    for node in Node.objects.all():
        assert node.alloc_ram_mib == 5 * 1024
        assert VirtualServer.objects.filter(node=node).count() == 5

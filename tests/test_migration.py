"""Migration between nodes of a cluster, on the in-memory driver."""

import pytest

from nodes.connection import driver_for
from nodes.models import Node
from tests.conftest import fake_node

pytestmark = pytest.mark.django_db


def test_a_live_migration_moves_the_domain_and_the_capacity(world, alice_server):
    other = fake_node("fake2")
    r = world.client(world.admin_key).post(f"/api/v1/servers/{alice_server.id}/migrate/", {"node": other.id},
                                           format="json")
    assert r.status_code == 202 and r.data["status"] == "succeeded", r.data
    alice_server.refresh_from_db()
    assert alice_server.node == other and alice_server.state == "running"
    assert alice_server.domain_name in driver_for("fake://fake2").host.domains
    assert alice_server.domain_name not in driver_for("fake://fake1").host.domains
    source, dest = Node.objects.get(pk=world.node.pk), Node.objects.get(pk=other.pk)
    assert (source.alloc_ram_mib, dest.alloc_ram_mib) == (0, world.plan.ram_mib)


def test_migration_is_for_admins_within_a_cluster_to_a_node_with_room(world, alice_server):
    from nodes.models import Cluster

    other = fake_node("fake2")
    assert world.client(world.billing_key).post(f"/api/v1/servers/{alice_server.id}/migrate/", {"node": other.id},
                                                format="json").status_code == 403
    assert world.client(world.alice_key).post(f"/api/v1/servers/{alice_server.id}/migrate/", {"node": other.id},
                                              format="json").status_code == 403
    elsewhere = fake_node("far", cluster=Cluster.objects.create(name="c2"))
    r = world.client(world.admin_key).post(f"/api/v1/servers/{alice_server.id}/migrate/", {"node": elsewhere.id},
                                           format="json")
    assert r.status_code == 400 and "cluster" in r.data["detail"]
    Node.objects.filter(pk=other.pk).update(alloc_ram_mib=16384)
    r = world.client(world.admin_key).post(f"/api/v1/servers/{alice_server.id}/migrate/", {"node": other.id},
                                           format="json")
    assert r.status_code == 409 and r.data["code"] == "no_capacity"
    alice_server.refresh_from_db()
    assert alice_server.node == world.node and alice_server.state == "running"


def test_a_failed_migration_gives_the_destination_its_capacity_back(world, alice_server):
    from nodes.driver import DriverError

    other = fake_node("fake2")
    driver_for("fake://fake1").fail_next["migrate"] = DriverError("migration refused")
    r = world.client(world.admin_key).post(f"/api/v1/servers/{alice_server.id}/migrate/", {"node": other.id},
                                           format="json")
    assert r.status_code == 202 and r.data["status"] == "failed" and "migration refused" in r.data["error"]
    alice_server.refresh_from_db()
    assert alice_server.node == world.node and alice_server.state == "running"
    assert Node.objects.get(pk=other.pk).alloc_ram_mib == 0

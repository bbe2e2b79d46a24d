"""Billing actions: change of plan (capacity under the node lock, disk only grows, honest about
what applies live) and root password reset through the guest agent."""

import threading

import pytest
from django.db import connection

from nodes.connection import driver_for
from nodes.models import Node
from panel.accounts.models import AuditEntry
from panel.vps.models import Operation, Plan, VirtualServer

pytestmark = pytest.mark.django_db


@pytest.fixture
def big_plan(world):
    return Plan.objects.create(name="big", vcpus=2, ram_mib=512, disk_gib=5, bandwidth_mbit=100)


def change_plan(world, server, plan, key=None, **headers):
    return world.client(key or world.billing_key).post(f"/api/v1/servers/{server.id}/change-plan/",
                                                       {"plan": plan.id}, format="json", **headers)


def counters(node) -> tuple[int, int, int]:
    node = Node.objects.get(pk=node.pk)
    return node.alloc_vcpus, node.alloc_ram_mib, node.alloc_disk_gib


def fake():
    return driver_for("fake://fake1")


# -- change-plan -------------------------------------------------------------------------------

def test_change_plan_up_grows_everything_and_the_node_counters_follow(world, alice_server, big_plan):
    assert counters(world.node) == (1, 256, 1)
    r = change_plan(world, alice_server, big_plan)
    assert r.status_code == 202, r.data
    assert r.data["kind"] == "change_plan" and r.data["status"] == "succeeded", r.data
    server = VirtualServer.objects.get(pk=alice_server.pk)
    assert (server.plan, server.vcpus, server.ram_mib, server.disk_gib) == (big_plan, 2, 512, 5)
    assert r.data["server_state"]["vcpus"] == 2 and r.data["server_state"]["disk_gib"] == 5
    assert counters(world.node) == (2, 512, 5)
    dom = fake().host.domains[server.domain_name]
    assert dom["spec"].vcpus == 2 and dom["spec"].ram_mib == 512  # the next boot
    assert dom["live"] == (1, 256)  # growth beyond the boot-time maximum is not live
    assert fake().host.pools["panel-disks"][server.disk_volume] == 5
    assert dom["spec"].nics == () or dom["spec"].nics[0].average_kbytes  # the plan's bandwidth
    op = Operation.objects.get(pk=r.data["id"])
    assert op.params["applies"] == {"vcpus": "next_boot", "ram_mib": "next_boot", "disk_gib": "now"}
    assert "applies at the next boot" in op.log and "sees the larger disk now" in op.log
    assert server.state == "running"
    assert AuditEntry.objects.filter(action="server.change_plan", object_id=str(server.id)).exists()


def test_change_plan_applies_live_when_the_maximum_allows(world, alice_server):
    dom = fake().host.domains[alice_server.domain_name]
    dom["max"] = (4, 1024)  # as if it booted with room to grow
    more = Plan.objects.create(name="more", vcpus=2, ram_mib=512, disk_gib=1)
    r = change_plan(world, alice_server, more)
    assert r.status_code == 202 and r.data["status"] == "succeeded", r.data
    op = Operation.objects.get(pk=r.data["id"])
    assert op.params["applies"] == {"vcpus": "now", "ram_mib": "now", "disk_gib": "unchanged"}
    dom = fake().host.domains[alice_server.domain_name]  # redefined
    assert dom["live"] == (2, 512) and "applied live" in op.log


def test_change_plan_of_a_stopped_server_applies_at_the_next_boot(world, alice_server, big_plan):
    world.client(world.billing_key).post(f"/api/v1/servers/{alice_server.id}/stop/", {"force": True}, format="json")
    r = change_plan(world, alice_server, big_plan)
    assert r.status_code == 202 and r.data["status"] == "succeeded", r.data
    op = Operation.objects.get(pk=r.data["id"])
    assert op.params["applies"] == {"vcpus": "next_boot", "ram_mib": "next_boot", "disk_gib": "next_boot"}
    assert VirtualServer.objects.get(pk=alice_server.pk).state == "stopped"


def test_change_plan_down_gives_capacity_back(world, alice_server, big_plan):
    change_plan(world, alice_server, big_plan)
    fewer = Plan.objects.create(name="fewer-cpus", vcpus=1, ram_mib=256, disk_gib=5)
    r = change_plan(world, alice_server, fewer)
    assert r.status_code == 202 and r.data["status"] == "succeeded", r.data
    assert counters(world.node) == (1, 256, 5)


def test_disk_downgrade_is_refused_and_nothing_changes(world, alice_server, big_plan):
    change_plan(world, alice_server, big_plan)
    before = counters(world.node), Operation.objects.count()
    r = change_plan(world, alice_server, world.plan)  # 1 GiB disk < 5 GiB
    assert r.status_code == 400 and r.data["code"] == "disk_shrink" and "plan" in r.data["fields"], r.data
    server = VirtualServer.objects.get(pk=alice_server.pk)
    assert (server.plan, server.vcpus, server.disk_gib) == (big_plan, 2, 5)
    assert (counters(world.node), Operation.objects.count()) == before


def test_no_capacity_is_a_409_and_nothing_changes(world, alice_server):
    huge = Plan.objects.create(name="huge", vcpus=64, ram_mib=512, disk_gib=2)
    before = counters(world.node), Operation.objects.count()
    r = change_plan(world, alice_server, huge)
    assert r.status_code == 409 and r.data["code"] == "no_capacity", r.data
    assert (counters(world.node), Operation.objects.count()) == before
    server = VirtualServer.objects.get(pk=alice_server.pk)
    assert (server.plan, server.vcpus, server.disk_gib) == (world.plan, 1, 1)
    assert fake().host.pools["panel-disks"][server.disk_volume] == 1


def test_customers_cannot_change_plans(world, alice_server, big_plan):
    assert change_plan(world, alice_server, big_plan, key=world.alice_key).status_code == 403
    assert change_plan(world, alice_server, big_plan, key=world.bob_key).status_code == 404
    assert VirtualServer.objects.get(pk=alice_server.pk).plan == world.plan
    assert change_plan(world, alice_server, big_plan, key=world.admin_key).status_code == 202


def test_a_failed_change_plan_gives_the_capacity_back(world, alice_server, big_plan):
    from nodes.driver import DriverError

    driver_for("fake://fake1").fail_next["grow_volume"] = DriverError("disk full")
    r = change_plan(world, alice_server, big_plan)
    assert r.status_code == 202 and r.data["status"] == "failed"
    # The driver's words are the admin's (the billing key reads the customer's reason).
    assert "disk full" in world.client(world.admin_key).get(f"/api/v1/operations/{r.data['id']}/").json()["error"]
    assert counters(world.node) == (1, 256, 1)
    server = VirtualServer.objects.get(pk=alice_server.pk)
    assert (server.plan, server.vcpus, server.disk_gib, server.state) == (world.plan, 1, 1, "running")


def test_change_plan_while_an_operation_runs_is_a_409(world, alice_server, big_plan):
    Operation.objects.create(kind="stop", server=alice_server, customer=alice_server.customer, status="running")
    r = change_plan(world, alice_server, big_plan)
    assert r.status_code == 409 and r.data["code"] == "operation_in_progress"
    assert counters(world.node) == (1, 256, 1)


@pytest.mark.django_db(transaction=True)
def test_concurrent_change_plans_on_one_server_run_one(world, alice_server, big_plan):
    from panel.accounts.tenancy import SYSTEM
    from panel import operations
    from panel.vps import lifecycle

    if connection.vendor == "sqlite":
        pytest.skip("needs a database with row locks and concurrent writers (make test runs MariaDB)")
    other = Plan.objects.create(name="other", vcpus=3, ram_mib=512, disk_gib=2)
    results, barrier = [], threading.Barrier(2)

    def change(plan):
        try:
            barrier.wait()
            lifecycle.request_plan_change(SYSTEM, alice_server.pk, plan)
            results.append("ok")
        except lifecycle.Refused as exc:
            results.append(exc.code)
        finally:
            connection.close()

    original, operations.after_commit = operations.after_commit, lambda fn: None  # the worker is not under test
    try:
        threads = [threading.Thread(target=change, args=(p,)) for p in (big_plan, other)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        operations.after_commit = original
    assert sorted(results) == ["ok", "operation_in_progress"], results
    assert Operation.objects.filter(server=alice_server, kind="change_plan").count() == 1
    taken = Operation.objects.get(server=alice_server, kind="change_plan").params["after"]
    assert counters(world.node) == (taken["vcpus"], taken["ram_mib"], taken["disk_gib"])


# -- reset-password ----------------------------------------------------------------------------

def reset(world, server, key=None, body=None, **headers):
    return world.client(key or world.alice_key).post(f"/api/v1/servers/{server.id}/reset-password/",
                                                     body or {}, format="json", **headers)


def test_reset_password_with_the_guest_agent(world, alice_server):
    fake().host.agent.add(alice_server.domain_name)
    r = reset(world, alice_server, HTTP_IDEMPOTENCY_KEY="pw-1")
    assert r.status_code == 202, r.data
    assert r.data["kind"] == "reset_password" and r.data["status"] == "succeeded", r.data
    assert r.data["applies"] == "now" and len(r.data["password"]) == 16
    assert fake().host.passwords[(alice_server.domain_name, "root")] == r.data["password"]
    op = Operation.objects.get(pk=r.data["id"])
    assert "secret" not in op.params and r.data["password"] not in op.log
    assert r.data["password"] not in str(AuditEntry.objects.filter(action="server.reset_password").values())
    again = reset(world, alice_server, HTTP_IDEMPOTENCY_KEY="pw-1")
    assert again.status_code == 202 and again["Idempotent-Replayed"] == "true"
    assert "password" not in again.json() and again.json()["applies"] == "now"
    assert Operation.objects.filter(kind="reset_password").count() == 1


def test_reset_password_with_a_chosen_password_by_the_billing_system(world, alice_server):
    fake().host.agent.add(alice_server.domain_name)
    r = reset(world, alice_server, key=world.billing_key, body={"password": "correct horse 1"})
    assert r.status_code == 202 and r.data["applies"] == "now" and r.data["password"] == "correct horse 1"
    assert fake().host.passwords[(alice_server.domain_name, "root")] == "correct horse 1"
    assert reset(world, alice_server, body={"password": "short"}).status_code == 400


def test_reset_password_without_an_agent_fails_and_says_why(world, alice_server):
    r = reset(world, alice_server)
    assert r.status_code == 202 and r.data["status"] == "failed", r.data
    assert r.data["applies"] == "agent_required"
    assert "guest agent is not running" in r.data["error"]
    assert fake().host.passwords == {}
    assert VirtualServer.objects.get(pk=alice_server.pk).state == "running"


def test_reset_password_of_someone_elses_or_a_stopped_server(world, alice_server):
    assert reset(world, alice_server, key=world.bob_key).status_code == 404
    world.client(world.alice_key).post(f"/api/v1/servers/{alice_server.id}/stop/", {"force": True}, format="json")
    r = reset(world, alice_server)
    assert r.status_code == 409 and r.data["code"] == "invalid_state"
    assert not Operation.objects.filter(kind="reset_password").exists()


# -- the web UI ----------------------------------------------------------------------------------

def test_ui_change_plan_and_password_reset(world, alice_server, big_plan, client):
    fake().host.agent.add(alice_server.domain_name)
    client.force_login(world.admin)
    page = client.get(f"/servers/{alice_server.id}/")
    assert b'id="change-plan"' in page.content and b'id="reset-password"' in page.content
    r = client.post(f"/servers/{alice_server.id}/billing/change-plan/", {"plan": big_plan.id})
    assert r.status_code == 302
    assert VirtualServer.objects.get(pk=alice_server.pk).plan == big_plan
    r = client.post(f"/servers/{alice_server.id}/billing/reset-password/")
    assert r.status_code == 302
    page = client.get(f"/servers/{alice_server.id}/")
    password = fake().host.passwords[(alice_server.domain_name, "root")]
    assert password.encode() in page.content
    assert password.encode() not in client.get(f"/servers/{alice_server.id}/").content  # shown once


def test_ui_customer_resets_but_cannot_change_plan(world, alice_server, big_plan, client):
    client.force_login(world.alice)
    page = client.get(f"/servers/{alice_server.id}/")
    assert b'id="change-plan"' not in page.content and b'id="reset-password"' in page.content
    r = client.post(f"/servers/{alice_server.id}/billing/change-plan/", {"plan": big_plan.id})
    assert VirtualServer.objects.get(pk=alice_server.pk).plan == world.plan
    r = client.post(f"/servers/{alice_server.id}/billing/reset-password/", follow=True)
    assert "guest agent" in r.content.decode()  # no agent: the failure is shown, not a password
    client.force_login(world.bob)
    assert client.post(f"/servers/{alice_server.id}/billing/reset-password/").status_code == 404


# -- the real libvirt driver, on libvirt's built-in test hypervisor ---------------------------------

def test_libvirt_driver_set_resources_and_password_on_the_test_hypervisor():
    pytest.importorskip("libvirt")
    from nodes.driver import DriverError, LibvirtDriver

    driver = LibvirtDriver("test:///default")
    try:
        driver.ping()
    except DriverError:
        pytest.skip("libvirt's test driver is not available")
    # The predefined running domain "test" booted with 2 vCPUs and up to 8 GiB of RAM.
    assert driver.set_resources("test", 1, 1024, live=True) is True
    assert driver.set_resources("test", 8, 1024, live=True) is False  # beyond its maximum: next boot
    assert driver.set_resources("test", 1, 1024, live=False) is False
    assert driver.set_user_password("test", "root", "s3cret-pass") is True
    with pytest.raises(DriverError):
        driver.set_resources("no-such-domain", 1, 64, live=True)
    # The test hypervisor cannot resize volumes: the driver says so as a DriverError.
    driver.create_volume("default-pool", "grow.qcow2", 1)
    with pytest.raises(DriverError):
        driver.grow_volume("default-pool", "grow.qcow2", 2)
    driver.grow_volume("default-pool", "grow.qcow2", 1)  # already that big: nothing to do
    driver.close()

"""The server lifecycle through the API, on the in-memory driver."""

import pytest

from nodes.connection import driver_for
from nodes.models import Drift
from panel.accounts.models import AuditEntry
from panel.vps.models import Operation, VirtualServer

pytestmark = pytest.mark.django_db


def create(world, key=None, **overrides):
    body = {"customer": world.alice_customer.id, "plan": world.plan.id, "hostname": "web1", "os_template": "tiny"}
    body.update(overrides)
    return world.client(key or world.billing_key).post("/api/v1/servers/", body, format="json")


def test_it_creates_a_server_and_answers_202_with_the_operation(world):
    r = create(world)
    assert r.status_code == 202, r.data
    assert r.data["kind"] == "create" and r.data["status"] == "succeeded" and r.data["progress"] == 100
    server = VirtualServer.objects.get(pk=r.data["server_state"]["id"])
    assert server.state == "running" and server.node == world.node
    host = driver_for("fake://fake1").host
    assert host.domains[server.domain_name]["state"] == "running"
    assert server.disk_volume in host.pools["panel-disks"]
    assert AuditEntry.objects.filter(action="server.create", object_id=str(server.id)).exists()


def test_it_runs_the_power_cycle(world, alice_server):
    c = world.client(world.alice_key)
    url = f"/api/v1/servers/{alice_server.id}"
    assert c.post(f"{url}/stop/", {"force": True}, format="json").status_code == 202
    assert c.get(f"{url}/").data["state"] == "stopped"
    assert c.post(f"{url}/start/").status_code == 202
    assert c.get(f"{url}/").data["state"] == "running"
    boot_before = driver_for("fake://fake1").info(alice_server.domain_name).boot_id
    r = c.post(f"{url}/reboot/")
    assert r.status_code == 202 and r.data["status"] == "succeeded", r.data
    assert driver_for("fake://fake1").info(alice_server.domain_name).boot_id != boot_before


def test_graceful_stop_forces_a_guest_that_ignores_acpi(world, alice_server):
    driver_for("fake://fake1").host.deaf_to_acpi.add(alice_server.domain_name)
    r = world.client(world.alice_key).post(f"/api/v1/servers/{alice_server.id}/stop/", {"timeout": 1}, format="json")
    assert r.status_code == 202 and r.data["status"] == "succeeded"
    op = Operation.objects.get(pk=r.data["id"])
    assert "forced off" in op.log
    assert driver_for("fake://fake1").state(alice_server.domain_name) == "shutoff"


def test_suspended_server_cannot_be_started_by_its_customer(world, alice_server):
    billing = world.client(world.billing_key)
    r = billing.post(f"/api/v1/servers/{alice_server.id}/suspend/", {"reason": "invoice 42 unpaid"}, format="json")
    assert r.status_code == 202 and r.data["server_state"]["state"] == "suspended"
    r = world.client(world.alice_key).post(f"/api/v1/servers/{alice_server.id}/start/")
    assert r.status_code == 409 and r.data["code"] == "server_suspended"
    assert "invoice 42 unpaid" in r.data["detail"]
    assert driver_for("fake://fake1").state(alice_server.domain_name) == "shutoff"
    r = billing.post(f"/api/v1/servers/{alice_server.id}/unsuspend/")
    assert r.status_code == 202 and r.data["server_state"]["state"] == "running"


def test_customer_cannot_suspend_or_delete(world, alice_server):
    c = world.client(world.alice_key)
    assert c.post(f"/api/v1/servers/{alice_server.id}/suspend/").status_code == 403
    assert c.delete(f"/api/v1/servers/{alice_server.id}/").status_code == 403
    assert VirtualServer.objects.get(pk=alice_server.pk).state == "running"


def test_delete_removes_domain_disk_and_row(world, alice_server):
    r = world.client(world.billing_key).delete(f"/api/v1/servers/{alice_server.id}/")
    assert r.status_code == 202 and r.data["status"] == "succeeded", r.data
    assert not VirtualServer.objects.filter(pk=alice_server.pk).exists()
    host = driver_for("fake://fake1").host
    assert alice_server.domain_name not in host.domains
    assert alice_server.disk_volume not in host.pools["panel-disks"]
    # The owner still sees the finished operation, and a stop on the deleted server is a 404.
    alice = world.client(world.alice_key)
    assert alice.get(f"/api/v1/operations/{r.data['id']}/").status_code == 200
    assert alice.post(f"/api/v1/servers/{alice_server.id}/stop/").status_code == 404


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"plan": 999999}, "plan"),
        ({"hostname": "web1; rm -rf /"}, "hostname"),
        ({"hostname": "$(reboot)"}, "hostname"),
        ({"hostname": ""}, "hostname"),
        ({"os_template": "windows-xp"}, "os_template"),
        ({"customer": 999999}, "customer"),
    ],
)
def test_bad_create_input_is_a_clear_400_and_changes_nothing(world, overrides, field):
    r = create(world, **overrides)
    assert r.status_code == 400, r.data
    assert r.data["code"] == "invalid" and field in r.data["fields"] and r.data["detail"]
    assert VirtualServer.objects.count() == 0 and Operation.objects.count() == 0
    assert driver_for("fake://fake1").host.domains == {}


@pytest.mark.parametrize("field, value", [("vcpus", -1), ("ram_mib", -512), ("disk_gib", -10), ("vcpus", 0)])
def test_plan_with_negative_sizes_is_refused(world, field, value):
    body = {"name": "bad", "vcpus": 1, "ram_mib": 512, "disk_gib": 10, field: value}
    r = world.client(world.admin_key).post("/api/v1/plans/", body, format="json")
    assert r.status_code == 400 and field in r.data["fields"]
    assert not world.plan.__class__.objects.filter(name="bad").exists()


def test_a_second_operation_while_one_runs_is_a_409(world, alice_server):
    Operation.objects.create(kind="stop", server=alice_server, customer=alice_server.customer, status="running")
    r = world.client(world.alice_key).post(f"/api/v1/servers/{alice_server.id}/reboot/")
    assert r.status_code == 409 and r.data["code"] == "operation_in_progress"
    assert Operation.objects.filter(server=alice_server).count() == 2  # the create and the running stop


def test_an_action_in_the_wrong_state_is_a_409(world, alice_server):
    r = world.client(world.alice_key).post(f"/api/v1/servers/{alice_server.id}/start/")
    assert r.status_code == 409 and r.data["code"] == "invalid_state"


def test_a_failed_create_cleans_up_and_shows_the_error(world):
    from nodes.driver import DriverError
    from panel.runner import NEUTRAL_FAILURE

    driver_for("fake://fake1").fail_next["start"] = DriverError("qemu said no")
    r = create(world)
    # The billing key reads the customer's reason (a driver's message can name the node); the
    # admin reads the driver's own words.
    assert r.status_code == 202 and r.data["status"] == "failed" and r.data["error"] == NEUTRAL_FAILURE
    admin = world.client(world.admin_key).get(f"/api/v1/operations/{r.data['id']}/").json()
    assert "qemu said no" in admin["error"] and "qemu said no" in admin["log"]
    server = VirtualServer.objects.get()
    assert server.state == "error" and server.error == NEUTRAL_FAILURE
    host = driver_for("fake://fake1").host
    assert host.domains == {} and host.pools["panel-disks"] == {}


def test_idempotency_key_replays_the_first_answer(world):
    c = world.client(world.billing_key)
    body = {"customer": world.alice_customer.id, "plan": world.plan.id, "hostname": "once", "os_template": "tiny"}
    first = c.post("/api/v1/servers/", body, format="json", HTTP_IDEMPOTENCY_KEY="order-7")
    again = c.post("/api/v1/servers/", body, format="json", HTTP_IDEMPOTENCY_KEY="order-7")
    assert first.status_code == again.status_code == 202
    # The same answer, except the root password: a secret is shown once and never stored.
    replayed = {**first.json(), "detail": again.json()["detail"]}
    assert "password" in replayed and "password" not in again.json()
    del replayed["password"]
    assert again.json() == replayed and again["Idempotent-Replayed"] == "true"
    assert VirtualServer.objects.count() == 1
    other = c.post("/api/v1/servers/", {**body, "hostname": "twice"}, format="json", HTTP_IDEMPOTENCY_KEY="order-7")
    assert other.status_code == 409 and other.json()["code"] == "idempotency_conflict"
    assert VirtualServer.objects.count() == 1


def test_reconciler_follows_a_guest_that_powered_itself_off(world, alice_server):
    from panel.vps.reconciler import reconcile_all

    driver_for("fake://fake1").destroy(alice_server.domain_name)
    reconcile_all()
    alice_server.refresh_from_db()
    assert alice_server.state == "stopped"
    assert Drift.objects.filter(kind="state_mismatch", repaired=True, server=alice_server).exists()


def test_reconciler_records_vanished_and_unknown_domains(world, alice_server, settings):
    from nodes.domain_xml import DomainSpec
    from panel.vps.reconciler import reconcile_all

    fake = driver_for("fake://fake1")
    fake.undefine(alice_server.domain_name)
    fake.define(DomainSpec(name="stray", uuid="6f1c3c1e-0000-4000-8000-000000000001", vcpus=1, ram_mib=64,
                           virt_type="qemu"))
    fake.define(DomainSpec(name="other-panel", uuid="6f1c3c1e-0000-4000-8000-000000000002", vcpus=1, ram_mib=64,
                           virt_type="qemu", panel_instance="someone-else", server_id=5))
    reconcile_all()
    reconcile_all()  # a second run refreshes the drift, it does not duplicate it
    alice_server.refresh_from_db()
    assert alice_server.state == "error"
    assert Drift.objects.filter(kind="missing_domain", server=alice_server).count() == 1
    assert list(Drift.objects.filter(kind="unknown_domain").values_list("domain_name", flat=True)) == ["stray"]
    assert "stray" in fake.host.domains  # never removed: an admin decides


def test_reconciler_keeps_a_suspended_server_off(world, alice_server):
    from panel.vps.reconciler import reconcile_all

    world.client(world.billing_key).post(f"/api/v1/servers/{alice_server.id}/suspend/", {"reason": "x"}, format="json")
    driver_for("fake://fake1").start(alice_server.domain_name)  # someone starts it behind the panel's back
    reconcile_all()
    assert driver_for("fake://fake1").state(alice_server.domain_name) == "shutoff"
    alice_server.refresh_from_db()
    assert alice_server.state == "suspended"


def test_reconciler_settles_an_operation_whose_worker_died(world, alice_server, settings):
    from datetime import timedelta

    from django.utils import timezone

    from panel.vps.reconciler import reconcile_all

    settings.OPERATION_STALE_SECONDS = 30
    op = Operation.objects.create(kind="stop", server=alice_server, customer=alice_server.customer, status="running",
                                  heartbeat_at=timezone.now() - timedelta(seconds=60))
    driver_for("fake://fake1").destroy(alice_server.domain_name)  # it got as far as powering off
    reconcile_all()
    op.refresh_from_db()
    alice_server.refresh_from_db()
    assert op.status == "failed" and "worker stopped" in op.error and op.finished_at
    assert alice_server.state == "stopped"

"""Usage counters on the in-memory driver: deltas across resets, hourly buckets, the API, the quota.

The live bandwidth change of a throttle is only checked on the fake driver here (this machine's
kernel lacks tc's sfq, so libvirt cannot apply <bandwidth> for real).
"""

import datetime as dt

import pytest

from nodes.connection import driver_for
from nodes.domain_xml import mbit_to_kbytes
from nodes.driver import DriverError
from nodes.fake import FakeDriver
from panel.api.models import Event
from panel.usage import collector
from panel.usage.models import UsageHour, UsageSample, UsageState, UsageTotal
from tests.conftest import fake_node

pytestmark = pytest.mark.django_db

T0 = dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC)
GIB = 1024**3


def minutes(n: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=n)


def fake(server) -> FakeDriver:
    server.refresh_from_db()
    return driver_for(server.node.uri)


NOW = {"at": T0}


@pytest.fixture(autouse=True)
def clock(monkeypatch):
    """The collector's clock stands at the last sample's time (the power actions' samples too)."""
    NOW["at"] = T0
    monkeypatch.setattr(collector, "clock", lambda: NOW["at"])


def sample(server, at, **counters):
    fake(server).set_counters(server.domain_name, **counters)
    NOW["at"] = at
    return collector.collect_all()


def reboot(world, server):
    r = world.client(world.admin_key).post(f"/api/v1/servers/{server.id}/reboot/", {}, format="json")
    assert r.status_code == 202 and r.data["status"] == "succeeded", r.data


def total(server) -> UsageTotal:
    return UsageTotal.objects.get(server=server)


def test_a_reboot_loses_nothing(world, alice_server):
    sample(alice_server, minutes(0), rx_bytes=100, tx_bytes=10, cpu_ns=5 * 10**9, read_bytes=7, write_bytes=3)
    sample(alice_server, minutes(1), rx_bytes=250, tx_bytes=20, cpu_ns=8 * 10**9, read_bytes=9, write_bytes=4)
    reboot(world, alice_server)
    assert fake(alice_server).stats(alice_server.domain_name).rx_bytes == 0  # QEMU counts from zero again
    sample(alice_server, minutes(2), rx_bytes=30, tx_bytes=1, cpu_ns=1 * 10**9)
    sample(alice_server, minutes(3), rx_bytes=80, tx_bytes=2, cpu_ns=2 * 10**9, write_bytes=5)
    t = total(alice_server)
    assert (t.rx_bytes, t.tx_bytes, t.cpu_ns, t.read_bytes, t.write_bytes) == (250 + 80, 22, 10 * 10**9, 9, 9)
    assert t.uptime_seconds == 60 + 60 + 60  # same boot: the minute between; new boot: at most a minute
    assert UsageSample.objects.filter(server=alice_server).count() == 5  # and the one before the reboot


def test_a_counter_going_down_without_a_new_boot_id_is_a_reset_too(world, alice_server):
    sample(alice_server, minutes(0), rx_bytes=100)
    sample(alice_server, minutes(1), rx_bytes=250)
    sample(alice_server, minutes(2), rx_bytes=30)  # same domain id, lower counter
    sample(alice_server, minutes(3), rx_bytes=80)
    assert total(alice_server).rx_bytes == 250 + 80


def test_the_power_actions_take_a_last_sample(world, alice_server):
    """Traffic between the last minute's sample and a stop is not lost."""
    sample(alice_server, minutes(0), rx_bytes=100)
    fake(alice_server).set_counters(alice_server.domain_name, rx_bytes=400)
    r = world.client(world.admin_key).post(f"/api/v1/servers/{alice_server.id}/stop/", {}, format="json")
    assert r.data["status"] == "succeeded", r.data
    assert total(alice_server).rx_bytes == 400
    NOW["at"] = minutes(2)
    collector.collect_all()  # stopped: nothing read, nothing lost
    assert total(alice_server).rx_bytes == 400


def test_the_power_action_survives_a_failing_sample(world, alice_server):
    driver_for(alice_server.node.uri).fail_next["stats"] = DriverError("node unreachable", retryable=True)
    r = world.client(world.admin_key).post(f"/api/v1/servers/{alice_server.id}/reboot/", {}, format="json")
    assert r.data["status"] == "succeeded", r.data


def test_a_migration_loses_nothing(world, alice_server):
    other = fake_node("fake2")
    sample(alice_server, minutes(0), rx_bytes=100, read_bytes=1000)
    sample(alice_server, minutes(1), rx_bytes=250, read_bytes=1500)
    fake(alice_server).set_counters(alice_server.domain_name, rx_bytes=260)
    r = world.client(world.admin_key).post(f"/api/v1/servers/{alice_server.id}/migrate/", {"node": other.id},
                                           format="json")
    assert r.data["status"] == "succeeded", r.data
    assert total(alice_server).rx_bytes == 260  # the hook sampled before it moved
    # On the destination a new QEMU counts from zero (the fake keeps the domain id: the node tells).
    sample(alice_server, minutes(2), rx_bytes=30, read_bytes=10)
    sample(alice_server, minutes(3), rx_bytes=80, read_bytes=20)
    t = total(alice_server)
    assert (t.rx_bytes, t.read_bytes) == (260 + 80, 1500 + 20)


def test_a_failing_node_is_skipped(world, alice_server, caplog):
    other_node = fake_node("fake2")
    from panel.accounts.tenancy import SYSTEM
    from panel.vps import lifecycle

    bob_server = lifecycle.create_server(SYSTEM, customer=world.bob_customer, plan=world.plan, hostname="bob-web",
                                         os_template="tiny", node=other_node)[0]
    driver_for(bob_server.node.uri).set_counters(bob_server.domain_name, tx_bytes=5)
    fake(alice_server).set_counters(alice_server.domain_name, tx_bytes=7)
    driver_for("fake://fake1").fail_next["stats"] = DriverError("connection refused", retryable=True)
    result = collector.collect_all(now=minutes(0))
    assert result["failed_nodes"] == ["fake1"] and result["sampled"] == 1
    assert "skipping node fake1" in caplog.text
    assert total(bob_server).tx_bytes == 5 and not UsageTotal.objects.filter(server=alice_server).exists()
    collector.collect_all(now=minutes(1))
    assert total(alice_server).tx_bytes == 7


def test_buckets_and_the_api_sums_between_from_and_to(world, alice_server):
    sample(alice_server, T0.replace(hour=10, minute=30), rx_bytes=100, tx_bytes=1, cpu_ns=1_500_000_000)
    sample(alice_server, T0.replace(hour=11, minute=30), rx_bytes=300, tx_bytes=2, cpu_ns=2_000_000_000)
    sample(alice_server, T0.replace(hour=12, minute=30), rx_bytes=700, tx_bytes=4, write_bytes=10)
    hours = {h.hour.hour: h.rx_bytes for h in UsageHour.objects.filter(server=alice_server)}
    assert hours == {10: 100, 11: 200, 12: 400}
    # Old samples are pruned; buckets and totals stay.
    collector.collect_all(now=T0 + dt.timedelta(days=2))
    assert UsageSample.objects.filter(server=alice_server, at__lt=T0 + dt.timedelta(days=1)).count() == 0
    assert UsageHour.objects.filter(server=alice_server, hour__lt=T0 + dt.timedelta(days=1)).count() == 3

    client = world.client(world.alice_key)
    url = f"/api/v1/servers/{alice_server.id}/usage/"
    r = client.get(url, {"from": "2026-03-10T11:00:00Z", "to": "2026-03-10T13:00:00Z"})
    assert r.status_code == 200, r.data
    assert r.data["traffic_rx_bytes"] == 600 and r.data["traffic_tx_bytes"] == 3
    assert r.data["cpu_seconds"] == 0.5 and r.data["disk_write_bytes"] == 10 and r.data["disk_read_bytes"] == 0
    assert r.data["uptime_seconds"] == 7200
    assert r.data["from"].startswith("2026-03-10T11:00:00") and r.data["traffic_quota_bytes"] == 0
    assert r.data["throttled"] is False
    r = client.get(url, {"from": "2026-03-10", "to": "2026-03-10T11:00:00+00:00"})
    assert r.status_code == 200 and r.data["traffic_rx_bytes"] == 100
    # Default: the current month until now (the samples above are in the past).
    r = client.get(url)
    assert r.status_code == 200 and r.data["traffic_rx_bytes"] == 0


@pytest.mark.parametrize("query", [{"from": "yesterday"}, {"to": "2026-13-01"}, {"from": "2026-03-02", "to": "2026-03-01"},
                                   {"from": "0001-01-01T00:00:00+01:00"}, {"to": "9999-12-31T23:59:59-23:59"}])
def test_a_bad_from_or_to_is_a_400(world, alice_server, query):
    r = world.client(world.alice_key).get(f"/api/v1/servers/{alice_server.id}/usage/", query)
    assert r.status_code == 400 and r.data["code"] == "invalid", r.data


def test_usage_is_only_for_the_owner_and_the_provider(world, alice_server):
    url = f"/api/v1/servers/{alice_server.id}/usage/"
    assert world.client(world.bob_key).get(url).status_code == 404
    assert world.client(world.bob_key).get("/api/v1/servers/999999/usage/").status_code == 404
    assert world.client().get(url).status_code == 401
    for key in (world.alice_key, world.admin_key, world.billing_key):
        assert world.client(key).get(url).status_code == 200
    bob = world.client()
    bob.force_login(world.bob)
    assert bob.get(url).status_code == 404
    alice = world.client()
    alice.force_login(world.alice)
    assert alice.get(url).status_code == 200


def test_the_endpoint_is_in_the_openapi_schema(world):
    r = world.client(world.admin_key).get("/api/schema/", HTTP_ACCEPT="application/json")
    assert r.status_code == 200
    text = r.content.decode()
    assert "/api/v1/servers/{id}/usage/" in text and "traffic_quota_bytes" in text


@pytest.fixture
def metered(world, alice_server):
    """Alice's server on a 1 GiB plan that drops to 8 Mbit/s, with a NIC on a public network."""
    from nodes.models import Network
    from panel.vps.models import Plan, ServerNic
    from panel.vps.domain import disk_path, domain_spec

    plan = Plan.objects.create(name="metered", vcpus=1, ram_mib=256, disk_gib=1, traffic_gib=1, bandwidth_mbit=100,
                               **({"throttled_mbit": 8} if hasattr(Plan, "throttled_mbit") else {}))
    alice_server.plan = plan
    alice_server.save()
    network = Network.objects.create(cluster=world.node.cluster, name="public", bridge="br-pub")
    ServerNic.objects.create(server=alice_server, network=network)
    driver = fake(alice_server)
    driver.define(domain_spec(alice_server, disk_path(alice_server, driver)))  # the NIC exists in the running domain
    return alice_server


def live_rate(server) -> set[int]:
    dom = fake(server).host.domains[server.domain_name]
    return {nic.average_kbytes for nic in dom.get("live_nics", {}).values()}


def test_over_the_quota_a_server_is_throttled_once_and_lifted_next_month(world, metered, monkeypatch):
    from panel.vps.models import Plan

    if not hasattr(Plan, "throttled_mbit"):  # until Plan.throttled_mbit lands
        monkeypatch.setattr(Plan, "throttled_mbit", 8, raising=False)
    server = metered
    sample(server, minutes(0), rx_bytes=GIB // 2, tx_bytes=GIB // 4)
    assert not UsageState.objects.filter(throttled_at__isnull=False).exists() and live_rate(server) == set()
    result = sample(server, minutes(1), rx_bytes=GIB // 2 + GIB // 4, tx_bytes=GIB // 4 + 1)
    assert result["throttled"] == 1
    state = UsageState.objects.get(server=server)
    assert state.throttled and state.month == dt.date(2026, 3, 1) and state.quota_bytes == GIB
    assert live_rate(server) == {mbit_to_kbytes(8)} == {976}
    events = Event.objects.filter(event="server.traffic_exceeded")
    assert events.count() == 1
    event = events.get()
    assert event.customer_id == world.alice_customer.id
    assert event.data["server"] == server.id and event.data["used_bytes"] == GIB + 1 and event.data["quota_bytes"] == GIB

    # More traffic the same month: no second event.
    assert sample(server, minutes(2), rx_bytes=GIB)["throttled"] == 0
    assert Event.objects.filter(event="server.traffic_exceeded").count() == 1
    r = world.client(world.alice_key).get(f"/api/v1/servers/{server.id}/usage/",
                                          {"from": "2026-03-01", "to": "2026-03-31"})
    assert r.data["traffic_quota_bytes"] == GIB and r.data["traffic_rx_bytes"] + r.data["traffic_tx_bytes"] > GIB

    # A reboot brings the plan's rate back from the definition: the collector reduces it again.
    reboot(world, server)
    fake(server).host.domains[server.domain_name].pop("live_nics", None)
    sample(server, minutes(3), rx_bytes=10)
    assert live_rate(server) == {976}
    assert Event.objects.filter(event="server.traffic_exceeded").count() == 1

    # Next month: the plan's bandwidth is back, the quota counts from zero.
    result = sample(server, dt.datetime(2026, 4, 1, 0, 1, tzinfo=dt.UTC), rx_bytes=20)
    assert result["lifted"] == 1 and result["throttled"] == 0
    assert live_rate(server) == {mbit_to_kbytes(100)}
    assert UsageState.objects.get(server=server, month=dt.date(2026, 3, 1)).lifted_at is not None
    assert collector.collect_all(now=dt.datetime(2026, 4, 1, 0, 2, tzinfo=dt.UTC))["lifted"] == 0


def test_unlimited_plans_are_never_throttled(world, alice_server):
    sample(alice_server, minutes(0), rx_bytes=50 * GIB)
    assert not UsageState.objects.exists() and not Event.objects.filter(event="server.traffic_exceeded").exists()


def test_the_management_command_collects(world, alice_server):
    from io import StringIO

    from django.core.management import call_command

    fake(alice_server).set_counters(alice_server.domain_name, rx_bytes=42)
    out = StringIO()
    call_command("collect_usage", stdout=out)
    assert "sampled 1 servers" in out.getvalue() and total(alice_server).rx_bytes == 42


def test_the_server_page_shows_this_months_usage(world, alice_server):
    from django.utils import timezone

    fake(alice_server).set_counters(alice_server.domain_name, rx_bytes=3 * 1024**2, tx_bytes=1024**2)
    NOW["at"] = timezone.now()
    collector.collect_all()
    client = world.client()
    client.force_login(world.alice)
    r = client.get(f"/servers/{alice_server.id}/")
    assert r.status_code == 200
    html = r.content.decode()
    assert 'id="usage-card"' in html and "4.0" in html and "MB" in html and 'id="usage-throttled"' not in html

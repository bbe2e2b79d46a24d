"""The minute's collection (panel/metrics/collector.py) on the in-memory driver and the suite's
database: one read per node, deltas that never go negative, sums that equal billing, gaps with
reasons for nodes that fail or hang, storage/network/pool points, the power actions' sample."""

import datetime as dt
import threading
import time

import pytest

from nodes.connection import driver_for
from nodes.driver import DriverError
from panel.metrics import collector, store
from panel.metrics.models import MetricBucket, NodeReading
from panel.usage import collector as usage
from panel.usage.models import UsageTotal
from tests.conftest import fake_node

pytestmark = pytest.mark.django_db
T0 = dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC)
NOW = {"at": T0}


@pytest.fixture(autouse=True)
def clock(monkeypatch):
    NOW["at"] = T0
    for module in (collector, usage, store):
        monkeypatch.setattr(module, "clock", lambda: NOW["at"])


def at(minutes: float) -> dt.datetime:
    NOW["at"] = T0 + dt.timedelta(minutes=minutes)
    return NOW["at"]


def fake(server):
    server.refresh_from_db()
    return driver_for(server.node.uri)


def bucket(kind, target_id, minute):
    return MetricBucket.objects.get(kind=kind, target_id=target_id, step=60, start=T0 + dt.timedelta(minutes=minute))


def read(kind, target_id, minutes=10):
    return store.read(kind, target_id, T0, T0 + dt.timedelta(minutes=minutes), step=60, now=T0)


def test_it_turns_one_read_into_rates_percentages_and_billing(world, alice_server):
    d = fake(alice_server)
    d.set_counters(alice_server.domain_name, rx_bytes=1000, tx_bytes=100, cpu_ns=10**9, rx_packets=10,
                   read_bytes=4096, write_bytes=8192, write_ops=2)
    collector.collect(now=at(0))
    d.set_counters(alice_server.domain_name, rx_bytes=61_000, tx_bytes=6100, cpu_ns=10**9 + 30 * 10**9,
                   rx_packets=70, read_bytes=4096, write_bytes=8192 + 6_000_000, write_ops=602,
                   vcpu_wait_ns=6 * 10**9, mem_used=100 * 2**20)
    result = collector.collect(now=at(1))
    assert result["servers"] == 1 and result["failed_nodes"] == []
    data = bucket("server", alice_server.id, 1).data
    assert data["net_rx"] == [60_000, 1, 1000.0] and data["net_rx_pkts"][0] == 60
    assert data["cpu"][0] == pytest.approx(50.0) and data["steal"][0] == pytest.approx(10.0)  # of 1 vCPU
    assert data["disk.vda.wr_bytes"] == [6_000_000, 1, 100_000.0] and data["disk.vda.wr_ops"][0] == 600
    assert data["mem_used"][0] == 100 * 2**20 and data["mem_total"][0] == alice_server.ram_mib * 2**20
    # The first read had no baseline for what only monitoring counts; billing had its own.
    total = UsageTotal.objects.get(server=alice_server)
    view = read("server", alice_server.id)
    assert view["series"]["net_rx"]["sum"] == total.rx_bytes == 61_000
    assert view["series"]["cpu_ns"]["sum"] == total.cpu_ns
    assert view["series"]["disk.vda.wr_bytes"]["sum"] == total.write_bytes


def test_memory_the_guest_does_not_report_is_unknown_not_zero(world, alice_server):
    collector.collect(now=at(0))
    collector.collect(now=at(1))
    data = bucket("server", alice_server.id, 1).data
    assert "mem_used" not in data and "mem_total" not in data and "cpu" in data


def test_a_reboot_and_a_counter_that_goes_down_lose_nothing_and_go_negative_nowhere(world, alice_server):
    d = fake(alice_server)
    d.set_counters(alice_server.domain_name, rx_bytes=500, rx_packets=5)
    collector.collect(now=at(0))
    d.set_counters(alice_server.domain_name, rx_bytes=900, rx_packets=9)
    collector.collect(now=at(1))
    r = world.client(world.admin_key).post(f"/api/v1/servers/{alice_server.id}/reboot/", {}, format="json")
    assert r.status_code == 202 and r.data["status"] == "succeeded", r.data
    d.set_counters(alice_server.domain_name, rx_bytes=300, rx_packets=3)  # the new boot's
    collector.collect(now=at(2))
    d.set_counters(alice_server.domain_name, rx_bytes=100, rx_packets=1)  # the same boot, lower
    collector.collect(now=at(3))
    view = read("server", alice_server.id)
    rx = [v for v in view["series"]["net_rx"]["avg"] if v is not None]
    assert min(rx) >= 0 and min(v for v in view["series"]["net_rx_pkts"]["avg"] if v is not None) >= 0
    assert view["series"]["net_rx"]["sum"] == UsageTotal.objects.get(server=alice_server).rx_bytes == 900 + 300 + 100
    assert view["series"]["net_rx_pkts"]["sum"] == (9 - 5) + 3 + 1


def test_a_busy_domain_is_a_gap_and_its_next_read_counts_what_it_missed(world, alice_server):
    d = fake(alice_server)
    d.set_counters(alice_server.domain_name, rx_bytes=100, read_bytes=1000)
    collector.collect(now=at(0))
    d.host.busy.add(alice_server.domain_name)  # a job holds its monitor: no disk counters now
    d.set_counters(alice_server.domain_name, rx_bytes=200, read_bytes=3000)
    collector.collect(now=at(1))
    assert bucket("server", alice_server.id, 1).gap == "busy"
    d.host.busy.clear()
    d.set_counters(alice_server.domain_name, rx_bytes=300, read_bytes=4000)
    collector.collect(now=at(2))
    total = UsageTotal.objects.get(server=alice_server)
    assert (total.rx_bytes, total.read_bytes) == (300, 4000)  # no restart seen, nothing counted twice
    view = read("server", alice_server.id)
    assert view["series"]["disk.vda.rd_bytes"]["sum"] == 4000 and bucket("server", alice_server.id, 2).data[
        "disk.vda.rd_bytes"][0] == 3000


def test_the_power_actions_sample_goes_into_the_graphs_too(world, alice_server):
    d = fake(alice_server)
    collector.collect(now=at(0))
    d.set_counters(alice_server.domain_name, tx_bytes=777)
    at(0.5)
    r = world.client(world.admin_key).post(f"/api/v1/servers/{alice_server.id}/stop/", {"force": True}, format="json")
    assert r.status_code == 202 and r.data["status"] == "succeeded", r.data
    collector.collect(now=at(1))
    view = read("server", alice_server.id)
    assert view["series"]["net_tx"]["sum"] == UsageTotal.objects.get(server=alice_server).tx_bytes == 777
    assert bucket("server", alice_server.id, 1).gap == "stopped"
    assert {"from": int((T0 + dt.timedelta(minutes=1)).timestamp()), "to": int((T0 + dt.timedelta(minutes=2)).timestamp()),
            "reason": "stopped"} in view["gaps"]


def test_a_node_that_fails_gets_a_gap_with_its_reason_for_itself_and_its_servers(world, alice_server):
    other = fake_node("fake2")
    fake(alice_server).fail_next["node_stats"] = DriverError("connection refused", retryable=True)
    result = collector.collect(now=at(0))
    assert result["failed_nodes"] == ["fake1"]
    assert bucket("node", world.node.id, 0).gap == "node_offline"
    assert bucket("server", alice_server.id, 0).gap == "node_offline"
    assert bucket("node", other.id, 0).data["running"][0] == 0  # the other node reported
    reading = NodeReading.objects.get(node_id=world.node.id)
    assert reading.ok_at is None and reading.error
    collector.collect(now=at(1))
    assert collector.freshness()[world.node.id] == T0 + dt.timedelta(minutes=1)
    assert bucket("server", alice_server.id, 1).gap == ""


def test_a_node_that_hangs_costs_the_deadline_and_no_more(world, alice_server, monkeypatch):
    other = fake_node("fake2")
    release = threading.Event()
    hung = driver_for(world.node.uri)
    real = type(hung).node_stats

    def slow(self, names=None):
        if self is hung:
            release.wait(10)
        return real(self, names)

    monkeypatch.setattr(type(hung), "node_stats", slow)
    try:
        started = time.monotonic()
        result = collector.collect(now=at(0), deadline=0.5)
        assert time.monotonic() - started < 3
        assert result["failed_nodes"] == ["fake1"] and bucket("server", alice_server.id, 0).gap == "node_offline"
        assert bucket("node", other.id, 0).gap == ""
        # Still hanging a minute later: not read twice at once.
        collector.collect(now=at(1), deadline=0.5)
        assert bucket("node", world.node.id, 1).gap == "collector_failed"
    finally:
        release.set()
    for _ in range(50):
        if not collector._in_flight:
            break
        time.sleep(0.05)
    collector.collect(now=at(2), deadline=5)
    assert bucket("server", alice_server.id, 2).gap == ""


def test_two_collections_never_run_at_once(world, alice_server):
    with collector.lease(60) as held:
        assert held
        assert collector.collect(now=at(0))["skipped"] is True
        assert not MetricBucket.objects.exists()
    assert "skipped" not in collector.collect(now=at(0))


def test_storage_network_and_pool_points(world):
    from nodes.models import Network
    from panel.ipam.models import IpPool
    from panel.vps.models import VirtualServer

    network = Network.objects.create(cluster=world.node.cluster, name="public", kind="bridged", bridge="br-pub",
                                     interface="eth1")
    pool = IpPool.objects.create(name="pub4", network=network, cidr="203.0.113.0/28", gateway="203.0.113.1")
    r = world.client(world.billing_key).post("/api/v1/servers/", {
        "customer": world.alice_customer.id, "plan": world.plan.id, "hostname": "web", "os_template": "tiny"},
        format="json")
    assert r.status_code == 202 and r.data["status"] == "succeeded", r.data
    server = VirtualServer.objects.get(pk=r.data["server_state"]["id"])
    collector.collect(now=at(0))
    data = bucket("storage", server.storage_id, 0).data
    assert data["committed"][0] == server.disk_gib * 2**30 and data["capacity"][0] == 100 * 2**30
    assert 0 < data["used"][0] < data["capacity"][0]
    pool_data = bucket("pool", pool.id, 0).data
    assert pool_data["used"][0] == 1 and pool_data["used"][0] + pool_data["free"][0] == pool.size()
    fake(server).set_counters(server.domain_name, rx_bytes=5000)
    collector.collect(now=at(1))
    assert bucket("network", network.id, 1).data["net_rx"] == [5000, 1, 5000 / 60]


def test_node_cpu_and_committed_resources(world, alice_server):
    host = fake(alice_server).host
    host.usage.update(cpu_busy_ns=10**9, cpu_idle_ns=9 * 10**9, cpu_iowait_ns=0)
    collector.collect(now=at(0))
    host.usage.update(cpu_busy_ns=4 * 10**9, cpu_idle_ns=15 * 10**9, cpu_iowait_ns=10**9)
    collector.collect(now=at(1))
    data = bucket("node", world.node.id, 1).data
    assert data["cpu"][0] == pytest.approx(30.0) and data["iowait"][0] == pytest.approx(10.0)
    assert data["running"][0] == 1 and data["vcpus_committed"][0] == alice_server.vcpus
    assert data["ram_committed"][0] == alice_server.ram_mib * 2**20


def test_guest_filesystems_are_read_where_an_agent_answers(world, alice_server):
    host = fake(alice_server).host
    assert collector.collect_filesystems() == 0  # no agent
    host.agent.add(alice_server.domain_name)
    host.filesystems[alice_server.domain_name] = {"/": (3 * 2**30, 10 * 2**30)}
    assert collector.collect_filesystems() == 1
    data = bucket("server", alice_server.id, 0).data
    assert data["fs./.used"][0] == 3 * 2**30 and data["fs./.size"][0] == 10 * 2**30


def test_the_collection_is_scheduled_in_place_of_the_old_usage_one(db):
    from django_q.models import Schedule

    from panel.vps.schedules import ensure_schedules

    Schedule.objects.create(name="collect-usage", func="panel.usage.collector.collect_all",
                            schedule_type=Schedule.MINUTES, minutes=1, repeats=-1)
    ensure_schedules()
    assert not Schedule.objects.filter(name="collect-usage").exists()
    assert Schedule.objects.get(name="collect-metrics").func == "panel.metrics.collector.collect"
    assert Schedule.objects.get(name="collect-filesystems").minutes == 15

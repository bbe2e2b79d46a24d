"""The monitoring API (panel/metrics/api.py) on the suite's database: a server's graph with its
events, Alice/Bob isolation, the provider-only targets, clear 400s, CSV, the tier chosen for
≤ 1,500 points, a bounded number of queries, and the admins' top."""

import csv
import datetime as dt
import io

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from panel.metrics import store
from panel.metrics.models import MetricBucket
from panel.metrics.store import Point
from panel.usage.models import UsageState
from panel.vps.models import Operation, VirtualServer

pytestmark = pytest.mark.django_db
NOW = dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC)


def epoch(moment: dt.datetime) -> int:
    return int((moment - store.EPOCH).total_seconds())


@pytest.fixture(autouse=True)
def _clock(monkeypatch):
    monkeypatch.setattr(store, "clock", lambda: NOW)


def seed(server_id: int, minutes: int = 60, end: dt.datetime = NOW, cpu=lambda i: 10 + i % 7):
    """A minute's sample per minute before `end`: cpu, memory, traffic and a disk."""
    for i in range(minutes):
        at = end - dt.timedelta(minutes=minutes - i)
        rx = 6000 * (i + 1)
        store.record([Point("server", server_id,
                            {"cpu": cpu(i), "mem_used": 200e6, "mem_total": 256e6, "net_rx": rx, "net_tx": 600,
                             "disk.vda.rd_ops": 60 * i, "disk.vda.wr_ops": 120},
                            {"net_rx": rx / 60, "net_tx": 10, "disk.vda.rd_ops": i, "disk.vda.wr_ops": 2})], at)


@pytest.fixture
def bob_server(world):
    return VirtualServer.objects.create(customer=world.bob_customer, plan=world.plan, node=world.node,
                                        hostname="bob-db", vcpus=1, ram_mib=256, disk_gib=1, state="running")


def get(world, key, path, **params):
    return world.client(key).get(path, params)


def test_it_returns_the_servers_graph_with_its_events_for_its_customer(world, alice_server):
    seed(alice_server.id, minutes=59, end=NOW - dt.timedelta(minutes=1))
    store.record([Point("server", alice_server.id, gap="stopped")], NOW - dt.timedelta(minutes=1))
    reboot = Operation.objects.create(kind="reboot", status="succeeded", server=alice_server,
                                      customer=world.alice_customer, node=world.node)
    Operation.objects.filter(pk=reboot.pk).update(started_at=NOW - dt.timedelta(minutes=30))
    UsageState.objects.create(server=alice_server, month=dt.date(2026, 3, 1), throttled_at=NOW - dt.timedelta(minutes=5))
    r = get(world, world.alice_key, f"/api/v1/servers/{alice_server.id}/metrics/")
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["step"] == 60 and len(body["t"]) == 60 and body["t"][0] == epoch(NOW - dt.timedelta(hours=1))
    assert body["series"]["cpu"]["avg"][:3] == [10.0, 11.0, 12.0]
    assert body["series"]["net_rx"]["avg"][0] == 100.0 and body["series"]["net_rx"]["counter"] is True
    assert body["series"]["net_rx"]["sum"] == sum(6000 * (i + 1) for i in range(59))  # the last minute is a gap
    assert body["gaps"] == [{"from": epoch(NOW) - 60, "to": epoch(NOW), "reason": "stopped"}]
    kinds = [(e["kind"], e["t"]) for e in body["events"]]
    assert ("reboot", epoch(NOW - dt.timedelta(minutes=30))) in kinds
    assert ("throttle", epoch(NOW - dt.timedelta(minutes=5))) in kinds
    assert world.node.name not in r.content.decode()


def test_it_lets_the_series_and_the_range_be_chosen(world, alice_server):
    seed(alice_server.id)
    start = NOW - dt.timedelta(minutes=20)
    r = get(world, world.alice_key, f"/api/v1/servers/{alice_server.id}/metrics/",
            **{"from": start.isoformat(), "to": str(epoch(NOW - dt.timedelta(minutes=10))), "series": "cpu,disk.vda.rd_ops"})
    assert r.status_code == 200, r.content
    body = r.json()
    assert set(body["series"]) == {"cpu", "disk.vda.rd_ops"} and len(body["t"]) == 10
    assert body["series"]["disk.vda.rd_ops"]["avg"][0] == 40.0  # minute 40 of the hour: 60*40 ops / 60 s


def test_another_customers_server_is_a_404_and_the_provider_targets_are_refused(world, alice_server, bob_server):
    seed(bob_server.id, minutes=5)
    for key in (world.alice_key,):
        assert get(world, key, f"/api/v1/servers/{bob_server.id}/metrics/").status_code == 404
        assert get(world, key, "/api/v1/servers/999999/metrics/").status_code == 404
        assert get(world, key, "/api/v1/servers/abc/metrics/").json()["code"] == "not_found"
        for path in ("nodes", "storages", "networks", "ip-pools"):
            r = get(world, key, f"/api/v1/{path}/{world.node.id}/metrics/")
            assert r.status_code in (403, 404), (path, r.status_code)
        assert get(world, key, "/api/v1/metrics/top/").status_code == 403
    assert get(world, world.bob_key, f"/api/v1/servers/{bob_server.id}/metrics/").status_code == 200
    assert get(world, world.billing_key, f"/api/v1/servers/{bob_server.id}/metrics/").status_code == 200
    assert get(world, world.billing_key, f"/api/v1/nodes/{world.node.id}/metrics/").status_code == 403
    assert world.client().get(f"/api/v1/servers/{bob_server.id}/metrics/").status_code == 401


def test_a_browser_session_reads_the_same_graph(world, alice_server):
    seed(alice_server.id, minutes=5)
    client = world.client()
    client.force_login(world.alice)
    r = client.get(f"/api/v1/servers/{alice_server.id}/metrics/", HTTP_ACCEPT="application/json")
    assert r.status_code == 200 and r.json()["series"]["cpu"]["avg"][-1] == 14.0


def test_the_admin_reads_nodes_storages_networks_and_pools(world):
    from nodes.models import Network, Storage
    from panel.ipam.models import IpPool

    store.record([Point("node", world.node.id, {"cpu": 42.0, "running": 3})], NOW - dt.timedelta(minutes=2))
    r = get(world, world.admin_key, f"/api/v1/nodes/{world.node.id}/metrics/", series="cpu,running")
    assert r.status_code == 200 and 42.0 in r.json()["series"]["cpu"]["avg"] and r.json()["events"] == []
    storage = Storage.objects.first()
    assert get(world, world.admin_key, f"/api/v1/storages/{storage.id}/metrics/").status_code == 200
    assert get(world, world.admin_key, "/api/v1/storages/999999/metrics/").status_code == 404
    network = Network.objects.first()
    if network is not None:
        assert get(world, world.admin_key, f"/api/v1/networks/{network.id}/metrics/").status_code == 200
    pool = IpPool.objects.first()
    if pool is not None:
        assert get(world, world.admin_key, f"/api/v1/ip-pools/{pool.id}/metrics/").status_code == 200


@pytest.mark.parametrize("params, field", [
    ({"from": "yesterday"}, "from"),
    ({"to": "2026-13-40"}, "to"),
    ({"from": "-5"}, "from"),
    ({"from": "99999999999999"}, "from"),
    ({"from": NOW.isoformat(), "to": NOW.isoformat()}, "from"),
    ({"from": (NOW + dt.timedelta(hours=1)).isoformat(), "to": NOW.isoformat()}, "from"),
    ({"series": "cpu,nonsense"}, "series"),
    ({"series": "disk.vda.bogus"}, "series"),
    ({"max_points": "9"}, "max_points"),
    ({"max_points": "5001"}, "max_points"),
    ({"max_points": "many"}, "max_points"),
    ({"from": "1970-01-01T00:00:00Z"}, "from"),  # 56 years of days: more than 5,000 buckets
    ({"frm": "2026-01-01"}, "frm"),
])
def test_bad_input_is_a_clear_400_that_changes_nothing(world, alice_server, params, field):
    seed(alice_server.id, minutes=3)
    rows = MetricBucket.objects.count()
    r = get(world, world.alice_key, f"/api/v1/servers/{alice_server.id}/metrics/", **params)
    assert r.status_code == 400, (params, r.content)
    body = r.json()
    assert body["code"] in ("invalid", "unknown_filter") and field in body["fields"] and body["detail"], body
    assert MetricBucket.objects.count() == rows
    csv_answer = get(world, world.alice_key, f"/api/v1/servers/{alice_server.id}/metrics/", format="csv", **params)
    assert csv_answer.status_code == 400 and csv_answer["Content-Type"].startswith("application/json")


def test_csv_has_one_row_per_bucket_with_avg_max_and_the_gaps_reason(world, alice_server):
    seed(alice_server.id, minutes=10, end=NOW - dt.timedelta(minutes=2))
    store.record([Point("server", alice_server.id, gap="node_offline")], NOW - dt.timedelta(minutes=2))
    r = get(world, world.alice_key, f"/api/v1/servers/{alice_server.id}/metrics/", format="csv",
            series="cpu,net_rx", **{"from": str(epoch(NOW - dt.timedelta(minutes=12)))})
    assert r.status_code == 200 and r["Content-Type"].startswith("text/csv")
    assert "attachment" in r["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(r.content.decode())))
    assert rows[0] == ["time", "cpu avg (%)", "cpu max (%)", "net_rx avg (B/s)", "net_rx max (B/s)", "gap"]
    assert len(rows) == 1 + 12
    assert rows[1] == ["2026-03-10T11:48:00Z", "10", "10", "100", "100", ""]
    assert rows[11][-1] == "node_offline" and rows[11][1] == "" and rows[12][-1] == "no_data"


@pytest.mark.parametrize("span, step", [(dt.timedelta(hours=1), 60), (dt.timedelta(hours=24), 60),
                                        (dt.timedelta(days=7), 3600), (dt.timedelta(days=30), 3600),
                                        (dt.timedelta(days=365), 86400)])
def test_the_tier_keeps_a_graph_within_1500_points(world, alice_server, span, step):
    r = get(world, world.admin_key, f"/api/v1/servers/{alice_server.id}/metrics/",
            **{"from": (NOW - span).isoformat()})
    assert r.status_code == 200, r.content
    assert r.json()["step"] == step and len(r.json()["t"]) <= 1500


def test_the_number_of_queries_does_not_grow_with_the_data(world, alice_server):
    client = world.client(world.alice_key)
    path = f"/api/v1/servers/{alice_server.id}/metrics/"
    client.get(path)  # the key's last use is written once
    counts = []
    for minutes in (5, 60):
        seed(alice_server.id, minutes=minutes)
        for i in range(3):
            Operation.objects.create(kind="start", status="succeeded", server=alice_server,
                                     customer=world.alice_customer)
        with CaptureQueriesContext(connection) as ctx:
            assert client.get(path).status_code == 200
        counts.append(len(ctx.captured_queries))
    # The key, its two rate counts, the server, the buckets, its operations, its throttles.
    assert counts[0] == counts[1] and counts[0] <= 7, counts


def test_event_labels_name_no_node_and_quiet_operations_are_left_out(world, alice_server):
    Operation.objects.create(kind="migrate", status="failed", server=alice_server, customer=world.alice_customer,
                             node=world.node, params={"node": world.node.name}, target_repr=world.node.name)
    Operation.objects.create(kind="reset_password", status="succeeded", server=alice_server,
                             customer=world.alice_customer)
    Operation.objects.filter(server=alice_server).update(created_at=NOW - dt.timedelta(minutes=3), started_at=None)
    body = get(world, world.alice_key, f"/api/v1/servers/{alice_server.id}/metrics/").json()
    migrations = [e for e in body["events"] if e["kind"] == "migration"]
    assert migrations and migrations[0]["label"] == "Migrate (failed)"
    assert not any(e["kind"] == "reset_password" for e in body["events"])
    assert world.node.name not in str(body)


def test_top_ranks_servers_by_cpu_traffic_and_iops_for_admins_only(world, alice_server, bob_server):
    settings_tiers = store.tiers()
    assert settings_tiers[0][0] == 60
    seed(alice_server.id, minutes=30, cpu=lambda i: 80)
    seed(bob_server.id, minutes=30, cpu=lambda i: 5)
    store.record([Point("server", bob_server.id, {"net_rx": 10**10}, {"net_rx": 10**10 / 60})],
                 NOW - dt.timedelta(minutes=10))
    base = "/api/v1/metrics/top/"
    params = {"from": (NOW - dt.timedelta(hours=1)).isoformat()}
    with CaptureQueriesContext(connection) as ctx:
        r = get(world, world.admin_key, base, by="cpu", **params)
    assert r.status_code == 200, r.content
    assert [row["server"] for row in r.json()["results"]] == [alice_server.id, bob_server.id]
    assert r.json()["results"][0]["value"] == 80.0 and r.json()["step"] == 60
    assert len([q for q in ctx.captured_queries if "metrics_metricbucket" in q["sql"]]) == 1
    traffic = get(world, world.admin_key, base, by="traffic", **params).json()["results"]
    assert traffic[0]["server"] == bob_server.id and traffic[0]["value"] > 10**10
    iops = get(world, world.admin_key, base, by="iops", limit="1", **params).json()["results"]
    assert len(iops) == 1 and iops[0]["unit"] == "op/s"
    assert get(world, world.admin_key, base, by="ram").status_code == 400
    assert get(world, world.admin_key, base, limit="0").status_code == 400
    assert get(world, world.billing_key, base).status_code == 403
    assert get(world, world.bob_key, base).status_code == 403


def test_the_pages_carry_the_graphs_card_and_a_customer_sees_no_node_in_it(world, alice_server):
    from django.test import Client

    from nodes.models import Storage

    alice = Client()
    alice.force_login(world.alice)
    page = alice.get(f"/servers/{alice_server.id}/").content.decode()
    assert f'id="metrics-server-{alice_server.id}"' in page
    assert f'data-metrics-url="/api/v1/servers/{alice_server.id}/metrics/"' in page and "uplot/uPlot.iife.min.js" in page
    card = page[page.index('id="metrics-server-'):page.index("</section>", page.index('id="metrics-server-'))]
    assert world.node.name not in card
    admin = Client()
    admin.force_login(world.admin)
    assert f'id="metrics-node-{world.node.id}"' in admin.get(f"/admin/nodes/{world.node.id}/").content.decode()
    storage = Storage.objects.first()
    cluster_page = admin.get(f"/admin/clusters/{storage.cluster_id}/").content.decode()
    assert f'id="metrics-storage-{storage.id}"' in cluster_page

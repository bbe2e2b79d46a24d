"""/metrics (panel/metrics/prometheus.py, exporter.py) on the suite's MariaDB: who may scrape, that
the figures are the store's and the usage totals', that counters never go down across a reboot
and a migration, the query count of a 1,000-server scrape, and the shipped Prometheus files
checked with the real promtool."""

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from nodes.connection import driver_for
from panel.metrics import prometheus, store
from panel.metrics.store import Point
from panel.usage import collector as usage
from panel.usage.models import UsageTotal
from tests.conftest import fake_node

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy/prometheus/panel_rules.yml"
DASHBOARD = ROOT / "deploy/prometheus/grafana-panel.json"
TOKEN = "s3cret-metrics-token"
T0 = dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(autouse=True)
def clock(monkeypatch, settings):
    """The store's and the usage collector's clocks stand still at NOW['at']; a token is set."""
    now = {"at": T0 + dt.timedelta(seconds=30)}
    monkeypatch.setattr(store, "clock", lambda: now["at"])
    monkeypatch.setattr(usage, "clock", lambda: now["at"])
    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_ALLOW_FROM = []
    return now


def scrape(token: str | None = TOKEN, **extra) -> str:
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
    r = Client().get("/metrics", **headers, **extra)
    assert r.status_code == 200, (r.status_code, r.content[:300])
    return r.content.decode()


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(text_or_samples, name: str, **labels) -> float | None:
    found = text_or_samples if isinstance(text_or_samples, dict) else samples(text_or_samples)
    matches = [v for (n, ls), v in found.items() if n == name and set(labels.items()) <= ls]
    assert len(matches) <= 1, (name, labels, matches)
    return matches[0] if matches else None


def server_labels(server) -> dict:
    return {"server_id": str(server.id), "server": server.hostname, "uuid": str(server.uuid)}


# -- access -------------------------------------------------------------------------------------

def test_it_is_404_while_neither_a_token_nor_an_address_list_is_set(settings):
    settings.METRICS_TOKEN = ""
    assert Client().get("/metrics").status_code == 404
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer anything").status_code == 404


def test_it_answers_401_without_the_token_and_200_with_it():
    client = Client()
    for headers in ({}, {"HTTP_AUTHORIZATION": "Bearer wrong"}, {"HTTP_AUTHORIZATION": f"Token {TOKEN}"},
                    {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}x"}, {"HTTP_AUTHORIZATION": "Bearer"}):
        r = client.get("/metrics", **headers)
        assert r.status_code == 401 and r["WWW-Authenticate"].startswith("Bearer"), headers
        assert b"panel_" not in r.content
    r = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert r.status_code == 200 and r["Content-Type"].startswith("text/plain; version=0.0.4")
    assert client.post("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 405


def test_an_address_in_the_list_scrapes_without_a_token(settings):
    settings.METRICS_ALLOW_FROM = ["10.9.0.0/16", "::1"]
    assert Client(REMOTE_ADDR="10.9.3.4").get("/metrics").status_code == 200
    assert Client(REMOTE_ADDR="::1").get("/metrics").status_code == 200
    assert Client(REMOTE_ADDR="10.8.3.4").get("/metrics").status_code == 401  # a token is set: 401
    settings.METRICS_TOKEN = ""
    assert Client(REMOTE_ADDR="10.9.3.4").get("/metrics").status_code == 200
    assert Client(REMOTE_ADDR="10.8.3.4").get("/metrics").status_code == 404  # the list alone: nothing to see


def test_behind_the_trusted_proxy_the_list_is_checked_against_the_client(settings):
    settings.METRICS_ALLOW_FROM = ["10.9.0.0/16"]
    settings.TRUSTED_PROXY = True
    proxied = Client(REMOTE_ADDR="127.0.0.1")
    assert proxied.get("/metrics", HTTP_X_FORWARDED_FOR="10.9.0.7").status_code == 200
    assert proxied.get("/metrics", HTTP_X_FORWARDED_FOR="203.0.113.9").status_code == 401
    # The proxy's own address is not in the list; a forged left-most hop is not believed.
    assert proxied.get("/metrics", HTTP_X_FORWARDED_FOR="10.9.0.7, 203.0.113.9").status_code == 401


def test_a_bad_address_list_is_a_system_check_error(settings):
    settings.METRICS_ALLOW_FROM = ["10.0.0.0/8", "not-a-network"]
    errors = prometheus.check_settings()
    assert [e.id for e in errors] == ["metrics.E001"] and "not-a-network" in errors[0].msg
    settings.METRICS_ALLOW_FROM = ["10.0.0.0/8"]
    assert prometheus.check_settings() == []


def test_no_customer_data_or_secret_is_exported(world, alice_server):
    text = scrape()
    assert alice_server.hostname in text
    for secret in (alice_server.vnc_password, world.alice_customer.email, world.alice_customer.name, TOKEN,
                   world.alice_customer.external_id):
        assert secret not in text


# -- figures from the store ---------------------------------------------------------------------

def test_gauges_are_the_newest_buckets_averages_and_rates(world, alice_server, clock):
    node, storage = world.node, world.node.cluster.storages.get()
    minute = T0 - dt.timedelta(minutes=1)
    store.record([Point("server", alice_server.id, {"cpu": 50.0}, {})], minute)  # older: not shown
    store.record([
        Point("server", alice_server.id, {"cpu": 20.0, "steal": 3.0, "net_rx": 6000, "disk.vda.wr_bytes": 1200,
                                          "disk.vda.alloc": 5 * 2**30, "fs./srv/a.b.used": 700},
              {"net_rx": 100.0, "disk.vda.wr_bytes": 20.0}),
        Point("node", node.id, {"cpu": 35.0, "mem_avail": 4 * 2**30, "mem_total": 16 * 2**30, "running": 1}),
        Point("storage", storage.id, {"capacity": 1000, "used": 860, "committed": 1500}),
    ], T0)
    store.record([Point("server", alice_server.id, {"cpu": 40.0, "net_rx": 1200}, {"net_rx": 40.0})],
                 T0 + dt.timedelta(seconds=20))  # a second sample in the minute: merged
    found = samples(scrape())
    labels = server_labels(alice_server)
    assert value(found, "panel_server_cpu_percent", **labels) == 30.0  # (20 + 40) / 2
    assert value(found, "panel_server_cpu_peak_percent", **labels) == 40.0
    assert value(found, "panel_server_vcpu_wait_percent", **labels) == 3.0
    assert value(found, "panel_server_network_receive_bytes_per_second", **labels) == 7200 / 60
    assert value(found, "panel_server_disk_write_bytes_per_second", device="vda", **labels) == 20.0
    assert value(found, "panel_server_disk_allocation_bytes", device="vda", **labels) == 5 * 2**30
    assert value(found, "panel_server_filesystem_used_bytes", mountpoint="/srv/a.b", **labels) == 700
    assert value(found, "panel_server_memory_used_bytes", **labels) is None  # not reported: absent, never 0
    assert value(found, "panel_server_info", node=node.name, state="running", **labels) == 1
    assert value(found, "panel_node_cpu_percent", node=node.name) == 35.0
    assert value(found, "panel_node_memory_available_bytes", node=node.name) == 4 * 2**30
    assert value(found, "panel_node_state", node=node.name, state="online") == 1
    assert value(found, "panel_node_state", node=node.name, state="offline") == 0
    assert value(found, "panel_storage_used_bytes", cluster="c1", storage=storage.name) == 860
    assert value(found, "panel_storage_committed_bytes", cluster="c1", storage=storage.name) == 1500


def test_a_server_whose_newest_bucket_is_a_gap_or_old_has_no_gauges(world, alice_server, clock):
    store.record([Point("server", alice_server.id, {"cpu": 20.0})], T0 - dt.timedelta(minutes=1))
    store.record([Point("server", alice_server.id, gap="stopped")], T0)
    assert value(scrape(), "panel_server_cpu_percent", **server_labels(alice_server)) is None
    store.record([Point("server", alice_server.id, {"cpu": 20.0})], T0)
    assert value(scrape(), "panel_server_cpu_percent", **server_labels(alice_server)) == 20.0
    clock["at"] = T0 + dt.timedelta(minutes=10)  # the collector stopped: stale figures are not shown
    assert value(scrape(), "panel_server_cpu_percent", **server_labels(alice_server)) is None


def test_pools_and_networks_are_labelled_by_name(world, clock):
    from nodes.models import Network
    from panel.ipam.models import IpPool

    network = Network.objects.create(cluster=world.node.cluster, name="public", bridge="br0", interface="eth0")
    pool = IpPool.objects.create(name="v4-main", network=network, cidr="203.0.113.0/24")
    store.record([Point("pool", pool.id, {"used": 12, "free": 240}),
                  Point("network", network.id, {"net_tx": 6000}, {"net_tx": 100.0})], T0)
    found = samples(scrape())
    assert value(found, "panel_ip_pool_addresses_used", pool="v4-main") == 12
    assert value(found, "panel_ip_pool_addresses_free", pool="v4-main") == 240
    assert value(found, "panel_network_transmit_bytes_per_second", cluster="c1", network="public") == 100.0


def test_collector_freshness_per_node_from_the_collector_else_from_the_buckets(world, monkeypatch, clock):
    from panel.metrics import collector

    other = fake_node("fake2")
    monkeypatch.setattr(collector, "freshness", lambda: {world.node.id: T0 - dt.timedelta(seconds=45),
                                                          other.id: None})
    found = samples(scrape())
    assert value(found, "panel_collector_last_read_age_seconds", node="fake1") == 75.0  # now is T0 + 30 s
    assert value(found, "panel_collector_last_read_timestamp_seconds", node="fake1") == (T0 - dt.timedelta(
        seconds=45)).timestamp()
    assert value(found, "panel_collector_last_read_age_seconds", node="fake2") == float("inf")  # never read
    # Without the collector's record: the newest node bucket with data.
    monkeypatch.setitem(sys.modules, "panel.metrics.collector", None)  # import → ImportError
    store.record([Point("node", other.id, {"cpu": 1.0})], T0 - dt.timedelta(minutes=3))
    store.record([Point("node", other.id, gap="node_offline")], T0 - dt.timedelta(minutes=1))
    found = samples(scrape())
    assert value(found, "panel_collector_last_read_age_seconds", node="fake2") == 210.0
    assert value(found, "panel_collector_last_read_age_seconds", node="fake1") == float("inf")


# -- counters that never go down ----------------------------------------------------------------

def test_counters_are_the_usage_totals_and_never_go_down_across_a_reboot_and_a_migration(world, alice_server,
                                                                                          clock):
    labels = server_labels(alice_server)
    seen = []

    def step(minute, **counters):
        alice_server.refresh_from_db()
        driver_for(alice_server.node.uri).set_counters(alice_server.domain_name, **counters)
        clock["at"] = T0 + dt.timedelta(minutes=minute)
        usage.collect_all()
        found = samples(scrape())
        seen.append({name: value(found, f"panel_server_{name}_total", **labels)
                     for name in ("network_receive_bytes", "cpu_seconds", "disk_read_bytes")})
        total = UsageTotal.objects.get(server=alice_server)
        assert seen[-1] == {"network_receive_bytes": total.rx_bytes, "cpu_seconds": total.cpu_ns / 1e9,
                            "disk_read_bytes": total.read_bytes}

    step(0, rx_bytes=100, cpu_ns=2 * 10**9, read_bytes=1000)
    step(1, rx_bytes=250, cpu_ns=3 * 10**9, read_bytes=1500)
    admin = world.client(world.admin_key)
    r = admin.post(f"/api/v1/servers/{alice_server.id}/reboot/", {}, format="json")
    assert r.data["status"] == "succeeded", r.data
    step(2, rx_bytes=30, cpu_ns=1 * 10**9, read_bytes=10)  # QEMU counts from zero again
    other = fake_node("fake2")
    r = admin.post(f"/api/v1/servers/{alice_server.id}/migrate/", {"node": other.id}, format="json")
    assert r.data["status"] == "succeeded", r.data
    step(3, rx_bytes=5, cpu_ns=10**8, read_bytes=1)  # a new QEMU on the destination
    step(4, rx_bytes=80, cpu_ns=5 * 10**8, read_bytes=20)
    for name in seen[0]:
        series = [entry[name] for entry in seen]
        assert series == sorted(series), (name, series)
    assert seen[-1]["network_receive_bytes"] == 250 + 30 + 80
    found = samples(scrape())
    assert value(found, "panel_server_info", node="fake2", **labels) == 1  # where it runs: not a counter label


# -- operations, queue, process counters ----------------------------------------------------------

def test_operations_by_kind_and_status_and_the_queue(world, clock):
    from django_q.models import OrmQ

    from panel.vps.models import Operation

    for kind, status, n in (("start", "succeeded", 3), ("start", "failed", 1), ("backup", "queued", 2),
                            ("migrate", "running", 1)):
        Operation.objects.bulk_create(Operation(kind=kind, status=status) for _ in range(n))
    Operation.objects.filter(status="queued").update(created_at=T0 - dt.timedelta(minutes=5))
    OrmQ.objects.create(key="panel", payload="x", lock=T0 - dt.timedelta(seconds=90))
    OrmQ.objects.create(key="panel", payload="y", lock=T0)
    OrmQ.objects.create(key="panel", payload="z", lock=T0 + dt.timedelta(hours=1))  # taken by a worker
    found = samples(scrape())
    assert value(found, "panel_operations_total", kind="start", status="succeeded") == 3
    assert value(found, "panel_operations_total", kind="start", status="failed") == 1
    assert value(found, "panel_operations_active", kind="backup", status="queued") == 2
    assert value(found, "panel_operations_active", kind="migrate", status="running") == 1
    assert value(found, "panel_operations_active", kind="reboot", status="queued") == 0
    assert value(found, "panel_operations_oldest_queued_age_seconds") == 330
    assert value(found, "panel_queue_tasks", state="waiting") == 2
    assert value(found, "panel_queue_tasks", state="taken") == 1
    assert value(found, "panel_queue_oldest_task_age_seconds") == 120


def own(name: str, **labels) -> float:
    """This process's own count (the default registry reads this process's file only: other
    test processes share the multiprocess folder)."""
    return REGISTRY.get_sample_value(name, labels) or 0


def test_every_answer_is_counted_by_method_and_status(world):
    before = (own("panel_http_requests_total", method="GET", status="401"),
              own("panel_http_requests_total", method="other", status="405"),
              own("panel_http_request_duration_seconds_count", method="GET"))
    client = Client()
    for _ in range(7):
        assert client.get("/api/v1/servers/").status_code == 401
    assert client.generic("BREW", "/metrics").status_code == 405  # an unknown method: "other"
    after = (own("panel_http_requests_total", method="GET", status="401"),
             own("panel_http_requests_total", method="other", status="405"),
             own("panel_http_request_duration_seconds_count", method="GET"))
    assert (after[0] - before[0], after[1] - before[1], after[2] - before[2]) == (7, 1, 7)


def test_the_workers_tasks_are_counted_when_the_cluster_reports_them():
    from django_q.signals import post_execute

    before = own("panel_worker_tasks_total", task="panel.jobs.run_operation", result="failure")
    started = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    post_execute.send(sender="django_q", task={"func": "panel.jobs.run_operation", "success": False,
                                               "started": started, "stopped": started + dt.timedelta(seconds=2)})
    assert own("panel_worker_tasks_total", task="panel.jobs.run_operation", result="failure") - before == 1


def test_start_up_removes_the_files_of_gone_processes_only(tmp_path):
    tmp_path = tmp_path / "prometheus"
    tmp_path.mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    for name in (f"counter_{dead_pid}.db", f"histogram_{dead_pid}.db", f"counter_{os.getpid()}.db", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert prometheus.clear_gone_processes(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"counter_{os.getpid()}.db", "notes.txt"]


# -- a 1,000-server scrape -----------------------------------------------------------------------

def seed_servers(world, count: int) -> list[int]:
    from panel.vps.models import ServerState, VirtualServer

    existing = set(VirtualServer.objects.values_list("id", flat=True))
    VirtualServer.objects.bulk_create(
        VirtualServer(customer=world.alice_customer, plan=world.plan, node=world.node, hostname=f"s{i}.example.com",
                      uuid=uuid.uuid4(), state=ServerState.RUNNING, vcpus=1, ram_mib=512, disk_gib=10)
        for i in range(count))
    ids = [pk for pk in VirtualServer.objects.values_list("id", flat=True) if pk not in existing]
    UsageTotal.objects.bulk_create(UsageTotal(server_id=i, rx_bytes=i * 10, cpu_ns=i) for i in ids)
    points = [Point("server", i, {"cpu": 5.0, "steal": 1.0, "mem_used": 2**28, "mem_total": 2**29, "net_rx": 600,
                                  "net_tx": 60, "disk.vda.rd_ops": 120, "disk.vda.alloc": 2**30},
                    {"net_rx": 10.0, "net_tx": 1.0, "disk.vda.rd_ops": 2.0}) for i in ids]
    store.record(points, T0 - dt.timedelta(minutes=1))
    store.record(points, T0)
    return ids


def test_a_scrape_of_1000_servers_takes_a_few_queries_whatever_their_number(world):
    from panel.vps.models import VirtualServer

    seed_servers(world, 10)
    with CaptureQueriesContext(connection) as small:
        scrape()
    ids = seed_servers(world, 990)
    with CaptureQueriesContext(connection) as large:
        text = scrape()
    assert VirtualServer.objects.count() == 1000
    assert len(large.captured_queries) == len(small.captured_queries) <= 16, [q["sql"][:120] for q in
                                                                             large.captured_queries]
    found = samples(text)
    assert sum(1 for (name, _), _v in found.items() if name == "panel_server_cpu_percent") == 1000
    assert value(found, "panel_server_network_receive_bytes_total", server_id=str(ids[-1])) == ids[-1] * 10


# -- the shipped Prometheus files, checked with promtool ------------------------------------------

def promtool() -> str:
    path = shutil.which("promtool")
    if not path:
        pytest.fail("promtool is missing (Debian's prometheus package: tests/infra/install_deps.sh)")
    return path


def test_a_real_scrape_passes_promtool_check_metrics(world, alice_server):
    store.record([Point("server", alice_server.id, {"cpu": 20.0, "disk.vda.rd_bytes": 60}, {"disk.vda.rd_bytes": 1}),
                  Point("node", world.node.id, {"cpu": 3.0})], T0)
    Client().get("/api/v1/servers/")  # at least one request counted
    text = scrape()
    out = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), out.stdout + out.stderr
    broken = text + "# HELP panel_broken_seconds A counter without _total.\n# TYPE panel_broken_seconds counter\n" \
                    "panel_broken_seconds 1\n"
    out = subprocess.run([promtool(), "check", "metrics"], input=broken, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "panel_broken_seconds" in out.stdout + out.stderr


def test_the_alert_rules_pass_promtool_check_rules(tmp_path):
    out = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"SUCCESS: (\d+) rules found", out.stdout) and int(
        re.search(r"SUCCESS: (\d+) rules found", out.stdout).group(1)) >= 9
    broken = tmp_path / "broken.yml"
    broken.write_text(RULES.read_text().replace("panel_storage_used_bytes", "panel_storage_used_bytes{", 1))
    out = subprocess.run([promtool(), "check", "rules", str(broken)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0


def test_the_alert_rules_fire_on_test_series_with_promtool_test_rules(tmp_path):
    """promtool's own unit-test runner: a storage 96 % full fires the critical alert, a node
    nobody read for 10 minutes fires the stale one, a linear fill is forecast full within 7 days."""
    tests = tmp_path / "rules_test.yml"
    tests.write_text(json.dumps({
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                {"series": 'panel_storage_capacity_bytes{cluster="c1",storage="disks"}', "values": "1000x30"},
                {"series": 'panel_storage_used_bytes{cluster="c1",storage="disks"}', "values": "960x30"},
                {"series": 'panel_storage_capacity_bytes{cluster="c1",storage="slow"}', "values": "1000000x400"},
                {"series": 'panel_storage_used_bytes{cluster="c1",storage="slow"}', "values": "100000+100x400"},
                {"series": 'panel_collector_last_read_age_seconds{node="n1"}', "values": "600x30"},
                {"series": 'panel_node_state{node="n1",state="offline"}', "values": "0x30"},
            ],
            "alert_rule_test": [
                {"eval_time": "20m", "alertname": "PanelStorageFull95",
                 "exp_alerts": [{"exp_labels": {"severity": "critical", "cluster": "c1", "storage": "disks"},
                                 "exp_annotations": alerts_annotations("PanelStorageFull95", cluster="c1",
                                                                       storage="disks", value="96")}]},
                {"eval_time": "20m", "alertname": "PanelCollectorStale",
                 "exp_alerts": [{"exp_labels": {"severity": "warning", "node": "n1"},
                                 "exp_annotations": alerts_annotations("PanelCollectorStale", node="n1",
                                                                       value="600")}]},
                {"eval_time": "20m", "alertname": "PanelNodeOffline", "exp_alerts": []},
                {"eval_time": "20m", "alertname": "PanelStorageFullIn7Days", "exp_alerts": []},  # not an hour yet
                {"eval_time": "180m", "alertname": "PanelStorageFullIn7Days",
                 "exp_alerts": [{"exp_labels": {"severity": "warning", "cluster": "c1", "storage": "slow"},
                                 "exp_annotations": alerts_annotations("PanelStorageFullIn7Days", cluster="c1",
                                                                       storage="slow")}]},
            ],
        }],
    }))
    out = subprocess.run([promtool(), "test", "rules", str(tests)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def alerts_annotations(alert: str, **values) -> dict:
    """The annotations of `alert` in the rules file with its templates filled in (the few the
    rules use: $labels.x and $value with humanize)."""
    import yaml

    rules = {r["alert"]: r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r}
    out = {}
    for key, text in rules[alert].get("annotations", {}).items():
        text = re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", lambda m: values[m.group(1)], text)
        text = re.sub(r"\{\{\s*\$value[^}]*\}\}", lambda _m: values["value"], text)
        out[key] = text
    return out


def exporter_names(world, alice_server) -> set[str]:
    """Every metric name a scrape can have, as PromQL sees them (samples' names: a counter's with
    _total, a histogram's _bucket, _sum and _count)."""
    store.record([Point("server", alice_server.id, {
        name: 1.0 for name in ("cpu", "steal", "mem_used", "mem_total", "net_rx", "net_tx", "net_rx_pkts",
                               "net_tx_pkts", "disk.vda.rd_bytes", "disk.vda.wr_bytes", "disk.vda.rd_ops",
                               "disk.vda.wr_ops", "disk.vda.alloc", "fs./.used", "fs./.size")})], T0)
    Client().get("/api/v1/servers/")
    from django_q.signals import post_execute

    post_execute.send(sender="django_q", task={"func": "x.y", "success": True})
    names = {s.name for family in text_string_to_metric_families(scrape()) for s in family.samples}
    from panel.metrics import exporter

    for catalogue in (exporter.NODE_GAUGES, exporter.STORAGE_GAUGES, exporter.NETWORK_GAUGES, exporter.POOL_GAUGES):
        names |= {metric for _series, metric, _text, _scale in catalogue}  # no buckets seeded for these here
    return names


def expressions(node) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "expr" and isinstance(v, str)] + [
            e for k, v in node.items() for e in expressions(v)]
    if isinstance(node, list):
        return [e for item in node for e in expressions(item)]
    return []


def unknown_metrics(exprs: list[str], names: set[str]) -> list[str]:
    return sorted({name for expr in exprs for name in re.findall(r"\bpanel_[a-z0-9_]+", expr) if name not in names})


def test_the_dashboard_and_the_rules_use_only_metrics_the_exporter_has(world, alice_server):
    import yaml

    names = exporter_names(world, alice_server)
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["panels"] and dashboard.get("uid")
    panel_exprs = expressions(dashboard["panels"])
    assert len(panel_exprs) >= 10 and all(re.search(r"\bpanel_", e) for e in panel_exprs)
    template_queries = [v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
                        for v in dashboard["templating"]["list"] if v.get("type") == "query"]
    rule_exprs = [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    assert unknown_metrics(panel_exprs + template_queries + rule_exprs, names) == []
    assert unknown_metrics(["rate(panel_server_cpu_seconds[5m])"], names) == ["panel_server_cpu_seconds"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_it_speaks_openmetrics_and_gzip_when_the_scraper_asks(world, alice_server):
    import gzip

    from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families

    r = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}", HTTP_ACCEPT_ENCODING="gzip",
                     HTTP_ACCEPT="application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")
    assert r.status_code == 200 and r["Content-Encoding"] == "gzip"
    assert r["Content-Type"].startswith("application/openmetrics-text")
    text = gzip.decompress(r.content).decode()
    families = {family.name: family for family in openmetrics_families(text)}  # raises on a malformed exposition
    assert families["panel_server_info"].samples[0].labels["server"] == alice_server.hostname
    assert families["panel_server_network_receive_bytes"].type == "counter"

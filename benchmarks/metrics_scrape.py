#!/usr/bin/env python
"""/metrics scrape: Prometheus' GET /metrics with 1,000 servers on MariaDB, two web processes.

Figure: "a `/metrics` scrape with 1,000 servers (goal ≤ 1 s)", as a ratio to the floor.

A live panel (own MariaDB database, `runpanel --no-worker` with two daphne processes, no worker,
METRICS_TOKEN set) is seeded in this process through the Django ORM: --servers running servers
on the local node with their usage totals and two minutes of monitoring buckets (CPU, vCPU wait,
memory, network, two disks), the node, its storage and networks. Then:

  1. scrape   GET /metrics with the bearer token, one at a time, as Prometheus does (gzip,
              the text format), --scrapes times after one unrecorded scrape;
  2. floor    the scrape's own SQL (captured from Django in this process: the same statements
              reading the same rows) run through MySQLdb on one persistent connection, rows
              fetched, nothing else;
  3. queries  how many statements one scrape runs (the same for any number of servers).

    .venv/bin/python benchmarks/metrics_scrape.py [--servers 1000] [--scrapes 20] [--tiny]
"""

import argparse
import datetime as dt
import os
import secrets
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import requests  # noqa: E402

from benchmarks.live import live_panel, parse_args, summary  # noqa: E402

GOAL_S = 1.0


def setup_django(panel) -> None:
    """Point this process's Django at the live panel's database."""
    for name in ("DATABASE_URL", "PANEL_DATA_DIR", "PANEL_INSTANCE_ID", "TINY_GUEST_DIR", "METRICS_TOKEN"):
        os.environ[name] = panel.env[name]
    os.environ["DJANGO_SETTINGS_MODULE"] = "panel.settings"
    import django

    django.setup()


def seed(servers: int, now: dt.datetime | None = None) -> dict:
    """`servers` running servers on the local node (or a node made for them) with usage totals
    and their last two minutes of buckets, plus the node's, its storage's and networks'. Needs
    Django set up (also run by tests/e2e/test_prometheus.py through `manage.py shell`)."""
    import uuid

    from django.utils import timezone

    from nodes.models import Cluster, Network, Node, Storage
    from panel.accounts.models import Customer
    from panel.metrics import store
    from panel.metrics.store import Point
    from panel.usage.models import UsageTotal
    from panel.vps.models import Plan, ServerState, VirtualServer

    now = now or timezone.now()
    node = Node.objects.filter(name="local").first() or Node.objects.create(
        name="bench-node", uri="fake://bench-node", storage_dir="/var/lib/panel-bench", cpus=32, ram_mib=262144)
    cluster = node.cluster or Cluster.objects.get_or_create(name="bench")[0]
    storage = Storage.objects.filter(cluster=cluster).first() or Storage.objects.create(
        cluster=cluster, name="bench", path="/var/lib/panel-bench")
    network = Network.objects.filter(cluster=cluster).first() or Network.objects.create(
        cluster=cluster, name="bench", bridge="brbench", interface="eth0")
    plan = Plan.objects.create(name=f"bench-{secrets.token_hex(3)}", vcpus=2, ram_mib=2048, disk_gib=20)
    customer = Customer.objects.create(name="Bench", email="bench@example.com", external_id=f"bench-{secrets.token_hex(3)}")
    before = set(VirtualServer.objects.values_list("id", flat=True))
    VirtualServer.objects.bulk_create(
        (VirtualServer(customer=customer, plan=plan, node=node, storage=storage, hostname=f"vm{i:05d}.example.com",
                       uuid=uuid.uuid4(), state=ServerState.RUNNING, vcpus=2, ram_mib=2048, disk_gib=20)
         for i in range(servers)), batch_size=1000)
    ids = [pk for pk in VirtualServer.objects.values_list("id", flat=True) if pk not in before]
    UsageTotal.objects.bulk_create((UsageTotal(server_id=pk, rx_bytes=pk * 10**6, tx_bytes=pk * 10**5,
                                               cpu_ns=pk * 10**9, read_bytes=pk * 4096, write_bytes=pk * 8192,
                                               uptime_seconds=3600) for pk in ids), batch_size=1000)
    for minute in (2, 1):
        at = now - dt.timedelta(minutes=minute)
        points = [Point("server", pk, {"cpu": 12.5, "steal": 0.5, "cpu_ns": 15 * 10**9, "mem_used": 2**30,
                                       "mem_total": 2**31, "net_rx": 6 * 10**6, "net_tx": 6 * 10**5,
                                       "net_rx_pkts": 6000, "net_tx_pkts": 600,
                                       **{f"disk.{dev}.{name}": 6000 for dev in ("vda", "vdb")
                                          for name in ("rd_bytes", "wr_bytes", "rd_ops", "wr_ops")},
                                       "disk.vda.alloc": 3 * 2**30, "disk.vdb.alloc": 2**30},
                        {"net_rx": 10**5, "net_tx": 10**4, "net_rx_pkts": 100, "net_tx_pkts": 10, "cpu_ns": 2.5e8,
                         **{f"disk.{dev}.{name}": 100 for dev in ("vda", "vdb")
                            for name in ("rd_bytes", "wr_bytes", "rd_ops", "wr_ops")}})
                  for pk in ids]
        points += [Point("node", node.id, {"cpu": 40.0, "iowait": 2.0, "mem_avail": 2**36, "mem_total": 2**38,
                                           "running": servers, "vcpus_committed": 2 * servers, "vcpus_physical": 32,
                                           "ram_committed": servers * 2**31, "ram_physical": 2**38}),
                   Point("storage", storage.id, {"capacity": 2**42, "used": 2**41, "committed": 2**43}),
                   Point("network", network.id, {"net_rx": 6 * 10**9, "net_tx": 6 * 10**8},
                         {"net_rx": 10**8, "net_tx": 10**7})]
        store.record(points, at)
    return {"servers": len(ids), "node": node.name}


def scrape_sql(token: str) -> tuple[list[str], int]:
    """The statements one scrape runs (in-process, Django's test client) and its body size."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
    with CaptureQueriesContext(connection) as ctx:
        r = client.get("/metrics")
    assert r.status_code == 200, r.content[:300]
    return [q["sql"] for q in ctx.captured_queries], len(r.content)


def floor_runner(database: str, statements: list[str]):
    import MySQLdb

    conn = MySQLdb.connect(user="root", db=database, charset="utf8mb4",
                           unix_socket=os.environ.get("MYSQL_SOCKET", "/run/mysqld/mysqld.sock"))
    conn.autocommit(True)
    cur = conn.cursor()

    def one() -> int:
        rows = 0
        for sql in statements:
            cur.execute(sql)
            rows += len(cur.fetchall())
        return rows

    return one, conn


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--servers", type=int, default=1000)
    ap.add_argument("--scrapes", type=int, default=20, help="scrapes timed (default 20), and as many floor runs")
    ap.add_argument("--web-processes", type=int, default=2)
    args = parse_args(ap, tiny={"servers": 20, "scrapes": 3})
    token = secrets.token_urlsafe(24)
    env = {"METRICS_TOKEN": token, "WEB_PROCESSES": str(args.web_processes),
           # No NAT network for the local node: nothing here boots a guest.
           "LOCAL_NAT_CIDR": "", "BIND": "127.0.0.1"}
    with live_panel(worker=False, env=env, tag="benchms") as panel:
        setup_django(panel)
        t = time.perf_counter()
        seeded = seed(args.servers)
        print(f"seeded {seeded['servers']} servers on node {seeded['node']} in {time.perf_counter() - t:.1f} s",
              flush=True)
        statements, body = scrape_sql(token)
        session = requests.Session()
        session.headers.update({"Authorization": f"Bearer {token}", "Accept-Encoding": "gzip",
                                "Accept": "text/plain;version=0.0.4;q=1,*/*;q=0.1"})
        lat, wire = [], 0
        for i in range(args.scrapes + 1):
            t0 = time.perf_counter()
            r = session.get(panel.url + "/metrics", timeout=60)
            ms = (time.perf_counter() - t0) * 1000
            assert r.status_code == 200 and "panel_server_cpu_percent" in r.text, r.status_code
            wire = int(r.headers.get("Content-Length") or 0)
            if i:
                lat.append(ms)
        series = sum(1 for line in r.text.splitlines() if line and not line.startswith("#"))
        database = panel.env["DATABASE_URL"].rsplit("/", 1)[1]
        one, conn = floor_runner(database, statements)
        rows = one()  # warm
        floor = []
        for _ in range(args.scrapes):
            t0 = time.perf_counter()
            one()
            floor.append((time.perf_counter() - t0) * 1000)
        conn.close()
        from django.db import connections

        connections.close_all()

    scrape, raw = summary(lat), summary(floor)
    print()
    print(f"GET /metrics with {seeded['servers']} servers ({args.web_processes} web processes, MariaDB, bearer "
          f"token, gzip, one scrape at a time, n={scrape['n']})")
    print(f"  scrape  p50 {scrape['p50']:8.1f}  p95 {scrape['p95']:8.1f}  max {scrape['max']:8.1f} ms   "
          f"{series} samples, {body / 1e6:.2f} MB of text, {wire / 1e6:.2f} MB gzipped")
    print(f"  floor   p50 {raw['p50']:8.1f}  p95 {raw['p95']:8.1f}  max {raw['max']:8.1f} ms   "
          f"(the scrape's {len(statements)} SQL statements through MySQLdb, {rows} rows fetched)")
    print(f"  ratio scrape/floor   p50 {scrape['p50'] / raw['p50']:6.1f}×   p95 {scrape['p95'] / raw['p95']:6.1f}×")
    print(f"  goal ≤ {GOAL_S:.0f} s: {'MET' if scrape['p95'] <= GOAL_S * 1000 else 'NOT MET'} "
          f"(p95 {scrape['p95']:.1f} ms);  machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    for sql in statements:
        print(f"    {sql[:150]}{'…' if len(sql) > 150 else ''}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; cleaned up", file=sys.stderr)
        sys.exit(130)

#!/usr/bin/env python
"""A 30-day graph of one server with 1,000 servers at full retention on MariaDB.

Figure: "`GET /api/v1/servers/{id}/metrics/?from=<30 days ago>` with 1,000 servers at full
retention: p95 ≤ 100 ms", as a ratio to the raw SQL floor, and the rows it reads.

A live panel (own MariaDB database, daphne; no worker) gets its buckets straight from bulk
INSERTs (MySQLdb, 2,000 rows a statement): every tier of settings.METRICS_TIERS for every server
over its whole retention (1 min for 48 h, 5 min for 35 d, 1 h for 400 d, 1 d for 5 y by default:
24,385 rows a server), each row carrying a server's 14 series. Then:

  1. api     one client (requests.Session, admin key) GETs the 30-day graph of one server
             --requests times, after a warm-up;
  2. floor   the graph's own SELECT (captured from Django in this process) run directly through
             MySQLdb, one persistent connection, as often;
  3. rows    MariaDB's Handler_read_* counters around one floor SELECT: the rows it touched.

    .venv/bin/python benchmarks/metrics_graph.py [--servers 1000] [--cap 0] [--requests 200] [--tiny]
"""

import argparse
import datetime as dt
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import requests  # noqa: E402

from benchmarks.live import live_panel, own_nat_range, parse_args, summary  # noqa: E402

GOAL_P95_MS = 100.0
BATCH = 2000
COMMIT_EVERY = 50 * BATCH
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def setup_django(panel) -> None:
    for name in ("DATABASE_URL", "PANEL_DATA_DIR", "PANEL_INSTANCE_ID", "TINY_GUEST_DIR"):
        os.environ[name] = panel.env[name]
    os.environ["DJANGO_SETTINGS_MODULE"] = "panel.settings"
    import django

    django.setup()


def connect(database: str):
    import MySQLdb

    conn = MySQLdb.connect(user="root", db=database, charset="utf8mb4",
                           unix_socket=os.environ.get("MYSQL_SOCKET", "/run/mysqld/mysqld.sock"))
    conn.autocommit(True)
    return conn


def payload(rng: random.Random, step: int) -> str:
    """One bucket of a server's 14 series as [sum, n, max] (counters: deltas; gauges: values)."""
    n = step // 60
    rate = rng.uniform(1e4, 1e6)
    data = {"cpu": [rng.uniform(0, 100) * n, n, rng.uniform(0, 100)], "steal": [rng.uniform(0, 3) * n, n, 3.0],
            "cpu_ns": [int(rng.uniform(0, 6e10) * n), n, 1e9], "mem_used": [2e8 * n, n, 2.2e8],
            "mem_total": [2.68e8 * n, n, 2.68e8]}
    for name in ("net_rx", "net_tx", "net_rx_pkts", "net_tx_pkts", "disk.vda.rd_bytes", "disk.vda.wr_bytes",
                 "disk.vda.rd_ops", "disk.vda.wr_ops"):
        data[name] = [int(rate * step), n, rate * 1.7]
    data["disk.vda.alloc"] = [7e8 * n, n, 7e8]
    return json.dumps(data, separators=(",", ":"))


def seed(database: str, servers: int, tiers: list[tuple[int, int]], cap: int, now: dt.datetime) -> int:
    """Every tier's buckets of every server over its retention (at most `cap` a tier when > 0).
    Servers share a few dozen payloads (what is measured is reading, not the values)."""
    rng = random.Random(7)
    payloads = {step: [payload(rng, step) for _ in range(32)] for step, _ in tiers}
    conn = connect(database)
    cur = conn.cursor()
    cur.execute("SET SESSION unique_checks = 0")
    conn.autocommit(False)  # one commit per COMMIT_EVERY rows: the flushes, not the rows, cost
    sql = "INSERT INTO metrics_metricbucket (kind, target_id, step, start, data, gap) VALUES (%s, %s, %s, %s, %s, '')"
    total, batch = 0, []
    for server in range(1, servers + 1):
        for step, keep in tiers:
            count = keep // step if not cap else min(cap, keep // step)
            last = int((now - EPOCH).total_seconds()) // step * step
            options = payloads[step]
            for k in range(count, 0, -1):
                start = dt.datetime.fromtimestamp(last - k * step, dt.UTC).replace(tzinfo=None)
                batch.append(("server", server, step, start, options[(server + k) % len(options)]))
                if len(batch) >= BATCH:
                    cur.executemany(sql, batch)
                    total += len(batch)
                    batch.clear()
                    if total % COMMIT_EVERY == 0:
                        conn.commit()
    if batch:
        cur.executemany(sql, batch)
        total += len(batch)
    conn.commit()
    conn.autocommit(True)
    cur.execute("ANALYZE TABLE metrics_metricbucket")
    cur.fetchall()
    conn.close()
    return total


def capture_select(key: str, path: str) -> tuple[str, int, int]:
    """The graph's SELECT over the buckets, as Django sends it, the points it answers and their step."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client(HTTP_AUTHORIZATION=f"Token {key}")
    with CaptureQueriesContext(connection) as ctx:
        r = client.get(path)
    assert r.status_code == 200, r.content[:300]
    sql = next(q["sql"] for q in ctx.captured_queries if "FROM `metrics_metricbucket`" in q["sql"])
    return sql, len(r.json()["t"]), r.json()["step"]


def rows_read(database: str, sql: str) -> tuple[int, int]:
    """(rows the SELECT returned, rows MariaDB's handlers read for it)."""
    conn = connect(database)
    cur = conn.cursor()

    def reads() -> int:
        cur.execute("SHOW SESSION STATUS LIKE 'Handler_read%'")
        return sum(int(v) for _, v in cur.fetchall())

    before = reads()
    cur.execute(sql)
    returned = len(cur.fetchall())
    touched = reads() - before
    conn.close()
    return returned, touched


def timed(n: int, one) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        one()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--servers", type=int, default=1000)
    ap.add_argument("--cap", type=int, default=0, help="rows a tier per server at most (0: full retention)")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--nat-cidr", default="10.77.27.0/24", help="the local node's NAT test range")
    args = parse_args(ap, tiny={"servers": 20, "cap": 800, "requests": 20, "warmup": 3})

    with own_nat_range(args.nat_cidr) as net_env, live_panel(worker=False, env=net_env, tag="benchmg") as panel:
        setup_django(panel)
        from django.utils import timezone

        from panel.metrics import store

        database = panel.env["DATABASE_URL"].rsplit("/", 1)[1]
        now = timezone.now()
        tiers = store.tiers()
        t = time.perf_counter()
        rows = seed(database, args.servers, tiers, args.cap, now)
        seconds = time.perf_counter() - t
        print(f"seeded {rows:,} buckets ({rows // args.servers:,} a server; tiers {tiers}) for {args.servers} "
              f"servers in {seconds:.0f} s ({rows / max(seconds, 1e-9):,.0f} rows/s)", flush=True)
        from panel.accounts.models import Customer
        from panel.vps.models import Plan, VirtualServer
        from nodes.models import Node

        customer = Customer.objects.create(name="bench", email="bench@example.com", external_id="bench-mg")
        plan = Plan.objects.create(name="bench", vcpus=1, ram_mib=256, disk_gib=1)
        server = VirtualServer.objects.create(customer=customer, plan=plan, node=Node.objects.get(name="local"),
                                              hostname="graph-1", state="running", vcpus=1, ram_mib=256, disk_gib=1)
        # The graphed server's buckets are those of target 1 (the server row's id may differ).
        target = server.pk
        from panel.metrics.models import MetricBucket

        if target != 1:
            MetricBucket.objects.filter(kind="server", target_id=target).delete()
            MetricBucket.objects.filter(kind="server", target_id=1).update(target_id=target)
        start = int((now - dt.timedelta(days=30) - EPOCH).total_seconds())
        end = int((now - EPOCH).total_seconds())
        path = f"/api/v1/servers/{target}/metrics/?from={start}&to={end}"
        sql, points, step = capture_select(panel.admin_key, path)
        returned, touched = rows_read(database, sql)

        session = requests.Session()
        session.headers["Authorization"] = f"Token {panel.admin_key}"

        def api():
            r = session.get(panel.url + path, timeout=30)
            assert r.status_code == 200 and len(r.json()["t"]) == points, r.text[:300]

        conn = connect(database)
        cur = conn.cursor()

        def floor():
            cur.execute(sql)
            assert len(cur.fetchall()) == returned

        timed(args.warmup, api)
        api_ms = summary(timed(args.requests, api))
        timed(args.warmup, floor)
        floor_ms = summary(timed(args.requests, floor))
        conn.close()
        from django.db import connections

        connections.close_all()

    print()
    print(f"GET /api/v1/servers/{{id}}/metrics/ over 30 days ({args.servers} servers, "
          f"{'full retention' if not args.cap else f'at most {args.cap} rows a tier'}, MariaDB, 1 client, admin key)")
    print(f"  answer: {points} points (step {step} s), SELECT returned {returned} rows, "
          f"handlers read {touched} rows")
    print(f"  api    n={api_ms['n']:4d}  p50 {api_ms['p50']:7.1f}  p95 {api_ms['p95']:7.1f}  max {api_ms['max']:7.1f} ms")
    print(f"  floor  n={floor_ms['n']:4d}  p50 {floor_ms['p50']:7.1f}  p95 {floor_ms['p95']:7.1f}  "
          f"max {floor_ms['max']:7.1f} ms   (the same SELECT through MySQLdb, one persistent connection)")
    print(f"  machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"  ratio api/floor   p50 {api_ms['p50'] / floor_ms['p50']:6.1f}×   p95 {api_ms['p95'] / floor_ms['p95']:6.1f}×")
    print(f"  goal p95 ≤ {GOAL_P95_MS:.0f} ms: {'MET' if api_ms['p95'] <= GOAL_P95_MS else 'NOT MET'} "
          f"(p95 {api_ms['p95']:.1f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

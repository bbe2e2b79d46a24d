#!/usr/bin/env python
"""Server list under load: GET /api/v1/servers/ with 10,000 servers on MariaDB.

Figure: "`GET /api/v1/servers/` with 10,000 servers, page 50, 20 concurrent clients on MariaDB:
p95 ≤ 50 ms, and the number of SQL queries does not grow with the page size."

A live panel (own MariaDB database, daphne; no worker) is seeded in this process through the
Django ORM (bulk inserts: 100 customers, one plan, 10,000 running servers on the local node).
Then:

  1. load     N closed-loop clients (one requests.Session each, billing key) GET random pages
              `?page=K&page_size=50` for --seconds or --requests, whichever comes first;
  2. floor    the same clients run the page's own SQL (COUNT(*) + SELECT … LIMIT 50 OFFSET …,
              captured from Django) directly through MySQLdb, one persistent connection each;
  3. queries  in-process (Django test client + CaptureQueriesContext, same database): the
              number of SQL queries for page_size 10, 50 and 200 — they must be equal, else
              the script exits 1.

    .venv/bin/python benchmarks/server_list.py [--clients 20] [--seconds 15] [--requests 2000]
                                               [--env DB_CONN_MAX_AGE=60] [--tiny]
"""

import argparse
import os
import random
import re
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import requests  # noqa: E402

from benchmarks.live import live_panel, own_nat_range, parse_args, summary  # noqa: E402

GOAL_P95_MS = 50.0
SERVERS, CUSTOMERS, PAGE_SIZE = 10_000, 100, 50


def setup_django(panel) -> None:
    """Point this process's Django at the live panel's database."""
    for name in ("DATABASE_URL", "PANEL_DATA_DIR", "PANEL_INSTANCE_ID", "TINY_GUEST_DIR"):
        os.environ[name] = panel.env[name]
    os.environ["DJANGO_SETTINGS_MODULE"] = "panel.settings"
    import django

    django.setup()


def seed(servers: int, customers: int) -> None:
    from panel.accounts.models import Customer
    from panel.vps.models import Plan, ServerState, VirtualServer
    from nodes.models import Node
    from templates_os.models import OsTemplate

    node = Node.objects.get(name="local")
    plan = Plan.objects.create(name="bench", vcpus=1, ram_mib=512, disk_gib=10)
    # A foreign key since the OS templates moved onto a share (runpanel makes the demo's rows).
    tiny, _ = OsTemplate.objects.get_or_create(slug="tiny", defaults={"name": "tiny"})
    Customer.objects.bulk_create(
        Customer(name=f"Customer {i}", email=f"c{i}@example.com", external_id=f"bench-{i}") for i in range(customers)
    )
    ids = list(Customer.objects.filter(external_id__startswith="bench-").values_list("pk", flat=True))
    VirtualServer.objects.bulk_create(
        (VirtualServer(customer_id=ids[i % len(ids)], plan=plan, node=node, hostname=f"srv-{i:05d}.example.com",
                       os_template=tiny, state=ServerState.RUNNING, vcpus=1, ram_mib=512, disk_gib=10)
         for i in range(servers)),
        batch_size=1000,
    )


def count_queries(key: str) -> tuple[dict, list[str]]:
    """Queries per request for page_size 10, 50, 200 (and the SQL of a page of 50)."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client(HTTP_AUTHORIZATION=f"Token {key}")
    assert client.get("/api/v1/servers/?page_size=10").status_code == 200  # warm: last_used_at written
    counts, page_sql = {}, []
    for size in (10, 50, 200):
        with CaptureQueriesContext(connection) as ctx:
            r = client.get(f"/api/v1/servers/?page=2&page_size={size}")
        assert r.status_code == 200 and len(r.json()["results"]) == size, r.content[:300]
        counts[size] = len(ctx.captured_queries)
        if size == PAGE_SIZE:
            page_sql = [q["sql"] for q in ctx.captured_queries]
    return counts, page_sql


def service_time(key: str, pages: int, n: int = 100) -> tuple[float, float]:
    """One request at a time, in-process: median total ms and median ms of it spent in SQL."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client(HTTP_AUTHORIZATION=f"Token {key}")
    totals, sqls = [], []
    for _ in range(n):
        with CaptureQueriesContext(connection) as ctx:
            t0 = time.perf_counter()
            client.get(f"/api/v1/servers/?page={random.randint(1, pages)}&page_size={PAGE_SIZE}")
            totals.append((time.perf_counter() - t0) * 1000)
        sqls.append(sum(float(q["time"]) for q in ctx.captured_queries) * 1000)
    return summary(totals)["p50"], summary(sqls)["p50"]


def closed_loop(clients: int, seconds: float, max_requests: int, make_worker) -> tuple[list[float], int, float]:
    """Run `clients` threads; each calls its `one()` back to back. Returns (latencies ms, errors, wall s)."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    stop = threading.Event()

    def run():
        one = make_worker()
        start.wait()
        while not stop.is_set():
            t0 = time.perf_counter()
            ok = one()
            ms = (time.perf_counter() - t0) * 1000
            with lock:
                if not ok:
                    errors[0] += 1
                elif not stop.is_set():
                    latencies.append(ms)
                    if len(latencies) >= max_requests:
                        stop.set()

    threads = [threading.Thread(target=run, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    stop.wait(seconds)
    stop.set()
    wall = time.perf_counter() - t0
    for t in threads:
        t.join(timeout=60)
    return latencies, errors[0], wall


def http_worker(url: str, key: str, pages: int):
    def make():
        session = requests.Session()
        session.headers["Authorization"] = f"Token {key}"

        def one() -> bool:
            page = random.randint(1, pages)
            r = session.get(f"{url}/api/v1/servers/", params={"page": page, "page_size": PAGE_SIZE}, timeout=30)
            return r.status_code == 200 and len(r.json()["results"]) == PAGE_SIZE

        return one

    return make


def sql_worker(database: str, page_sql: list[str], pages: int):
    """The page's own SQL (the count, the LIMIT/OFFSET select and the prefetch of the page's
    addresses, as Django issued them)."""
    count_sql = next(q for q in page_sql if "COUNT(" in q.upper() and "vps_virtualserver" in q)
    select_sql = next(q for q in page_sql if re.search(r"LIMIT \d+", q) and "vps_virtualserver" in q)
    select_sql = re.sub(r"LIMIT \d+( OFFSET \d+)?", "LIMIT %s OFFSET %s", select_sql)
    # `… WHERE server_id IN (<the page's ids>)`: the serializer's ipv4/ipv6 (ServerViewSet).
    prefetch_sql = next((re.sub(r" IN \([^)]*\)", " IN ({})", q) for q in page_sql
                         if "FROM `ipam_ipaddress`" in q and " IN (" in q), None)

    def make():
        import MySQLdb

        conn = MySQLdb.connect(user="root", db=database, charset="utf8mb4",
                               unix_socket=os.environ.get("MYSQL_SOCKET", "/run/mysqld/mysqld.sock"))
        conn.autocommit(True)
        cur = conn.cursor()

        def one() -> bool:
            page = random.randint(1, pages)
            cur.execute(count_sql)
            cur.fetchall()
            cur.execute(select_sql, (PAGE_SIZE, (page - 1) * PAGE_SIZE))
            rows = cur.fetchall()
            if prefetch_sql:
                cur.execute(prefetch_sql.format(", ".join(str(int(row[0])) for row in rows)))
                cur.fetchall()
            return len(rows) == PAGE_SIZE

        return one

    return make, count_sql, select_sql


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=15, help="measure for this long at most (default 15)")
    ap.add_argument("--requests", type=int, default=2000, help="or until this many requests (default 2000)")
    ap.add_argument("--warmup", type=float, default=3, help="seconds of unrecorded load first (default 3)")
    ap.add_argument("--single", type=float, default=3, help="seconds of the one-client runs (default 3)")
    ap.add_argument("--inproc", type=int, default=100, help="in-process requests timed one by one (default 100)")
    ap.add_argument("--servers", type=int, default=SERVERS,
                    help=f"servers seeded (default {SERVERS}; at least 400: page 2 of page_size 200 is counted)")
    ap.add_argument("--nat-cidr", default="10.77.26.0/24",
                    help="the local node's NAT test range (default 10.77.26.0/24; the e2e tests use 10.77.5.0/24)")
    ap.add_argument("--env", action="append", default=[], metavar="K=V",
                    help="extra environment for the panel processes (e.g. DB_CONN_MAX_AGE=60); repeatable")
    args = parse_args(ap, tiny={"servers": 400, "clients": 2, "seconds": 1, "requests": 100, "warmup": 0.3,
                                "single": 0.3, "inproc": 10})
    extra_env = dict(item.split("=", 1) for item in args.env)

    with own_nat_range(args.nat_cidr) as net_env, \
            live_panel(worker=False, env={**net_env, **extra_env}, tag="benchsl") as panel:
        setup_django(panel)
        t = time.perf_counter()
        seed(args.servers, CUSTOMERS)
        print(f"seeded {args.servers} servers over {CUSTOMERS} customers in {time.perf_counter() - t:.1f} s", flush=True)
        key = panel.manage("create_api_key", "--scope", "billing", "--name", "bench-billing").strip().splitlines()[-1]
        pages = args.servers // PAGE_SIZE

        counts, page_sql = count_queries(key)
        inproc_total, inproc_sql = service_time(key, pages, args.inproc)

        print(f"warm-up {args.warmup:g} s, then {args.clients} clients for ≤ {args.seconds:g} s "
              f"or {args.requests} requests …", flush=True)
        closed_loop(args.clients, args.warmup, 10**9, http_worker(panel.url, key, pages))
        lat, errors, wall = closed_loop(args.clients, args.seconds, args.requests, http_worker(panel.url, key, pages))
        load = os.getloadavg()[0]
        single, _, single_wall = closed_loop(1, args.single, 10**9, http_worker(panel.url, key, pages))

        database = panel.env["DATABASE_URL"].rsplit("/", 1)[1]
        make_sql, count_sql, select_sql = sql_worker(database, page_sql, pages)
        closed_loop(args.clients, args.warmup / 3, 10**9, make_sql)
        floor, floor_errors, floor_wall = closed_loop(args.clients, args.seconds, args.requests, make_sql)
        floor_single, _, _ = closed_loop(1, args.single, 10**9, make_sql)
        from django.db import connections

        connections.close_all()

    api, db = summary(lat), summary(floor)
    print()
    print(f"GET /api/v1/servers/?page=K&page_size={PAGE_SIZE}  ({args.servers} servers, {CUSTOMERS} customers, "
          f"MariaDB, {args.clients} closed-loop clients, billing key" + (f", env {extra_env}" if extra_env else "") + ")")
    print(f"  panel  n={api['n']:5d}  p50 {api['p50']:7.1f}  p95 {api['p95']:7.1f}  p99 {api['p99']:7.1f}  "
          f"max {api['max']:7.1f} ms   {api['n'] / wall:7.1f} req/s   errors {errors}")
    print(f"  floor  n={db['n']:5d}  p50 {db['p50']:7.1f}  p95 {db['p95']:7.1f}  p99 {db['p99']:7.1f}  "
          f"max {db['max']:7.1f} ms   {db['n'] / floor_wall:7.1f} pages/s   errors {floor_errors}")
    print(f"         (floor = the page's COUNT(*) + SELECT … LIMIT {PAGE_SIZE} OFFSET … + its addresses' prefetch, "
          f"through MySQLdb, one persistent connection per client)")
    print(f"  1 client: panel p50 {summary(single)['p50']:.1f} ms ({len(single) / single_wall:.0f} req/s), "
          f"floor p50 {summary(floor_single)['p50']:.1f} ms;  in-process (no HTTP, no daphne): "
          f"{inproc_total:.1f} ms per request, of which SQL {inproc_sql:.1f} ms")
    print(f"  machine: {os.cpu_count()} CPUs, load average {load:.1f} during the panel run")
    print(f"  ratio panel/floor   p50 {api['p50'] / db['p50']:6.1f}×   p95 {api['p95'] / db['p95']:6.1f}×")
    print(f"  goal p95 ≤ {GOAL_P95_MS:.0f} ms: {'MET' if api['p95'] <= GOAL_P95_MS else 'NOT MET'} "
          f"(p95 {api['p95']:.1f} ms)")
    print()
    print("  SQL queries per request (in-process, Django test client): "
          + ", ".join(f"page_size {k}: {v}" for k, v in counts.items()))
    for q in page_sql:
        print(f"    {q[:150]}{'…' if len(q) > 150 else ''}")
    same = len(set(counts.values())) == 1
    print(f"  query count independent of page size: {'YES' if same else 'NO — it grows with the page size'}")
    return 0 if same else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; cleaned up", file=sys.stderr)
        sys.exit(130)

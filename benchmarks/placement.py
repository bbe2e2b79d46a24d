#!/usr/bin/env python
"""Placement: one decision with 1,000 nodes and 50,000 servers on MariaDB.

Figure: "Placement benchmark: 1,000 nodes and 50,000 servers in the database, one decision
≤ 50 ms on MariaDB."

No panel process is needed: this process makes its own MariaDB database (`panel_benchpl…`,
root over the unix socket), points Django at it, migrates, and seeds through the ORM
(bulk inserts): 10 clusters, each with a `dir` storage for disks and an NFS template share;
1,000 nodes of random sizes (a few offline, degraded or in maintenance); 50,000 servers
spread over the online nodes without over-filling them, and every node's `alloc_*` counters
set to the sums of its servers. Then, N times each, with random plan sizes:

  decide   `placement.decide(Request(…))` alone — over all clusters, and within one cluster;
  reserve  a whole `placement.reserve()` inside `transaction.atomic()`, ROLLED BACK every time
           (so every sample sees the same data; the row lock and the UPDATE are still done);
  floor    the raw SQL that reads the same node rows (the `SELECT … FROM nodes_node LEFT OUTER
           JOIN nodes_cluster …` Django issues for decide(), run through the Django
           connection's cursor and fetched), to print decide/floor.

Also printed: SQL queries per decision (CaptureQueriesContext), and where a decision's time
goes (SQL, building model instances, the Python filters and weigher). The database is
dropped at the end, also on failure, Ctrl-C and SIGTERM.

    .venv/bin/python benchmarks/placement.py [--n 200] [--seed 1] [--nodes 1000] [--servers 50000]
                                             [--clusters 10] [--tiny]

It exits 0 whether the goal is met or not (the verdict is printed), like the other scripts.
"""

import argparse
import contextlib
import os
import random
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.live import _sigterm_to_interrupt, parse_args, summary  # noqa: E402

GOAL_MS = 50.0
NODES, SERVERS, CLUSTERS = 1_000, 50_000, 10
# (vcpus, ram MiB, disk GiB), with weights: mostly small servers, like a VPS host.
PLANS = [((1, 1024, 20), 40), ((2, 2048, 40), 30), ((4, 4096, 80), 20), ((8, 8192, 160), 10)]
SOCKET = os.environ.get("MYSQL_SOCKET", "/run/mysqld/mysqld.sock")


def mysql(sql: str) -> None:
    import MySQLdb

    conn = MySQLdb.connect(user="root", unix_socket=SOCKET)
    try:
        conn.cursor().execute(sql)
    finally:
        conn.close()


def setup_django(database: str, data: Path) -> None:
    os.environ["DATABASE_URL"] = f"mysql://root@localhost/{database}"
    os.environ["PANEL_DATA_DIR"] = str(data)
    os.environ["DJANGO_SETTINGS_MODULE"] = "panel.settings"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", "--noinput", verbosity=0)


def seed(rng: random.Random, n_clusters: int = CLUSTERS, n_nodes: int = NODES, n_servers: int = SERVERS) -> dict:
    from nodes.models import Cluster, Node, Storage
    from panel.accounts.models import Customer
    from panel.vps.models import Plan, ServerState, VirtualServer
    from templates_os.models import OsTemplate

    # A foreign key since the OS templates moved onto a share: one row stands for the share's.
    tiny = OsTemplate.objects.create(slug="tiny", name="tiny", valid=True)
    Cluster.objects.bulk_create(Cluster(name=f"c{i:02d}") for i in range(n_clusters))
    clusters = list(Cluster.objects.order_by("id"))
    disk_storage, template_storage = {}, {}
    for cluster in clusters:
        template_storage[cluster.id] = Storage.objects.create(cluster=cluster, name="templates", kind=Storage.Kind.NFS, path="/srv/templates",
                               nfs_source="nas.example.com:/templates", holds_templates=True)
        disk_storage[cluster.id] = Storage.objects.create(cluster=cluster, name="disks", kind=Storage.Kind.DIR,
                                                          path="/var/lib/panel/disks")
    nodes = []
    for i in range(n_nodes):
        cluster = clusters[i % n_clusters]
        state = rng.choices([Node.State.ONLINE, Node.State.OFFLINE, Node.State.MAINTENANCE, Node.State.DEGRADED],
                            [96, 2, 1, 1])[0]
        nodes.append(Node(
            name=f"node-{i:04d}", cluster=cluster, uri=f"qemu+ssh://root@10.{i // 250}.{i % 250}.1/system",
            address=f"10.{i // 250}.{i % 250}.1", host_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIbench",
            state=state, last_error="libvirtd does not answer" if state == Node.State.OFFLINE else "",
            os_name="Debian GNU/Linux 12 (bookworm)", virt_type="kvm", libvirt_version="9.0.0", qemu_version="7.2.0",
            cpus=rng.choice([32, 48, 64, 96]), ram_mib=rng.choice([192, 256, 384, 512]) * 1024,
            storage_dir="/var/lib/panel/disks",
            storage_capacity={str(disk_storage[cluster.id].id): {"total_gib": rng.choice([4000, 8000, 16000])}},
        ))
    Node.objects.bulk_create(nodes, batch_size=500)
    nodes = list(Node.objects.select_related("cluster").order_by("id"))
    for node in nodes:
        sid = str(disk_storage[node.cluster_id].id)
        node.storage_capacity[sid]["free_gib"] = node.storage_capacity[sid]["total_gib"]
        node.storage_capacity[str(template_storage[node.cluster_id].id)] = {"total_gib": 20000, "free_gib": 12000}

    Customer.objects.bulk_create(
        Customer(name=f"Customer {i}", email=f"c{i}@example.com", external_id=f"bench-{i}") for i in range(200))
    customer_ids = list(Customer.objects.values_list("pk", flat=True))
    plans = [Plan.objects.create(name=f"p{v}", vcpus=v, ram_mib=r, disk_gib=d) for (v, r, d), _w in PLANS]
    sizes, weights = [p for p, _w in PLANS], [w for _p, w in PLANS]

    # Spread the servers at random over the nodes that have room (online or not: a node that
    # went offline keeps its servers), so some nodes end up nearly full.
    room = {n.id: [int(n.cpus * n.cluster.cpu_overcommit), int(n.ram_mib * n.cluster.ram_overcommit),
                   n.storage_capacity[str(disk_storage[n.cluster_id].id)]["total_gib"]] for n in nodes}
    alloc = {n.id: [0, 0, 0] for n in nodes}
    servers, ids = [], [n.id for n in nodes]
    while len(servers) < n_servers:
        k = rng.choices(range(len(sizes)), weights)[0]
        vcpus, ram, disk = sizes[k]
        for _try in range(20):
            nid = rng.choice(ids)
            a, r = alloc[nid], room[nid]
            if a[0] + vcpus <= r[0] and a[1] + ram <= r[1] and a[2] + disk <= r[2]:
                break
        else:
            continue
        a[0], a[1], a[2] = a[0] + vcpus, a[1] + ram, a[2] + disk
        servers.append(VirtualServer(
            customer_id=customer_ids[len(servers) % len(customer_ids)], plan=plans[k], node_id=nid,
            storage_id=None, hostname=f"srv-{len(servers):05d}.example.com", os_template=tiny,
            state=ServerState.RUNNING, vcpus=vcpus, ram_mib=ram, disk_gib=disk,
        ))
    by_node = {n.id: n for n in nodes}
    for server in servers:
        server.storage_id = disk_storage[by_node[server.node_id].cluster_id].id
    VirtualServer.objects.bulk_create(servers, batch_size=2000)
    for node in nodes:
        node.alloc_vcpus, node.alloc_ram_mib, node.alloc_disk_gib = alloc[node.id]
        sid = str(disk_storage[node.cluster_id].id)
        node.storage_capacity[sid]["free_gib"] = node.storage_capacity[sid]["total_gib"] - alloc[node.id][2]
    Node.objects.bulk_update(nodes, ["alloc_vcpus", "alloc_ram_mib", "alloc_disk_gib", "storage_capacity"],
                             batch_size=500)
    return {"clusters": [c.id for c in clusters], "sizes": sizes, "weights": weights}


def check_seed() -> str:
    """The alloc counters are the sums of the servers (as the reconciler would compute them)."""
    from django.db.models import Count, Sum

    from nodes.models import Node
    from panel.vps.models import VirtualServer

    sums = {row["node_id"]: row for row in VirtualServer.objects.values("node_id").annotate(
        n=Count("id"), v=Sum("vcpus"), r=Sum("ram_mib"), d=Sum("disk_gib"))}
    bad = 0
    for node in Node.objects.all():
        row = sums.get(node.id, {"v": 0, "r": 0, "d": 0})
        bad += (node.alloc_vcpus, node.alloc_ram_mib, node.alloc_disk_gib) != (row["v"] or 0, row["r"] or 0, row["d"] or 0)
    states = dict(Node.objects.values_list("state").annotate(Count("id")))
    assert bad == 0, f"{bad} nodes with alloc counters that are not the sums of their servers"
    return (f"{Node.objects.count()} nodes ({', '.join(f'{v} {k}' for k, v in sorted(states.items()))}), "
            f"{VirtualServer.objects.count()} servers; alloc counters = sums of servers on every node")


def timed(fn, requests):
    """Call fn(request) for each; (ms list, queries per call list, SQL ms list, last result)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    ms, queries, sql_ms, result = [], [], [], None
    for want in requests:
        with CaptureQueriesContext(connection) as ctx:
            t0 = time.perf_counter()
            result = fn(want)
            ms.append((time.perf_counter() - t0) * 1000)
        queries.append(len(ctx.captured_queries))
        sql_ms.append(sum(float(q["time"]) for q in ctx.captured_queries) * 1000)
    return ms, queries, sql_ms, result, list(ctx.captured_queries)  # now: the log is a bounded deque


class _Rollback(Exception):
    pass


def reserve_rolled_back(want):
    from django.db import transaction

    from nodes import placement

    try:
        with transaction.atomic():
            decision = placement.reserve(want)
            raise _Rollback
    except _Rollback:
        pass
    return decision


def node_sql(cluster_id=None) -> str:
    """The node SELECT that decide() issues, as MariaDB receives it."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from nodes import placement

    with CaptureQueriesContext(connection) as ctx:
        placement.decide(placement.Request(1, 1024, 20, cluster_id))
    return next(q["sql"] for q in ctx.captured_queries if "FROM `nodes_node`" in q["sql"])


def raw_floor(sql: str):
    from django.db import connection

    def one(_want):
        with connection.cursor() as cur:
            cur.execute(sql)
            return len(cur.fetchall())

    return one


def orm_only(cluster_id=None):
    """decide()'s two queries with model instances built, but no filter/weigher."""
    from nodes.models import Node

    def one(_want):
        qs = Node.objects.select_related("cluster").prefetch_related("cluster__storages")
        if cluster_id:
            qs = qs.filter(cluster_id=cluster_id)
        return len(list(qs))

    return one


def prototype_decide(want):
    """NOT product code — a sketch of the proposed change, to measure its effect: the filters
    that are plain columns go into SQL (online, in a cluster, vCPU and RAM room after
    over-commit), the spread weigher becomes ORDER BY, only the columns placement reads are
    fetched, and the rows are read a few at a time until one also has disk room (a JSON field,
    checked in Python as today). Rejection reasons are not collected on this path."""
    from django.db.models import DecimalField, ExpressionWrapper, F, FloatField

    from nodes import placement
    from nodes.models import Node, Storage

    cap_v = ExpressionWrapper(F("cpus") * F("cluster__cpu_overcommit"), output_field=DecimalField())
    cap_r = ExpressionWrapper(F("ram_mib") * F("cluster__ram_overcommit"), output_field=DecimalField())
    share = ExpressionWrapper((cap_r - F("alloc_ram_mib")) / cap_r, output_field=FloatField())
    qs = (Node.objects.filter(state=Node.State.ONLINE, cluster__isnull=False)
          .alias(cap_v=cap_v, cap_r=cap_r, share=share)
          .filter(cap_v__gte=F("alloc_vcpus") + want.vcpus, cap_r__gte=F("alloc_ram_mib") + want.ram_mib)
          .order_by(F("share").desc(), "id")
          .only("id", "name", "cluster_id", "alloc_disk_gib", "storage_capacity"))
    if want.cluster_id:
        qs = qs.filter(cluster_id=want.cluster_id)
    disk = {}
    for storage in Storage.objects.filter(holds_templates=False).order_by("id"):
        disk.setdefault(storage.cluster_id, storage)
    decision = placement.Decision()
    for node in qs[:20]:
        storage = disk.get(node.cluster_id)
        if storage and node.storage_capacity.get(str(storage.id), {}).get("total_gib", 0) - node.alloc_disk_gib >= want.disk_gib:
            decision.node, decision.storage = node, storage
            return decision
    return placement.decide(want)  # rare: fall back to the full scan, which also explains


def line(label: str, ms, queries=None, extra: str = "") -> str:
    s = summary(ms)
    q = ""
    if queries is not None:
        lo, hi = min(queries), max(queries)
        q = f"  queries {lo}" if lo == hi else f"  queries {lo}–{hi}"
    return (f"  {label:<34} p50 {s['p50']:6.1f}  p95 {s['p95']:6.1f}  p99 {s['p99']:6.1f}  max {s['max']:6.1f} ms"
            f"{q}{extra}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="decisions per row (default 200)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the database (for EXPLAIN); drop it yourself")
    ap.add_argument("--nodes", type=int, default=NODES, help=f"default {NODES}")
    ap.add_argument("--servers", type=int, default=SERVERS, help=f"default {SERVERS}")
    ap.add_argument("--clusters", type=int, default=CLUSTERS, help=f"default {CLUSTERS}")
    args = parse_args(ap, tiny={"n": 5, "nodes": 20, "servers": 200, "clusters": 2})
    rng = random.Random(args.seed)
    _sigterm_to_interrupt()
    database = f"panel_benchpl{secrets.token_hex(4)}"
    data = Path(tempfile.mkdtemp(prefix="benchpl-"))
    mysql(f"CREATE DATABASE {database} CHARACTER SET utf8mb4")
    try:
        setup_django(database, data)
        t = time.perf_counter()
        info = seed(rng, args.clusters, args.nodes, args.servers)
        print(f"seeded in {time.perf_counter() - t:.1f} s: {check_seed()}", flush=True)
        return measure(args, rng, info)
    finally:
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
        if args.keep:
            print(f"(database {database} kept)", file=sys.stderr)
        else:
            mysql(f"DROP DATABASE IF EXISTS {database}")
        shutil.rmtree(data, ignore_errors=True)


def measure(args, rng: random.Random, info: dict) -> int:
    from django.conf import settings

    from nodes import placement

    def requests(cluster: bool):
        out = []
        for _ in range(args.n):
            size = rng.choices(info["sizes"], info["weights"])[0]
            out.append(placement.Request(*size, rng.choice(info["clusters"]) if cluster else None))
        return out

    for want in requests(False)[:20]:  # warm: connection, query compilation, caches
        placement.decide(want)
        reserve_rolled_back(want)

    rows = {}
    for scope, cluster in ((f"all clusters ({args.nodes:,} nodes)", False),
                           (f"one cluster ({args.nodes // args.clusters:,} nodes)", True)):
        reqs = requests(cluster)
        d_ms, d_q, d_sql, decision, d_captured = timed(placement.decide, reqs)
        r_ms, r_q, r_sql, _res, r_captured = timed(reserve_rolled_back, reqs)
        cid = reqs[0].cluster_id
        sql = node_sql(cid)
        f_ms, _q, _s, nrows, _c = timed(raw_floor(sql), reqs)
        p_ms, p_q, p_sql, _res, p_captured = timed(prototype_decide, reqs)
        same = f"{sum(placement.decide(w).node.id == prototype_decide(w).node.id for w in reqs[:50])}/{len(reqs[:50])}"
        o_ms, _q, _s, _n, _c = timed(orm_only(cid), reqs)
        rows[scope] = dict(d=(d_ms, d_q, d_sql), r=(r_ms, r_q, r_sql), f=f_ms, o=o_ms, nrows=nrows,
                           rejected=len(decision.rejected), chosen=decision.node, sql=sql,
                           p=(p_ms, p_q, p_sql), same=same, p_captured=p_captured,
                           d_captured=d_captured, r_captured=r_captured)

    print()
    print(f"Placement, {args.nodes:,} nodes in {args.clusters} clusters, {args.servers:,} servers, MariaDB, "
          f"weigher {settings.PLACEMENT_WEIGHER}, n={args.n} per row (ms per decision)")
    worst = 0.0
    for scope, r in rows.items():
        d_ms, d_q, d_sql = r["d"]
        r_ms, r_q, r_sql = r["r"]
        worst = max(worst, summary(d_ms)["p95"], summary(r_ms)["p95"])
        print(f" {scope}: {r['nrows']} node rows read; last decision: chose {r['chosen']}, "
              f"{r['rejected']} nodes rejected with a reason")
        print(line("decide()", d_ms, d_q, f"  (SQL p50 {summary(d_sql)['p50']:.1f})"))
        print(line("reserve() in atomic(), rolled back", r_ms, r_q, f"  (SQL p50 {summary(r_sql)['p50']:.1f})"))
        print(line("floor: raw node SELECT, cursor", r["f"], None, "  queries 1"))
        print(line("ORM fetch only (no filters)", r["o"], None, "  queries 2"))
        p_ms, p_q, p_sql = r["p"]
        print(line("prototype: filters in SQL (sketch)", p_ms, p_q, f"  (SQL p50 {summary(p_sql)['p50']:.1f}; "
                                                                 f"same node as decide() {r['same']})"))
        fd, od, dd = summary(r["f"])["p50"], summary(r["o"])["p50"], summary(d_ms)["p50"]
        print(f"  ratio decide/floor p50 {dd / fd:5.1f}×   reserve/floor p50 {summary(r_ms)['p50'] / fd:5.1f}×")
        print(f"  where decide()'s p50 goes: raw SQL + fetch {fd:.1f}, building model instances "
              f"{max(od - fd, 0):.1f}, filters + weigher + reasons {max(dd - od, 0):.1f} ms")
    print()
    first = next(iter(rows.values()))
    print("  SQL of one decide() (all clusters):")
    for q in first["d_captured"]:
        print(f"    {q['sql'][:160]}{'…' if len(q['sql']) > 160 else ''}")
    print("  SQL of one reserve() (all clusters), BEGIN/ROLLBACK not captured:")
    for q in first["r_captured"]:
        print(f"    {q['sql'][:160]}{'…' if len(q['sql']) > 160 else ''}")
    lock = next(q["sql"] for q in first["r_captured"] if q["sql"].endswith("FOR UPDATE"))
    print(f"  the row lock: …{lock[lock.index(' FROM '):]}")
    print("  SQL of the prototype (all clusters):")
    for q in first["p_captured"]:
        print(f"    {q['sql'][:400]}{'…' if len(q['sql']) > 400 else ''}")
    print(f"  machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"  goal: one decision ≤ {GOAL_MS:.0f} ms (p95 of decide() and of reserve(), both scopes): "
          f"{'MET' if worst <= GOAL_MS else 'NOT MET'} (worst p95 {worst:.1f} ms)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; cleaned up", file=sys.stderr)
        sys.exit(130)

#!/usr/bin/env python
"""Monitoring collection: one minute's collection of 100 running tiny guests on one node.

Figures: "One collection of 100 running tiny guests on one node, as a ratio to the bare
`getAllDomainStats` call in the same run (goal ≤ 1.5×), and seconds per node (goal ≤ 2 s for 100)."

No panel process is needed: this process makes its own MariaDB database (`panel_benchmc…`),
migrates, and seeds one cluster with a directory storage, the local node (qemu:///system) and N
running servers whose domains it starts on the local libvirt: transient 32 MiB guests with an
empty 64 MiB qcow2 disk each (SeaBIOS finds nothing to boot and idles), named as the panel
names them, so the collector finds them. Then, --rounds times each, interleaved:

  floor    the bare `getAllDomainStats` call with the collector's groups and flags, on a
           connection of its own;
  read     the driver's `node_stats()`: the same call plus the host's CPU and memory and each
           active pool's figures (one refresh + info per pool), parsed;
  collect  a whole `panel.metrics.collector.collect()`: the read, then every server's point,
           billing's sample, the node/storage/network/pool points, the baselines, the roll-up
           and prune — what the worker does each minute (the clock moved on a minute a round).

Printed: p50/p95 of each, `read/floor` and `collect/floor` ratios, seconds for the node, and the
SQL queries of one collection. The database, domains and disks go at the end, also on failure,
Ctrl-C and SIGTERM.

    .venv/bin/python benchmarks/metrics_collect.py [--guests 100] [--rounds 10] [--tiny]

It exits 0 whether the goals are met or not (the verdict is printed), like the other scripts.
"""

import argparse
import datetime as dt
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.live import _sigterm_to_interrupt, parse_args, summary  # noqa: E402
from benchmarks.placement import mysql, setup_django  # noqa: E402

GOAL_RATIO, GOAL_SECONDS = 1.5, 2.0
IMAGES = Path("/var/lib/libvirt/images")


def domain_xml(name: str, disk: Path) -> str:
    """A transient 32 MiB guest with one qcow2 disk and a balloon reporting every 10 s."""
    return f"""<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>
<os><type arch='x86_64'>hvm</type></os><devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{disk}'/>
<target dev='vda' bus='virtio'/></disk><memballoon model='virtio'><stats period='10'/></memballoon>
</devices></domain>"""


def seed(guests: int, conn, made: list) -> None:
    from nodes.models import Cluster, Node, Storage
    from panel.accounts.models import Customer
    from panel.vps.models import Plan, ServerState, VirtualServer

    cluster = Cluster.objects.create(name="bench")
    storage = Storage.objects.create(cluster=cluster, name="bench-disks", kind=Storage.Kind.DIR, path=str(IMAGES))
    node = Node.objects.create(name="local", uri="qemu:///system", cluster=cluster, cpus=os.cpu_count(),
                               ram_mib=4096, storage_dir=str(IMAGES))
    customer = Customer.objects.create(name="Bench", email="bench@example.com", external_id="bench")
    plan = Plan.objects.create(name="tiny", vcpus=1, ram_mib=32, disk_gib=1)
    VirtualServer.objects.bulk_create(
        VirtualServer(customer=customer, plan=plan, node=node, storage=storage, hostname=f"mc-{i}",
                      state=ServerState.RUNNING, vcpus=1, ram_mib=32, disk_gib=1) for i in range(guests))
    for server in VirtualServer.objects.all():
        disk = IMAGES / f"{server.domain_name}-bench.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
        made.append((conn.createXML(domain_xml(server.domain_name, disk), 0), disk))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--guests", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=10)
    args = parse_args(ap, {"guests": 3, "rounds": 2})
    _sigterm_to_interrupt()
    import libvirt

    database, data = f"panel_benchmc{secrets.token_hex(3)}", Path(tempfile.mkdtemp(prefix="bench-mc-"))
    mysql(f"CREATE DATABASE {database} CHARACTER SET utf8mb4")
    conn, made = libvirt.open("qemu:///system"), []
    try:
        setup_django(database, data)
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        from nodes.connection import driver_for
        from panel.metrics import collector

        print(f"starting {args.guests} tiny guests …", flush=True)
        started = time.monotonic()
        seed(args.guests, conn, made)
        print(f"  {time.monotonic() - started:.1f} s")
        lv = libvirt
        groups = (lv.VIR_DOMAIN_STATS_STATE | lv.VIR_DOMAIN_STATS_CPU_TOTAL | lv.VIR_DOMAIN_STATS_VCPU
                  | lv.VIR_DOMAIN_STATS_BALLOON | lv.VIR_DOMAIN_STATS_INTERFACE | lv.VIR_DOMAIN_STATS_BLOCK)
        flags = lv.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE | lv.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT
        driver = driver_for("qemu:///system")
        now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
        collector.collect(now=now)  # the first: baselines, table caches warm
        floor, read, collect, queries = [], [], [], 0
        for i in range(1, args.rounds + 1):
            t = time.perf_counter()
            records = conn.getAllDomainStats(groups, flags)
            floor.append(time.perf_counter() - t)
            assert len(records) >= args.guests, len(records)
            t = time.perf_counter()
            sample = driver.node_stats()
            read.append(time.perf_counter() - t)
            assert len(sample.domains) >= args.guests
            with CaptureQueriesContext(connection) as captured:
                t = time.perf_counter()
                result = collector.collect(now=now + dt.timedelta(minutes=i))
                collect.append(time.perf_counter() - t)
            queries = len(captured)
            assert result["servers"] == args.guests and not result["failed_nodes"], result
        f, r, c = summary(x * 1000 for x in floor), summary(x * 1000 for x in read), summary(x * 1000 for x in collect)
        print(f"\n{args.guests} running guests on one node, {args.rounds} rounds")
        for label, s in (("floor getAllDomainStats", f), ("driver node_stats", r), ("collect()", c)):
            print(f"  {label:<24} p50 {s['p50']:8.1f} ms   p95 {s['p95']:8.1f} ms")
        print(f"ratio read/floor     p50 {r['p50'] / f['p50']:.2f}×   p95 {r['p95'] / f['p95']:.2f}×")
        print(f"ratio collect/floor  p50 {c['p50'] / f['p50']:.2f}×   p95 {c['p95'] / f['p95']:.2f}×")
        print(f"seconds per node (collect, p95): {c['p95'] / 1000:.3f} s; SQL queries per collection: {queries}")
        print(f"verdict: read/floor {'meets' if r['p50'] / f['p50'] <= GOAL_RATIO else 'misses'} ≤{GOAL_RATIO}×; "
              f"collect/floor {'meets' if c['p50'] / f['p50'] <= GOAL_RATIO else 'misses'} ≤{GOAL_RATIO}×; "
              f"seconds per node {'meets' if c['p95'] / 1000 <= GOAL_SECONDS else 'misses'} ≤{GOAL_SECONDS} s")
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        for dom, disk in made:
            try:
                dom.destroy()
            except libvirt.libvirtError:
                pass
            disk.unlink(missing_ok=True)
        conn.close()
        mysql(f"DROP DATABASE IF EXISTS {database}")
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

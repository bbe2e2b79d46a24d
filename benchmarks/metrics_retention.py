#!/usr/bin/env python
"""Monitoring storage: rows per tier and bytes per server at full retention, on MariaDB.

Figures: the issue's "state the bytes per server at full retention" and "a simulated 800 days of
minutes (clock injected) stays within the stated rows per tier".

No panel process: this process makes its own MariaDB database (`panel_benchmr…`), migrates,
and writes --days of one server's minutes — rows shaped as the collector writes them (a
server with one disk and one NIC: 16 series) — a day at a time into the finest tier, then
rolls up and prunes with the clock at the day's end (the default METRICS_TIERS: 1 min for
48 h, 5 min for 35 days, 1 h for 400 days, 1 day for 5 years). Printed: the rows of each tier
against its bound (retention / step), MariaDB's bytes per row (data + indexes, from
information_schema after ANALYZE), and so the bytes per server at full retention. As a floor,
the time of the same rows' bare bulk INSERT against the time the roll-ups and prunes added.

    .venv/bin/python benchmarks/metrics_retention.py [--days 800] [--tiny]
"""

import argparse
import datetime as dt
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.live import _sigterm_to_interrupt, parse_args  # noqa: E402
from benchmarks.placement import mysql, setup_django  # noqa: E402

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def minute_data() -> dict:
    """One minute of a running server as the collector records it."""
    gauges = {"cpu": 12.5, "steal": 0.4, "mem_used": 180_000_000, "mem_total": 268_435_456,
              "disk.vda.alloc": 1_234_567_890}
    counters = {"cpu_ns": 7_500_000_000, "net_rx": 1_250_000, "net_tx": 3_400_000, "net_rx_pkts": 1200,
                "net_tx_pkts": 2600, "disk.vda.rd_bytes": 40960, "disk.vda.wr_bytes": 2_097_152,
                "disk.vda.rd_ops": 10, "disk.vda.wr_ops": 512}
    return {**{k: [v, 1, v] for k, v in gauges.items()}, **{k: [v, 1, v / 60] for k, v in counters.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--days", type=int, default=800)
    args = parse_args(ap, {"days": 3})
    _sigterm_to_interrupt()
    database, data = f"panel_benchmr{secrets.token_hex(3)}", Path(tempfile.mkdtemp(prefix="bench-mr-"))
    mysql(f"CREATE DATABASE {database} CHARACTER SET utf8mb4")
    try:
        setup_django(database, data)
        from django.conf import settings
        from django.db import connection

        from panel.metrics import store
        from panel.metrics.models import MetricBucket

        minute = minute_data()
        insert = upkeep = 0.0
        for day in range(args.days):
            start = T0 + dt.timedelta(days=day)
            t = time.perf_counter()
            MetricBucket.objects.bulk_create([
                MetricBucket(kind="server", target_id=1, step=60, start=start + dt.timedelta(minutes=i), data=minute)
                for i in range(1440)], batch_size=1440)
            insert += time.perf_counter() - t
            t = time.perf_counter()
            end = start + dt.timedelta(days=1)
            store.rollup(now=end + store.ROLLUP_LAG)
            store.prune(now=end)
            upkeep += time.perf_counter() - t
            if day % 100 == 99:
                print(f"  day {day + 1}", flush=True)
        tiers = [(int(step), int(keep)) for step, keep in settings.METRICS_TIERS]
        counts = {step: MetricBucket.objects.filter(step=step).count() for step, _ in tiers}
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE TABLE metrics_metricbucket")
            cursor.fetchall()
            cursor.execute("SELECT data_length + index_length, table_rows FROM information_schema.tables "
                           "WHERE table_schema = %s AND table_name = 'metrics_metricbucket'", [database])
            size, rows = cursor.fetchone()
        per_row = size / max(rows, 1)
        full = sum(keep // step for step, keep in tiers)
        print(f"\n{args.days} simulated days of one server's minutes (16 series a row)")
        ok = True
        for step, keep in tiers:
            bound = keep // step
            within = counts[step] <= bound
            ok &= within
            print(f"  tier {step:>6} s, kept {keep // 86400:>5} d: {counts[step]:>7} rows (bound {bound}) "
                  f"{'within' if within else 'OVER'}")
        print(f"bytes per row on MariaDB (data + indexes): {per_row:.0f}")
        print(f"rows per server at full retention: {full}; bytes per server: {full * per_row / 2**20:.1f} MiB")
        print(f"ratio upkeep/insert {upkeep / max(insert, 1e-9):.2f}× (roll-ups and prunes {upkeep:.1f} s, "
              f"the bare inserts {insert:.1f} s)")
        print(f"verdict: rows per tier {'within' if ok else 'OVER'} the stated bounds")
        return 0 if ok else 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        mysql(f"DROP DATABASE IF EXISTS {database}")
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

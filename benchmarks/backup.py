#!/usr/bin/env python
"""Full backup throughput of a running server, against `qemu-img convert` of the same disk.

Figure: "full backup throughput as a ratio to `qemu-img convert` of the same disk in the same
run. Goal ≥ 0.8."

A live panel (own MariaDB database, daphne, one django-q2 cluster) on the local node
(qemu:///system). One server of the tiny template (1 GiB disk) is installed through the API,
stopped, given `--data-mib` MiB of random data (qemu-io, so zstd cannot shrink it) and started
again. Then N rounds, the order rotating every round:

  floor   `qemu-img convert -U -f qcow2 -O qcow2 <the running disk> <tmp>/floor.qcow2`
          (a subprocess; -U: the disk is in use), the output removed after. qemu-img's default
          leaves the copy in the page cache: it is not on the disk when the command returns.
  durable the same with `-t writeback`: qemu-img flushes the copy to the disk before it exits,
          as libvirt's backup job does (a backup reported done must survive a power cut).
  job     libvirt's backup job alone, as the panel starts it (virDomainBackupBegin, push mode,
          a new qcow2 file) until libvirt reports it done: the floor of the mechanism the panel
          uses, with nothing of the panel around it (no checkpoint, no checksum, no manifest).
  node    POST /api/v1/backup-plans/{plan}/run/ of a plan with full_every=1 (every backup is
          full), keep=1, to a folder on the server's node; the time until the new backup's
          `finished_at`. The whole path: the operation is queued and claimed, the target
          checked, libvirt's backup job writes the image into the folder, the node checksums
          it there (b3sum), the manifest is written, the previous backup pruned. Also shown:
          the backup's own time (`created_at` to `finished_at`, without the queue's wait).
  panel   the same to a folder on the panel's host, compression none: the job writes a
          staging image that the panel streams over libvirt to the target, hashing it.
  zstd    the panel path with compression zstd (level 3, all cores).

Before every sample the page cache is written back (sync, not timed), so no sample pays for
the previous one's dirty pages. With --cold the page cache is also dropped (a nightly backup
of disks larger than RAM reads them from the disk; the floors are measured the same way).
Throughput = the disk's allocated bytes (`qemu-img info`, "disk size") / seconds.

    DATABASE_URL=mysql://root@localhost/panel .venv/bin/python benchmarks/backup.py [--n 5] [--data-mib 512] [--cold]
        [--nat-cidr 10.77.24.0/24] [--tiny]
"""

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.live import live_panel, own_nat_range, parse_args, summary  # noqa: E402
from tests.e2e.conftest import make_tenant, wait_for  # noqa: E402


def _seconds(start: float, iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() - start


class Bench:
    def __init__(self, panel, args, tmp: Path):
        self.panel, self.args, self.tmp = panel, args, tmp
        self.admin = panel.admin_key

    def post(self, path: str, body: dict, expect: int = 201) -> dict:
        r = self.panel.call(self.admin, "POST", path, json=body)
        assert r.status_code == expect, r.text
        return r.json()

    def setup(self) -> None:
        disk_gib = -(-(16 + self.args.data_mib) // 1024)  # the data starts 16 MiB in
        plan = self.post("/api/v1/plans/", {"name": f"bbk-{secrets.token_hex(3)}", "vcpus": 1, "ram_mib": 128,
                                            "disk_gib": disk_gib, "backups": 10})["id"]
        tenant = make_tenant(self.panel, "benchbackup")
        op = self.post("/api/v1/servers/", {"customer": tenant.customer_id, "plan": plan, "hostname": "bbk-1",
                                            "os_template": "tiny"}, expect=202)
        op = self.panel.wait_operation(self.admin, op["id"], timeout=300)
        assert op["status"] == "succeeded", op
        self.server = op["server"]
        self.action("stop", {"force": True})
        server = self.panel.call(self.admin, "GET", f"/api/v1/servers/{self.server}/").json()
        self.domain = name = "vps-" + server["uuid"].replace("-", "")[:12]
        xml = subprocess.run(["virsh", "-c", "qemu:///system", "dumpxml", name], capture_output=True, text=True,
                             check=True).stdout
        self.disk = ET.fromstring(xml).find("devices/disk[@device='disk']/source").get("file")
        random = self.tmp / "random.bin"
        for start in range(0, self.args.data_mib, 512):  # qemu-io writes at most 2 GiB at once
            size = min(512, self.args.data_mib - start)
            random.write_bytes(secrets.token_bytes(size * 2**20))
            subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -s {random} {16 + start}M {size}M", self.disk],
                           check=True, capture_output=True)
        random.unlink()
        self.action("start", {})
        info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", self.disk], check=True,
                                         capture_output=True, text=True).stdout)
        self.bytes = info["actual-size"]
        (self.tmp / "job").mkdir()
        targets = {}
        for kind in ("dir", "node"):
            folder = self.tmp / f"target-{kind}"
            folder.mkdir()
            targets[kind] = self.post("/api/v1/backup-targets/", {"name": f"bench-{kind}", "kind": kind,
                                                                 "path": str(folder)})["id"]
        self.plans = {path: self.post("/api/v1/backup-plans/", {
            "name": f"bench-{path}", "target": targets[kind], "schedule": "0 3 1 1 *", "scope": "servers",
            "servers": [self.server], "keep": 1, "full_every": 1, "compression": compression, "enabled": True})["id"]
            for path, kind, compression in (("node", "node", "none"), ("panel", "dir", "none"), ("zstd", "dir", "zstd"))}

    def action(self, kind: str, body: dict) -> None:
        op = self.post(f"/api/v1/servers/{self.server}/{kind}/", body, expect=202)
        assert self.panel.wait_operation(self.admin, op["id"], timeout=120)["status"] == "succeeded"

    def settle(self) -> None:
        """Write back every dirty page (and with --cold drop the cache): samples start equal."""
        os.sync()
        if self.args.cold:
            Path("/proc/sys/vm/drop_caches").write_text("3\n")

    def floor(self, durable: bool = False) -> float:
        self.settle()
        out = self.tmp / "floor.qcow2"
        cache = ["-t", "writeback"] if durable else []
        t0 = time.time()
        subprocess.run(["qemu-img", "convert", "-U", *cache, "-f", "qcow2", "-O", "qcow2", self.disk, str(out)],
                       check=True)
        elapsed = time.time() - t0
        out.unlink()
        return elapsed

    def job(self) -> float:
        """libvirt's backup job of the server's disk, started and awaited directly."""
        import libvirt

        from nodes.domain_xml import backup_xml

        self.settle()
        out = self.tmp / "job" / "job.qcow2"
        conn = libvirt.open("qemu:///system")
        try:
            dom = conn.lookupByName(self.domain)
            t0 = time.time()
            dom.backupBegin(backup_xml("vda", str(out)), None, 0)
            while dom.jobStats(0).get("type", 0) != libvirt.VIR_DOMAIN_JOB_NONE:
                time.sleep(0.01)
            elapsed = time.time() - t0
            done = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        finally:
            conn.close()
        assert done.get("success", True) and out.stat().st_size > self.bytes // 2, (done, out)
        out.unlink()
        return elapsed

    def backup(self, path: str) -> tuple[float, float, int]:
        """(seconds from the API call, the backup's own seconds, stored bytes)"""
        known = {b["id"] for b in self.backups()}
        self.settle()
        deadline = time.time() + 60
        while True:  # the previous backup's operation may still be finishing (retention, events)
            t0 = time.time()
            summary = self.post(f"/api/v1/backup-plans/{self.plans[path]}/run/", {}, expect=200)["summary"]
            if "queued 1" in summary:
                break
            assert "in progress" in summary and time.time() < deadline, summary
            time.sleep(0.05)
        new = wait_for(lambda: next((b for b in self.backups() if b["id"] not in known and b["status"] != "running"),
                                    None), 600, "the backup", interval=0.2)
        assert new["status"] == "done" and new["kind"] == "full", new
        own = _seconds(_seconds(0, new["created_at"]), new["finished_at"])
        return _seconds(t0, new["finished_at"]), own, new["size_bytes"]

    def backups(self) -> list[dict]:
        body = self.panel.call(self.admin, "GET", f"/api/v1/servers/{self.server}/backups/").json()
        return body["results"] if isinstance(body, dict) else body


def _remove_pools(tmp: Path) -> None:
    """The node folder's libvirt pools that pointed into the benchmark's temporary folder."""
    import libvirt

    conn = libvirt.open("qemu:///system")
    try:
        for pool in conn.listAllStoragePools(0):
            if ET.fromstring(pool.XMLDesc(0)).findtext("target/path", "").startswith(str(tmp)):
                if pool.isActive():
                    pool.destroy()
                pool.undefine()
    finally:
        conn.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=5, help="samples per path (default 5)")
    ap.add_argument("--data-mib", type=int, default=512, help="random data written to the disk (default 512)")
    ap.add_argument("--cold", action="store_true", help="drop the page cache before every sample")
    ap.add_argument("--nat-cidr", default="10.77.24.0/24",
                    help="the local node's NAT test range (default 10.77.24.0/24; the e2e tests use 10.77.5.0/24)")
    args = parse_args(ap, tiny={"n": 1, "data_mib": 16})
    tmp = Path(tempfile.mkdtemp(prefix="benchbackup-"))
    tmp.chmod(0o755)
    try:
        with own_nat_range(args.nat_cidr) as env, live_panel(worker=True, env=env, tag="benchbk") as panel:
            bench = Bench(panel, args, tmp)
            bench.setup()
            print(f"disk: {bench.bytes / 2**20:.0f} MiB allocated; {'cold' if args.cold else 'warm'} page cache; "
                  "warming up …", flush=True)
            bench.floor(), bench.backup("node"), bench.backup("panel")
            own = []  # the node path's backups without the queue's wait

            def node() -> float:
                whole, alone, _ = bench.backup("node")
                own.append(alone)
                return whole

            paths = {"floor": bench.floor, "durable": lambda: bench.floor(durable=True), "job": bench.job,
                     "node": node,
                     **{p: (lambda p=p: bench.backup(p)[0]) for p in ("panel", "zstd")}}
            results = {p: [] for p in paths}
            names = list(paths)
            for i in range(args.n):
                for p in names[i % len(names):] + names[:i % len(names)]:
                    results[p].append(paths[p]())
                print(f"  {i + 1}/{args.n}: " + "  ".join(f"{p} {results[p][-1]:.2f} s" for p in names), flush=True)
            stored = bench.backup("zstd")[2]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_pools(tmp)
    mib = bench.bytes / 2**20
    p50 = {p: summary(v)["p50"] for p, v in results.items()}
    p50["node-own"] = summary(own)["p50"]
    floor, durable = p50["floor"], p50["durable"]
    print(f"\nfull backup of a running server, {mib:.0f} MiB allocated, "
          f"{'cold' if args.cold else 'warm'} page cache, n={args.n} (p50):")
    print(f"  {'':34} {'seconds':>8} {'min–max':>11} {'MiB/s':>8}  ratio to: floor  durable floor  job")
    rows = {"floor": "qemu-img convert (page cache)", "durable": "qemu-img convert -t writeback",
            "job": "libvirt's backup job alone",
            "node": "folder on the node", "node-own": "  the same, without queue wait",
            "panel": "panel's folder, none", "zstd": "panel's folder, zstd"}
    results["node-own"] = own
    for p, label in rows.items():
        t = p50[p]
        spread = f"{min(results[p]):.2f}–{max(results[p]):.2f}"
        print(f"  {label:<34} {t:8.2f} {spread:>11} {mib / t:8.1f}  {floor / t:14.2f}  {durable / t:13.2f}"
              f"  {p50['job'] / t:4.2f}")
    print(f"  (zstd stored {stored / 2**20:.0f} MiB: random data does not compress)")
    # This host's disk timings swing up to 3× from one sample to the next: the ratio of each
    # round's own pair (base and node, taken seconds apart) is shown beside the p50s'.
    for name, base in (("floor", "floor"), ("durable floor", "durable"), ("libvirt job alone", "job")):
        ratio = p50[base] / p50["node"]
        paired = sorted(b / n for b, n in zip(results[base], results["node"]))
        print(f"throughput ratio, folder on the node, to the {name}: {ratio:.2f} "
              f"(goal ≥ 0.8: {'met' if ratio >= 0.8 else 'NOT met'}); round by round "
              f"{summary(paired)['p50']:.2f} ({paired[0]:.2f}–{paired[-1]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Full backup throughput of a running server, against `qemu-img convert` of the same disk.

Figure: "full backup throughput as a ratio to `qemu-img convert` of the same disk in the same
run. Goal ≥ 0.8."

A live panel (own MariaDB database, daphne, one django-q2 cluster) on the local node
(qemu:///system). One server of the tiny template (1 GiB disk) is installed through the API,
stopped, given `--data-mib` MiB of random data (qemu-io, so zstd cannot shrink it) and started
again. Then N rounds, the order rotating every round:

  floor   `qemu-img convert -U -f qcow2 -O qcow2 <the running disk> <tmp>/floor.qcow2`
          (a subprocess; -U: the disk is in use), the output removed after.
  node    POST /api/v1/backup-plans/{plan}/run/ of a plan with full_every=1 (every backup is
          full), keep=1, to a folder on the server's node; the time until the new backup's
          `finished_at`. The whole path: the operation is queued and claimed, the target
          checked, libvirt's backup job writes the image into the folder, the node checksums
          it there (b3sum), the manifest is written, the previous backup pruned.
  panel   the same to a folder on the panel's host, compression none: the job writes a
          staging image that the panel streams over libvirt to the target, hashing it.
  zstd    the panel path with compression zstd (level 3, all cores).

With --cold the page cache is dropped before every sample of every path (a nightly backup of
disks larger than RAM reads them from the disk; the floor is measured the same way).
Throughput = the disk's allocated bytes (`qemu-img info`, "disk size") / seconds.

    DATABASE_URL=mysql://root@localhost/panel .venv/bin/python benchmarks/backup.py [--n 5] [--data-mib 512] [--cold]
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

from benchmarks.live import live_panel, summary  # noqa: E402
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
        plan = self.post("/api/v1/plans/", {"name": f"bbk-{secrets.token_hex(3)}", "vcpus": 1, "ram_mib": 128,
                                            "disk_gib": 1, "backups": 10})["id"]
        tenant = make_tenant(self.panel, "benchbackup")
        op = self.post("/api/v1/servers/", {"customer": tenant.customer_id, "plan": plan, "hostname": "bbk-1",
                                            "os_template": "tiny"}, expect=202)
        op = self.panel.wait_operation(self.admin, op["id"], timeout=300)
        assert op["status"] == "succeeded", op
        self.server = op["server"]
        self.action("stop", {"force": True})
        server = self.panel.call(self.admin, "GET", f"/api/v1/servers/{self.server}/").json()
        name = "vps-" + server["uuid"].replace("-", "")[:12]
        xml = subprocess.run(["virsh", "-c", "qemu:///system", "dumpxml", name], capture_output=True, text=True,
                             check=True).stdout
        self.disk = ET.fromstring(xml).find("devices/disk[@device='disk']/source").get("file")
        random = self.tmp / "random.bin"
        random.write_bytes(secrets.token_bytes(self.args.data_mib * 2**20))
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -s {random} 16M {self.args.data_mib}M", self.disk],
                       check=True, capture_output=True)
        random.unlink()
        self.action("start", {})
        info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", self.disk], check=True,
                                         capture_output=True, text=True).stdout)
        self.bytes = info["actual-size"]
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

    def drop_caches(self) -> None:
        if self.args.cold:
            os.sync()
            Path("/proc/sys/vm/drop_caches").write_text("3\n")

    def floor(self) -> float:
        self.drop_caches()
        out = self.tmp / "floor.qcow2"
        t0 = time.time()
        subprocess.run(["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "qcow2", self.disk, str(out)], check=True)
        elapsed = time.time() - t0
        out.unlink()
        return elapsed

    def backup(self, path: str) -> tuple[float, int]:
        known = {b["id"] for b in self.backups()}
        self.drop_caches()
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
        return _seconds(t0, new["finished_at"]), new["size_bytes"]

    def backups(self) -> list[dict]:
        body = self.panel.call(self.admin, "GET", f"/api/v1/servers/{self.server}/backups/").json()
        return body["results"] if isinstance(body, dict) else body


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=5, help="samples per path (default 5)")
    ap.add_argument("--data-mib", type=int, default=512, help="random data written to the disk (default 512)")
    ap.add_argument("--cold", action="store_true", help="drop the page cache before every sample")
    args = ap.parse_args()
    env = {"LOCAL_NAT_CIDR": "10.77.24.0/24", "BIND": "127.0.0.1,10.77.24.1"}
    tmp = Path(tempfile.mkdtemp(prefix="benchbackup-"))
    tmp.chmod(0o755)
    try:
        with live_panel(worker=True, env=env, tag="benchbk") as panel:
            bench = Bench(panel, args, tmp)
            bench.setup()
            print(f"disk: {bench.bytes / 2**20:.0f} MiB allocated; {'cold' if args.cold else 'warm'} page cache; "
                  "warming up …", flush=True)
            bench.floor(), bench.backup("node"), bench.backup("panel")
            paths = {"floor": bench.floor, **{p: (lambda p=p: bench.backup(p)[0]) for p in ("node", "panel", "zstd")}}
            results = {p: [] for p in paths}
            names = list(paths)
            for i in range(args.n):
                for p in names[i % len(names):] + names[:i % len(names)]:
                    results[p].append(paths[p]())
                print(f"  {i + 1}/{args.n}: " + "  ".join(f"{p} {results[p][-1]:.2f} s" for p in names), flush=True)
            stored = bench.backup("zstd")[1]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    mib = bench.bytes / 2**20
    floor = summary(results["floor"])["p50"]
    print(f"\nfull backup of a running server, {mib:.0f} MiB allocated, n={args.n} (p50):")
    print(f"  floor  qemu-img convert              {floor:6.2f} s  {mib / floor:7.1f} MiB/s")
    labels = {"node": "folder on the node", "panel": "panel's folder, none", "zstd": "panel's folder, zstd"}
    for p, label in labels.items():
        t = summary(results[p])["p50"]
        print(f"  panel  {label:<24}  {t:6.2f} s  {mib / t:7.1f} MiB/s  ratio {floor / t:.2f}")
    print(f"  (zstd stored {stored / 2**20:.0f} MiB: random data does not compress)")
    ratio = floor / summary(results["node"])["p50"]
    print(f"\nthroughput ratio (folder on the node) = {ratio:.2f} (goal ≥ 0.8: {'met' if ratio >= 0.8 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""OVA export throughput of a stopped server, against `qemu-img convert` of the same disk.

Figure: "OVA export throughput as a ratio to `qemu-img convert` of the same disk" (issue 23).

A live panel (own MariaDB database, daphne, one django-q2 cluster) on the local node
(qemu:///system). One server of the tiny template is installed through the API, stopped and
given `--data-mib` MiB of random data (qemu-io). Then N rounds, the order alternating:

  floor   `qemu-img convert -f qcow2 -O vmdk -o subformat=streamOptimized <the disk> <tmp>`:
          the conversion alone, the one step an OVA cannot do without (a subprocess).
  panel   POST /api/v1/servers/{id}/export-ova/ (vmdk) until the operation's `finished_at`:
          queued and claimed, the node converts the disk (the same qemu-img), the panel reads
          it over libvirt's stream into its data dir, checksums it (SHA256), writes the
          descriptor and the manifest and packs the tar. Also shown: the operation's own time
          (`started_at` to `finished_at`, without the queue's wait).

Throughput = the disk's allocated bytes (`qemu-img info`, "disk size") / seconds.

    DATABASE_URL=mysql://root@localhost/panel .venv/bin/python benchmarks/ova_export.py [--n 5] [--data-mib 512]
        [--nat-cidr 10.77.31.0/24] [--tiny]
"""

import argparse
import json
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
from tests.e2e.conftest import make_tenant  # noqa: E402


def _at(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


class Bench:
    def __init__(self, panel, args, tmp: Path):
        self.panel, self.args, self.tmp = panel, args, tmp
        self.admin = panel.admin_key

    def post(self, path: str, body: dict, expect: int = 201) -> dict:
        r = self.panel.call(self.admin, "POST", path, json=body)
        assert r.status_code == expect, r.text
        return r.json()

    def setup(self) -> None:
        disk_gib = -(-(16 + self.args.data_mib) // 1024)
        plan = self.post("/api/v1/plans/", {"name": f"bova-{secrets.token_hex(3)}", "vcpus": 1, "ram_mib": 128,
                                            "disk_gib": disk_gib})["id"]
        tenant = make_tenant(self.panel, "benchova")
        op = self.post("/api/v1/servers/", {"customer": tenant.customer_id, "plan": plan, "hostname": "bova-1",
                                            "os_template": "tiny"}, expect=202)
        op = self.panel.wait_operation(self.admin, op["id"], timeout=300)
        assert op["status"] == "succeeded", op
        self.server = op["server"]
        op = self.post(f"/api/v1/servers/{self.server}/stop/", {"force": True}, expect=202)
        assert self.panel.wait_operation(self.admin, op["id"], timeout=120)["status"] == "succeeded"
        server = self.panel.call(self.admin, "GET", f"/api/v1/servers/{self.server}/").json()
        name = "vps-" + server["uuid"].replace("-", "")[:12]
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
        info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", self.disk], check=True,
                                         capture_output=True, text=True).stdout)
        self.bytes = info["actual-size"]

    def floor(self) -> float:
        out = self.tmp / "floor.vmdk"
        t0 = time.time()
        subprocess.run(["qemu-img", "convert", "-q", "-f", "qcow2", "-O", "vmdk", "-o", "subformat=streamOptimized",
                        self.disk, str(out)], check=True)
        elapsed = time.time() - t0
        out.unlink()
        return elapsed

    def export(self) -> tuple[float, float, int]:
        """(seconds from the API call, the operation's own seconds, the OVA's bytes)"""
        t0 = time.time()
        op = self.post(f"/api/v1/servers/{self.server}/export-ova/", {"format": "vmdk"}, expect=202)
        op = self.panel.wait_operation(self.admin, op["id"], timeout=600)
        assert op["status"] == "succeeded", op
        size = op.get("params", {}).get("size") or 0
        return _at(op["finished_at"]) - t0, _at(op["finished_at"]) - _at(op["started_at"]), size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=5, help="samples per path (default 5)")
    ap.add_argument("--data-mib", type=int, default=512, help="random data written to the disk (default 512)")
    ap.add_argument("--nat-cidr", default="10.77.31.0/24",
                    help="the local node's NAT test range (default 10.77.31.0/24; the e2e tests use 10.77.5.0/24)")
    args = parse_args(ap, tiny={"n": 1, "data_mib": 16})
    tmp = Path(tempfile.mkdtemp(prefix="benchova-"))
    tmp.chmod(0o755)
    try:
        with own_nat_range(args.nat_cidr) as env, live_panel(worker=True, env=env, tag="benchova") as panel:
            bench = Bench(panel, args, tmp)
            bench.setup()
            print(f"disk: {bench.bytes / 2**20:.0f} MiB allocated; warming up …", flush=True)
            bench.floor(), bench.export()
            floors, panels, own = [], [], []
            for i in range(args.n):
                pair = [("floor", bench.floor), ("panel", bench.export)]
                for name, fn in pair if i % 2 == 0 else pair[::-1]:
                    result = fn()
                    if name == "floor":
                        floors.append(result)
                    else:
                        panels.append(result[0])
                        own.append(result[1])
                print(f"  {i + 1}/{args.n}: floor {floors[-1]:.2f} s  panel {panels[-1]:.2f} s "
                      f"(own {own[-1]:.2f} s)", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    mib = bench.bytes / 2**20
    floor, whole, alone = (summary(v)["p50"] for v in (floors, panels, own))
    print(f"\nOVA export (streamOptimized VMDK) of a stopped server, {mib:.0f} MiB allocated, n={args.n} (p50):")
    for label, t in (("qemu-img convert (the floor)", floor), ("export-ova, API call to finished", whole),
                     ("  the operation alone", alone)):
        print(f"  {label:<36} {t:8.2f} s {mib / t:8.1f} MiB/s")
    print(f"throughput ratio, OVA export to qemu-img convert: {floor / whole:.2f} "
          f"(the operation alone: {floor / alone:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Provisioning latency: API create → guest running, image-based path, against the raw floor.

Figure: "API create → guest running, for the image-based path, as a ratio to the raw floor
measured in the same run (`qemu-img create -b` overlay + `virsh create` of the same domain).
Goal ≤ 1.3×."

A live panel (own MariaDB database, daphne, one django-q2 cluster) on the local node
(qemu:///system), whose cluster gets the NAT demo network in a test range of its own
(`--nat-cidr`, default 10.77.23.0/24; the panel also listens on its gateway so the guest can
fetch its install config). Then N rounds, the order of the paths rotating every round:

  panel   t0 = before POST /api/v1/servers/ {plan 1 vCPU/128 MiB/1 GiB, os_template tiny,
          no recipe} with a customer key; the server is deleted afterwards (its delete
          operation waited for), so every sample starts clean.
  floor   t0 = before `qemu-img create -f qcow2 -F qcow2 -b <share>/tiny/disk.qcow2 <tmp>/….qcow2 1G`,
          then `virsh -c qemu:///system create <xml>` (both subprocesses) of the same domain:
          the panel server's own domain XML (inactive definition, taken right after it
          started, i.e. the installer boot), with another name, uuid, disk path, serial log
          path and MAC, and without <metadata>. The <interface> (bridge, clean-traffic
          filter, bandwidth) is kept unless --no-nic. `virsh destroy` right after.
  libvirt (informational) the calls the panel's worker makes, from this process through
          libvirt-python without the panel: refresh of the panel's storage pool, volume
          createXML with the backing store, defineXML, create. Destroyed, undefined and its
          volume deleted right after.

and t1 = when this process's own qemu:///system connection receives the domain's lifecycle
event STARTED (recorded for every domain of the panel's and this script's prefixes, matched
by name afterwards, since the panel's domain name `vps-<uuid hex[:12]>` is known only after
the 202 answer). Also for the panel: t2 = the create operation's `finished_at` (install
complete, the guest called back, the server active): "→ active", informational.

    DATABASE_URL=mysql://root@localhost/panel .venv/bin/python benchmarks/provision.py [--n 10]
        [--warmup 1] [--settle 1.0] [--no-nic] [--nat-cidr 10.77.23.0/24] [--env K=V] [--tiny]
"""

import argparse
import contextlib
import ipaddress
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import libvirt  # noqa: E402

from benchmarks.live import host_net_state, live_panel, parse_args, summary, undo_host_net  # noqa: E402
from nodes.domain_xml import volume_xml  # noqa: E402
from tests.e2e.conftest import make_tenant, panel_db_rows, wait_for  # noqa: E402

GOAL_RATIO = 1.3
URI = "qemu:///system"
EVENTS = {libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined", libvirt.VIR_DOMAIN_EVENT_STARTED: "started",
          libvirt.VIR_DOMAIN_EVENT_STOPPED: "stopped", libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "undefined"}


class Lifecycle:
    """Lifecycle events of every domain whose name has one of `prefixes`, time-stamped
    (perf_counter) by libvirt's event loop thread, kept by domain name."""

    def __init__(self, prefixes: tuple[str, ...]):
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        # The default event implementation must be registered before the connection is opened.
        libvirt.virEventRegisterDefaultImpl()
        self.prefixes = prefixes
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="libvirt-events", daemon=True)
        self._thread.start()
        self.conn = libvirt.open(URI)
        self._cond = threading.Condition()
        self.seen: dict[str, list[tuple[str, float]]] = {}
        self._cb = self.conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_event, None)

    def _loop(self) -> None:
        while self._running:
            libvirt.virEventRunDefaultImpl()

    def _on_event(self, _conn, dom, event, _detail, _opaque) -> None:
        now = time.perf_counter()
        name = dom.name()
        if event in EVENTS and name.startswith(self.prefixes):
            with self._cond:
                self.seen.setdefault(name, []).append((EVENTS[event], now))
                self._cond.notify_all()

    def first(self, name: str, kind: str) -> float | None:
        with self._cond:
            return next((at for got, at in self.seen.get(name, []) if got == kind), None)

    def wait(self, name: str, kind: str, timeout: float = 120) -> float:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                at = next((at for got, at in self.seen.get(name, []) if got == kind), None)
                if at is not None:
                    return at
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {kind} event for {name} within {timeout} s")
                self._cond.wait(left)

    def forget(self, name: str) -> None:
        with self._cond:
            self.seen.pop(name, None)

    def close(self) -> None:
        self._running = False
        with contextlib.suppress(libvirt.libvirtError):
            self.conn.domainEventDeregisterAny(self._cb)
            self.conn.close()


def _ts(value) -> float:
    """An API timestamp (ISO, 'Z') or a naive UTC datetime from the database, as epoch seconds."""
    if isinstance(value, str):
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return value.replace(tzinfo=timezone.utc).timestamp()


def _random_mac() -> str:
    return "52:54:00:%02x:%02x:%02x" % tuple(random.randrange(256) for _ in range(3))


def floor_xml(panel_xml: str, name: str, disk: str, keep_nic: bool) -> str:
    """The panel server's domain as another domain: name, uuid, disk, serial log, MAC; no metadata."""
    root = ET.fromstring(panel_xml)
    root.find("name").text = name
    root.find("uuid").text = str(uuid.uuid4())
    meta = root.find("metadata")
    if meta is not None:
        root.remove(meta)
    devices = root.find("devices")
    for d in devices.findall("disk"):
        if d.get("device") == "disk" and d.find("target").get("dev") == "vda":
            d.find("source").set("file", disk)
            backing = d.find("backingStore")
            if backing is not None:
                d.remove(backing)
    for tag in ("serial", "console"):
        for el in devices.findall(tag):
            src = el.find("source")
            if src is not None and src.get("path"):
                src.set("path", f"/var/log/libvirt/qemu/{name}-serial.log")
    for nic in devices.findall("interface"):
        if keep_nic:
            nic.find("mac").set("address", _random_mac())
            target = nic.find("target")
            if target is not None:
                nic.remove(target)
        else:
            devices.remove(nic)
    return ET.tostring(root, encoding="unicode")


def nic_summary(xml: str) -> str:
    parts = []
    for nic in ET.fromstring(xml).findall("devices/interface"):
        src = nic.find("source")
        what = [f"bridge {src.get('bridge')}" if src is not None else nic.get("type")]
        if nic.find("filterref") is not None:
            what.append(f"{nic.find('filterref').get('filter')} filter")
        if nic.find("bandwidth") is not None:
            what.append("bandwidth")
        parts.append(", ".join(what))
    return "; ".join(parts) or "none in the panel's domain"


class Bench:
    def __init__(self, panel, events: Lifecycle, args, prefix: str, tmp: Path):
        self.panel, self.events, self.args, self.prefix, self.tmp = panel, events, args, prefix, tmp
        self.conn = events.conn
        self.share = Path(panel.env["TEMPLATE_SHARE"])
        self.base = self.share / "tiny" / "disk.qcow2"
        self.panel_xml: str | None = None
        self.live_servers: dict[int, str] = {}  # server id → domain name, until deleted
        self.op_log = ""
        self.pool_name = ""

    # -- setup -----------------------------------------------------------------------------------
    def setup(self) -> None:
        admin = self.panel.admin_key
        r = self.panel.call(admin, "POST", "/api/v1/plans/",
                            json={"name": "bench-prov", "vcpus": 1, "ram_mib": 128, "disk_gib": 1})
        assert r.status_code == 201, r.text
        self.plan = r.json()["id"]
        self.tenant = make_tenant(self.panel, "benchprov")
        self.api = self.panel.api(self.tenant.key)
        templates = self.panel.call(admin, "GET", "/api/v1/os-templates/")
        if templates.status_code == 200 and "tiny" not in templates.text:
            raise SystemExit(f"the tiny template is not on the share: {templates.text[:500]}")
        storage = panel_db_rows(self.panel, "SELECT name FROM nodes_storage")
        self.pool_name = f"panel-{storage[0][0]}"
        if not self.base.exists():
            raise SystemExit(f"{self.base} is missing")

    # -- panel -----------------------------------------------------------------------------------
    def panel_sample(self, i: int) -> dict:
        wall0, t0 = time.time(), time.perf_counter()
        r = self.api.post(self.panel.url + "/api/v1/servers/",
                          json={"plan": self.plan, "os_template": "tiny", "hostname": f"bprov-{i}"}, timeout=60)
        t_api = time.perf_counter()
        if r.status_code != 202:
            raise RuntimeError(f"create: {r.status_code} {r.text}")
        op_id, sid = r.json()["id"], r.json()["server"]
        # The domain's name, from the database (cheaper than another API request while measuring).
        hexid = str(panel_db_rows(self.panel, "SELECT uuid FROM vps_virtualserver WHERE id = %s", sid)[0][0])
        name = "vps-" + hexid.replace("-", "")[:12]
        self.live_servers[sid] = name
        t1 = self.events.wait(name, "started", timeout=120)
        t_def = self.events.first(name, "defined")
        # Its definition now is the installer boot (redefined for the installed system only
        # after the call-back, seconds later): the floor's domain.
        with contextlib.suppress(libvirt.libvirtError):
            self.panel_xml = self.conn.lookupByName(name).XMLDesc(
                libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE)

        def done():
            o = self.panel.call(self.tenant.key, "GET", f"/api/v1/operations/{op_id}/").json()
            return o if o["status"] in ("succeeded", "failed") else None

        op = wait_for(done, 300, f"create operation {op_id}", interval=0.1)
        if op["status"] != "succeeded":
            raise RuntimeError(f"create operation failed: {op.get('error')}\n{op.get('log')}")
        self.op_log = op.get("log", "")
        inst = panel_db_rows(self.panel, "SELECT config_served_at, finished_at FROM templates_os_installation "
                                         "WHERE operation_id = %s", op_id)
        served, called = inst[0] if inst else (None, None)
        claimed = _ts(op["started_at"]) - wall0
        sample = {
            "total": (t1 - t0) * 1000,
            "active": (_ts(op["finished_at"]) - wall0) * 1000,
            "api": (t_api - t0) * 1000,
            "queue": (claimed - (t_api - t0)) * 1000,
            "to_defined": ((t_def - t0) - claimed) * 1000 if t_def else float("nan"),
            "defined_to_started": (t1 - t_def) * 1000 if t_def else float("nan"),
            "to_config": ((_ts(served) - wall0) - (t1 - t0)) * 1000 if served else float("nan"),
            "to_callback": ((_ts(called) - wall0) - (_ts(served) - wall0)) * 1000 if served and called else float("nan"),
            "callback_to_active": ((_ts(op["finished_at"]) - wall0) - (_ts(called) - wall0)) * 1000 if called else float("nan"),
        }
        self.delete_server(sid)
        self.events.forget(name)
        return sample

    def delete_server(self, sid: int, timeout: float = 120) -> None:
        r = self.panel.call(self.panel.admin_key, "DELETE", f"/api/v1/servers/{sid}/")
        if r.status_code == 202:
            op = self.panel.wait_operation(self.panel.admin_key, r.json()["id"], timeout=timeout)
            if op["status"] != "succeeded":
                raise RuntimeError(f"delete of server {sid} failed: {op.get('error')}")
        elif r.status_code != 404:
            raise RuntimeError(f"delete of server {sid}: {r.status_code} {r.text}")
        name = self.live_servers.pop(sid, None)
        if name:  # the panel keeps a deleted server's QEMU and serial logs: ours are temp files
            for log in (f"/var/log/libvirt/qemu/{name}-serial.log", f"/var/log/libvirt/qemu/{name}.log"):
                with contextlib.suppress(OSError):
                    os.unlink(log)

    # -- floor: qemu-img + virsh create ----------------------------------------------------------
    def floor_sample(self, i: int) -> dict:
        name = f"{self.prefix}floor-{i}"
        disk = self.tmp / f"floor-{i}.qcow2"
        xml_path = self.tmp / f"floor-{i}.xml"
        xml_path.write_text(floor_xml(self.panel_xml, name, str(disk), not self.args.no_nic))
        try:
            t0 = time.perf_counter()
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(self.base),
                            str(disk), "1G"], check=True, capture_output=True, timeout=60)
            t_img = time.perf_counter()
            out = subprocess.run(["virsh", "-q", "-c", URI, "create", str(xml_path)], capture_output=True,
                                 text=True, timeout=120)
            t_ret = time.perf_counter()
            if out.returncode != 0:
                raise RuntimeError(f"virsh create: {out.stderr.strip()}")
            t1 = self.events.wait(name, "started", timeout=60)
        finally:
            self.remove_floor(name)
            disk.unlink(missing_ok=True)
            xml_path.unlink(missing_ok=True)
        return {"total": (t1 - t0) * 1000, "qemu_img": (t_img - t0) * 1000, "virsh": (t_ret - t_img) * 1000}

    def remove_floor(self, name: str) -> None:
        subprocess.run(["virsh", "-q", "-c", URI, "destroy", name], capture_output=True, timeout=60)
        for log in (f"/var/log/libvirt/qemu/{name}-serial.log", f"/var/log/libvirt/qemu/{name}.log"):
            with contextlib.suppress(OSError):
                os.unlink(log)
        self.events.forget(name)

    # -- the worker's libvirt calls, without the panel ------------------------------------------
    def libvirt_sample(self, i: int) -> dict:
        name = f"{self.prefix}lv-{i}"
        vol_name = f"{name}-disk0.qcow2"
        vol = dom = None
        try:
            t0 = time.perf_counter()
            pool = self.conn.storagePoolLookupByName(self.pool_name)
            pool.refresh(0)
            t_ref = time.perf_counter()
            vol = pool.createXML(volume_xml(vol_name, 1, backing=str(self.base)), 0)
            t_vol = time.perf_counter()
            dom = self.conn.defineXML(floor_xml(self.panel_xml, name, vol.path(), not self.args.no_nic))
            dom.create()
            t1 = self.events.wait(name, "started", timeout=60)
        finally:
            self.remove_lv(name, vol_name)
        return {"total": (t1 - t0) * 1000, "refresh": (t_ref - t0) * 1000, "volume": (t_vol - t_ref) * 1000,
                "define_start": (t1 - t_vol) * 1000}

    def remove_lv(self, name: str, vol_name: str) -> None:
        with contextlib.suppress(libvirt.libvirtError):
            dom = self.conn.lookupByName(name)
            with contextlib.suppress(libvirt.libvirtError):
                dom.destroy()
            dom.undefine()
        with contextlib.suppress(libvirt.libvirtError):
            self.conn.storagePoolLookupByName(self.pool_name).storageVolLookupByName(vol_name).delete(0)
        for log in (f"/var/log/libvirt/qemu/{name}-serial.log", f"/var/log/libvirt/qemu/{name}.log"):
            with contextlib.suppress(OSError):
                os.unlink(log)
        self.events.forget(name)

    # -- clean-up on any exit --------------------------------------------------------------------
    def cleanup(self) -> None:
        for sid in list(self.live_servers):
            with contextlib.suppress(Exception):
                self.delete_server(sid, timeout=60)
        for name in self.live_servers.values():  # the panel could not delete them: by hand
            self.remove_lv(name, f"{name}-disk0.qcow2")
        with contextlib.suppress(libvirt.libvirtError):
            for dom in self.conn.listAllDomains(0):
                if dom.name().startswith(self.prefix):
                    self.remove_lv(dom.name(), f"{dom.name()}-disk0.qcow2")
        if self.pool_name:
            with contextlib.suppress(libvirt.libvirtError):
                for vol in self.conn.storagePoolLookupByName(self.pool_name).listAllVolumes(0):
                    if vol.name().startswith(self.prefix):
                        vol.delete(0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10, help="samples per path (default 10)")
    ap.add_argument("--warmup", type=int, default=1, help="unrecorded rounds first (default 1)")
    ap.add_argument("--settle", type=float, default=1.0,
                    help="idle seconds after each sample, so the worker is back to polling (default 1.0)")
    ap.add_argument("--no-nic", action="store_true", help="floor domains without the <interface>")
    ap.add_argument("--no-libvirt-row", action="store_true", help="skip the informational libvirt-calls path")
    ap.add_argument("--nat-cidr", default="10.77.23.0/24",
                    help="the local node's NAT test range (default 10.77.23.0/24; the e2e tests use 10.77.5.0/24)")
    ap.add_argument("--env", action="append", default=[], metavar="K=V",
                    help="extra environment for the panel processes (e.g. Q_POLL=0.05); repeatable")
    args = parse_args(ap, tiny={"n": 1, "warmup": 0, "settle": 0.1})
    extra_env = dict(item.split("=", 1) for item in args.env)
    gateway = str(next(ipaddress.ip_network(args.nat_cidr).hosts()))
    env = {"LOCAL_NAT_CIDR": args.nat_cidr, "BIND": f"127.0.0.1,{gateway}", **extra_env}

    prefix = f"bprov{secrets.token_hex(3)}-"
    tmp = Path(tempfile.mkdtemp(prefix="benchprov-"))
    tmp.chmod(0o755)  # QEMU (libvirt-qemu) opens the overlays in here
    net_before = host_net_state(args.nat_cidr)
    events = Lifecycle(("vps-", prefix))
    bench = None
    try:
        with live_panel(worker=True, env=env, tag="benchpv") as panel:
            bench = Bench(panel, events, args, prefix, tmp)
            try:
                return run(bench, args, env)
            finally:
                bench.cleanup()
    finally:
        events.close()
        shutil.rmtree(tmp, ignore_errors=True)
        undo_host_net(args.nat_cidr, net_before)


def run(bench: Bench, args, env: dict) -> int:
    bench.setup()
    paths = ["panel", "floor"] + ([] if args.no_libvirt_row else ["libvirt"])
    do = {"panel": bench.panel_sample, "floor": bench.floor_sample, "libvirt": bench.libvirt_sample}
    results = {p: [] for p in paths}

    print("warming up (one server through the API first: the floor copies its domain) …", flush=True)
    for w in range(args.warmup):
        for p in paths:
            do[p](-1 - w)
            time.sleep(args.settle)
    if bench.panel_xml is None:  # --warmup 0
        do["panel"](-1)
        time.sleep(args.settle)
    print(f"measuring {args.n} samples per path, order rotating every round …", flush=True)
    for i in range(args.n):
        order = paths[i % len(paths):] + paths[:i % len(paths)]
        for p in order:
            results[p].append(do[p](i))
            time.sleep(args.settle)
        print(f"  {i + 1}/{args.n}: " + "  ".join(f"{p} {results[p][-1]['total']:.0f}" for p in paths)
              + f"  (→ active {results['panel'][-1]['active']:.0f}) ms", flush=True)
    return report(bench, results, args, env)


def _st(values) -> dict:
    return summary(v for v in values if v == v)  # without NaN


def report(bench: Bench, results: dict, args, env: dict) -> int:
    n = args.n
    panel = _st(s["total"] for s in results["panel"])
    floor = _st(s["total"] for s in results["floor"])
    r50, r95 = panel["p50"] / floor["p50"], panel["p95"] / floor["p95"]

    def row(st: dict) -> str:
        return f"p50 {st['p50']:7.1f}  p95 {st['p95']:7.1f}  mean {st['mean']:7.1f}  max {st['max']:7.1f}"

    def split(path: str, keys: tuple[str, ...]) -> str:
        parts = []
        for k in keys:
            st = _st(s[k] for s in results[path])
            parts.append(f"{k} {st['p50']:.1f}/{st['p95']:.1f}")
        return "   ".join(parts)

    print()
    print(f"Provisioning: API create → guest running (libvirt STARTED), image-based path, tiny template, "
          f"1 vCPU/128 MiB/1 GiB (n={n} per row, ms)")
    extra = {k: v for k, v in env.items() if k not in ("LOCAL_NAT_CIDR", "BIND")}
    print(f"  panel: ORM broker, Q_POLL {env.get('Q_POLL', '0.1 (default)')}, settle {args.settle} s between samples, "
          f"local node's NAT network {env['LOCAL_NAT_CIDR']}" + (f", env {extra}" if extra else ""))
    print(f"  panel    {row(panel)}")
    print(f"  floor    {row(floor)}")
    print(f"           (floor = qemu-img create -b overlay + virsh create of the panel server's own domain XML, "
          f"interface {'dropped' if args.no_nic else 'kept: ' + nic_summary(bench.panel_xml)})")
    print(f"  ratio panel/floor   p50 {r50:5.2f}×   p95 {r95:5.2f}×")
    print("  split p50/p95:")
    print("    panel  " + split("panel", ("api", "queue", "to_defined", "defined_to_started")))
    print("    floor  " + split("floor", ("qemu_img", "virsh")))
    if "libvirt" in results:
        lv = _st(s["total"] for s in results["libvirt"])
        print(f"  libvirt  {row(lv)}")
        print("           (the worker's libvirt calls from this process: pool refresh + volume createXML with backing "
              "+ defineXML + create)")
        print("    split  " + split("libvirt", ("refresh", "volume", "define_start")))
    active = _st(s["active"] for s in results["panel"])
    print(f"  → active (install complete, called back, operation succeeded)  {row(active)}")
    print("    after STARTED  " + split("panel", ("to_config", "to_callback", "callback_to_active")))
    print("  split: api = POST answered; queue = answer → operation claimed by a worker (started_at);")
    print("         to_defined = claimed → DEFINED event (steps, pool refresh, overlay volume, define);")
    print("         defined_to_started = DEFINED → STARTED (dom.create); to_config = STARTED → guest fetched its config;")
    print("         to_callback = config → call-back; callback_to_active = call-back → operation finished")
    print(f"  machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end of the run")
    if bench.op_log:
        print("  last create operation's log:")
        for line in bench.op_log.strip().splitlines():
            print(f"    {line}")
    met = r50 <= GOAL_RATIO and r95 <= GOAL_RATIO
    print(f"\n  goal: panel/floor ≤ {GOAL_RATIO}× (p50 and p95): {'MET' if met else 'NOT MET'} "
          f"(p50 {r50:.2f}×, p95 {r95:.2f}×)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; cleaned up", file=sys.stderr)
        sys.exit(130)

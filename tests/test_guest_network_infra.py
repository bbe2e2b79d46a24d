"""Self-test of the tiny guest's networking (panel.ip=/panel.dns=), tests/guest.py and
libvirt's clean-traffic anti-spoofing filter on this machine.

Run: cd /work/main && .venv/bin/python -m pytest tests/test_guest_network_infra.py -q -p no:xdist
Needs root, libvirt + QEMU (host's qemu:///system), iproute2, ebtables/iptables and the
tiny guest (deploy/build_demo_os.sh). No Django database. Uses only the host
bridge pnltnet0 (10.77.9.1/24) and domains named netcheck-*, removed afterwards; the
optional cluster test uses tests/cluster.py with public=True (pnltpub0, 10.77.1.1/24).
"""
from __future__ import annotations

import functools
import os
import re
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.guest import guest_command, type_into, wait_shell

pytestmark = [pytest.mark.e2e]

URI = "qemu:///system"
BRIDGE = "pnltnet0"
GATEWAY = "10.77.9.1"
PREFIX = "netcheck-"
TINY_GUEST = Path(__file__).resolve().parent.parent / ".cache" / "tiny-guest"
BUILD = Path(__file__).resolve().parent.parent / "deploy" / "build_demo_os.sh"
BOOT_TIMEOUT = 60.0
TIMINGS: dict[str, float] = {}


def _sh(args, check=True, **kw):
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    cp = subprocess.run(args, check=False, **kw)
    if check and cp.returncode != 0:
        raise AssertionError(f"{args}: {cp.returncode}\n{cp.stderr}{cp.stdout}")
    return cp


def _virsh(run, *args, check=True):
    cp = run(["virsh", "-q", "-c", URI, *args], capture_output=True, text=True)
    if check and cp.returncode != 0:
        raise AssertionError(f"virsh {' '.join(args)}: {cp.returncode}\n{cp.stderr}{cp.stdout}")
    return cp


def domain_xml(name: str, serial: str, cmdline: str, bridge: str, ip_filter: str | None = None,
               mac: str | None = None) -> str:
    """A tiny guest with one virtio NIC in `bridge` (optionally clean-traffic for ip_filter)."""
    dom = ET.Element("domain", type="qemu")
    ET.SubElement(dom, "name").text = name
    ET.SubElement(dom, "memory", unit="MiB").text = "192"
    ET.SubElement(dom, "vcpu").text = "1"
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type", arch="x86_64", machine="pc").text = "hvm"
    ET.SubElement(os_el, "kernel").text = str(TINY_GUEST / "vmlinuz")
    ET.SubElement(os_el, "initrd").text = str(TINY_GUEST / "initrd.img")
    ET.SubElement(os_el, "cmdline").text = cmdline
    ET.SubElement(ET.SubElement(dom, "features"), "acpi")
    ET.SubElement(dom, "on_poweroff").text = "destroy"
    ET.SubElement(dom, "on_reboot").text = "restart"
    ET.SubElement(dom, "on_crash").text = "destroy"
    dev = ET.SubElement(dom, "devices")
    nic = ET.SubElement(dev, "interface", type="bridge")
    if mac:
        ET.SubElement(nic, "mac", address=mac)
    ET.SubElement(nic, "source", bridge=bridge)
    ET.SubElement(nic, "model", type="virtio")
    if ip_filter:
        f = ET.SubElement(nic, "filterref", filter="clean-traffic")
        ET.SubElement(f, "parameter", name="IP", value=ip_filter)
    for tag, attrs in (("serial", {}), ("console", {"type": "serial"})):
        el = ET.SubElement(dev, tag, type="file")
        ET.SubElement(el, "source", path=serial)
        ET.SubElement(el, "target", port="0", **attrs)
    ET.SubElement(dev, "graphics", type="vnc", port="-1", autoport="yes", listen="127.0.0.1")
    ET.SubElement(ET.SubElement(dev, "video"), "model", type="vga")
    ET.SubElement(dev, "memballoon", model="none")
    return ET.tostring(dom, encoding="unicode")


class Guest:
    """A tiny guest on some libvirt (run: subprocess.run or a cluster node's run)."""

    def __init__(self, run, name: str, serial_on_host: str):
        self.run, self.name, self.serial = run, name, serial_on_host

    def log(self) -> str:
        try:
            return Path(self.serial).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for(self, pattern: str, timeout: float = BOOT_TIMEOUT) -> re.Match:
        end = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.log(), re.MULTILINE)
            if m:
                return m
            if time.monotonic() > end:
                pytest.fail(f"{self.name}: no {pattern!r} in the serial log after {timeout:.0f} s:\n"
                            + self.log()[-2000:])
            time.sleep(0.1)

    def cmd(self, command: str, timeout: float = 60.0) -> tuple[int, str]:
        return guest_command(self.run, self.name, self.log, command, timeout=timeout)


def _cleanup_domains(run):
    cp = _virsh(run, "list", "--all", "--name", check=False)
    for name in cp.stdout.split():
        if name.startswith(PREFIX):
            _virsh(run, "destroy", name, check=False)
            _virsh(run, "undefine", name, "--nvram", check=False)
            _virsh(run, "undefine", name, check=False)


def _define_and_start(run, name: str, xml: str, serial_on_host: str) -> Guest:
    cp = run(["virsh", "-q", "-c", URI, "define", "/dev/stdin"], input=xml,
             capture_output=True, text=True)
    assert cp.returncode == 0, cp.stderr
    if os.path.exists(serial_on_host):
        os.unlink(serial_on_host)
    _virsh(run, "start", name)
    return Guest(run, name, serial_on_host)


@pytest.fixture(scope="module")
def tiny_guest():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    cp = _sh(["bash", str(BUILD)], check=False)
    if cp.returncode != 0:
        pytest.skip(f"cannot build the tiny guest: {cp.stderr.strip()}")
    if _virsh(subprocess.run, "version", check=False).returncode != 0:
        pytest.skip("host libvirtd is not running (tests/infra/start_services.sh)")
    return TINY_GUEST


@pytest.fixture(scope="module")
def netbridge(tiny_guest):
    _cleanup_domains(subprocess.run)
    if os.path.exists(f"/sys/class/net/{BRIDGE}"):
        _sh(["ip", "link", "delete", BRIDGE])
    _sh(["ip", "link", "add", BRIDGE, "type", "bridge"])
    with open(f"/proc/sys/net/ipv6/conf/{BRIDGE}/disable_ipv6", "w") as f:
        f.write("1")
    _sh(["ip", "addr", "add", f"{GATEWAY}/24", "dev", BRIDGE])
    _sh(["ip", "link", "set", BRIDGE, "type", "bridge", "forward_delay", "0"])
    _sh(["ip", "link", "set", BRIDGE, "up"])
    try:
        yield BRIDGE
    finally:
        _cleanup_domains(subprocess.run)
        _sh(["ip", "link", "delete", BRIDGE], check=False)
        for n in ("1", "2", "3"):       # serial logs and libvirt's own QEMU logs
            for p in (_serial(n), f"/var/log/libvirt/qemu/{PREFIX}{n}.log"):
                if os.path.exists(p):
                    os.unlink(p)


def _serial(n: str) -> str:
    return f"/var/log/libvirt/qemu/{PREFIX}{n}-serial.log"


@pytest.fixture(scope="module")
def guests(netbridge):
    run = subprocess.run
    cmd1 = f"console=ttyS0 panic=1 panel.ip=eth0,10.77.9.21/24,{GATEWAY} panel.dns={GATEWAY}"
    cmd2 = (f"console=ttyS0 panic=1 panel.ip=eth0,10.77.9.22/24,{GATEWAY} "
            "panel.ip=eth0,10.77.9.122/24, panel.ip=eth7,10.77.9.99/24, panel.ip=garbage "
            "panel.ip=eth0,10.77.9.300/24, panel.dns=10.77.9.1,10.77.9.2")
    t0 = time.monotonic()
    g1 = _define_and_start(run, PREFIX + "1", domain_xml(PREFIX + "1", _serial("1"), cmd1, BRIDGE),
                           _serial("1"))
    g2 = _define_and_start(run, PREFIX + "2", domain_xml(PREFIX + "2", _serial("2"), cmd2, BRIDGE),
                           _serial("2"))
    for g in (g1, g2):
        g.wait_for(r"^TINY-GUEST booted")
    TIMINGS["two guests: start -> both booted"] = time.monotonic() - t0
    for g in (g1, g2):
        TIMINGS[f"{g.name}: wait_shell"] = wait_shell(run, g.name, g.log, timeout=60)
    yield g1, g2


def test_net_lines(guests):
    g1, g2 = guests
    log1, log2 = g1.log(), g2.log()
    assert re.search(r"^TINY-GUEST net eth0 10\.77\.9\.21/24\r?$", log1, re.MULTILINE), log1
    assert "TINY-GUEST net ready" in log1
    # net lines come before "booted"
    assert log1.index("TINY-GUEST net ready") < log1.index("TINY-GUEST booted")
    for line in ("TINY-GUEST net eth0 10.77.9.22/24", "TINY-GUEST net eth0 10.77.9.122/24",
                 "TINY-GUEST net bad eth7,10.77.9.99/24,", "TINY-GUEST net bad garbage",
                 "TINY-GUEST net bad eth0,10.77.9.300/24,", "TINY-GUEST net ready"):
        assert line in log2, log2


def test_guest_config(guests):
    g1, g2 = guests
    code, out = g1.cmd("ip route")
    assert code == 0 and f"default via {GATEWAY} dev eth0" in out, out
    code, out = g1.cmd("cat /etc/resolv.conf")
    assert code == 0 and out.split() == ["nameserver", GATEWAY], out
    code, out = g2.cmd("cat /etc/resolv.conf")
    assert out.split() == ["nameserver", "10.77.9.1", "nameserver", "10.77.9.2"], out
    code, out = g2.cmd("ip -4 addr show dev eth0")
    assert "10.77.9.22/24" in out and "10.77.9.122/24" in out, out
    code, out = g1.cmd("false")
    assert code == 1


def test_typing_speed(guests):
    g1, _ = guests
    text = "echo abcdefghijklmnopqrstuvwxyz0123 >/dev/null\n"   # 46 chars incl. Enter
    t0 = time.monotonic()
    type_into(subprocess.run, g1.name, text)
    TIMINGS[f"type_into {len(text)} chars"] = time.monotonic() - t0
    t0 = time.monotonic()
    code, out = g1.cmd("echo 'Hello, World: a|b_c=d;e' \"$((6*7))\"")
    TIMINGS["guest_command echo round trip"] = time.monotonic() - t0
    assert code == 0 and out == "Hello, World: a|b_c=d;e 42", out


def test_ping_between_guests_and_host(guests):
    g1, _ = guests
    for target in ("10.77.9.22", "10.77.9.122", GATEWAY):
        t0 = time.monotonic()
        code, out = g1.cmd(f"ping -c 1 -W 5 {target}")
        TIMINGS[f"guest_command ping {target}"] = time.monotonic() - t0
        assert code == 0, out
        m = re.search(r"time=([\d.]+) ms", out)
        if m:
            TIMINGS[f"icmp rtt to {target} (ms)"] = float(m.group(1))
    # control for the clean-traffic test: without a filter, a changed address works
    _, g2 = guests
    code, out = g2.cmd(f"ip addr add 10.77.9.51/24 dev eth0; ping -c 1 -W 5 -I 10.77.9.51 {GATEWAY}")
    assert code == 0, out
    g2.cmd("ip addr del 10.77.9.51/24 dev eth0")
    # host -> guest
    cp = _sh(["busybox", "ping", "-c", "1", "-W", "5", "10.77.9.21"], check=False)  # no iputils-ping here
    assert cp.returncode == 0, cp.stdout


def test_clean_traffic_blocks_spoofed_address(guests):
    """Guest 1 redefined with clean-traffic (IP=10.77.9.21): its own address works, a
    changed one (10.77.9.50) is dropped by libvirt's nwfilter (ebtables)."""
    g1, _ = guests
    run = subprocess.run
    _virsh(run, "destroy", g1.name)
    _virsh(run, "undefine", g1.name)       # a new definition (new UUID) with the filter
    xml = domain_xml(g1.name, g1.serial,
                     f"console=ttyS0 panic=1 panel.ip=eth0,10.77.9.21/24,{GATEWAY}", BRIDGE,
                     ip_filter="10.77.9.21")
    g1 = _define_and_start(run, g1.name, xml, g1.serial)
    g1.wait_for(r"^TINY-GUEST booted")
    wait_shell(run, g1.name, g1.log, timeout=60)
    dumped = _virsh(run, "dumpxml", g1.name).stdout
    assert "clean-traffic" in dumped
    # libvirt's nwfilter instantiated its ebtables chains for the tap device
    assert "libvirt-" in _sh(["ebtables", "-t", "nat", "-L"]).stdout
    code, out = g1.cmd(f"ping -c 1 -W 5 {GATEWAY}")
    assert code == 0, f"allowed address must work: {out}"
    code, out = g1.cmd("ping -c 1 -W 5 10.77.9.22")
    assert code == 0, out
    code, out = g1.cmd("ip addr flush dev eth0; ip addr add 10.77.9.50/24 dev eth0; ip neigh flush dev eth0")
    assert code == 0, out
    t0 = time.monotonic()
    code, out = g1.cmd(f"ping -c 2 -W 2 {GATEWAY}")
    TIMINGS["spoofed ping (expected to fail)"] = time.monotonic() - t0
    assert code != 0, f"spoofed source address got through: {out}"
    code, out = g1.cmd("ping -c 2 -W 2 10.77.9.22")
    assert code != 0, out
    # and back to the allowed address: works again
    code, out = g1.cmd("ip addr flush dev eth0; ip addr add 10.77.9.21/24 dev eth0")
    code, out = g1.cmd(f"ping -c 1 -W 5 {GATEWAY}")
    assert code == 0, out


def test_boot_without_panel_ip(netbridge):
    """No panel.ip=: the guest boots as before and says 'net none'."""
    run = subprocess.run
    name = PREFIX + "3"
    g = _define_and_start(run, name, domain_xml(name, _serial("3"), "console=ttyS0 panic=1", BRIDGE),
                          _serial("3"))
    try:
        g.wait_for(r"^TINY-GUEST booted")
        log = g.log()
        assert "TINY-GUEST net none" in log and "net ready" not in log, log
        _virsh(run, "shutdown", name)
        end = time.monotonic() + 30
        while _virsh(run, "domstate", name, check=False).stdout.strip() != "shut off":
            assert time.monotonic() < end, "no shutdown"
            time.sleep(0.2)
    finally:
        _virsh(run, "destroy", name, check=False)
        _virsh(run, "undefine", name, check=False)


def test_public_segment_and_clean_traffic_in_cluster_node(tiny_guest):
    """Cluster(public=True): node1's eth1 (no address) in pnltpub0 (10.77.1.1/24); a bridge
    over eth1 in the node (as the panel's installer will make); netfilter tools work in
    the node's namespace; a guest in node1 reaches the host over it and clean-traffic
    drops a changed source address there too."""
    from tests.cluster import PUBLIC_BRIDGE, PUBLIC_HOST_ADDRESS, Cluster, ClusterError

    c = Cluster()
    try:
        c.start(count=1, public=True)
    except ClusterError as e:
        if "in use" in str(e):
            pytest.skip(f"test cluster in use: {e}")
        raise
    try:
        n = c.node(1)
        assert n.public_iface == "eth1"
        out = _sh(["ip", "-br", "addr", "show", "dev", PUBLIC_BRIDGE]).stdout
        assert f"{PUBLIC_HOST_ADDRESS}/24" in out, out
        out = c.run(1, ["ip", "-o", "addr", "show", "dev", "eth1"]).stdout
        assert out.strip() == "", f"eth1 must carry no address: {out}"
        assert "state UP" in c.run(1, ["ip", "link", "show", "dev", "eth1"]).stdout \
            or "LOWER_UP" in c.run(1, ["ip", "link", "show", "dev", "eth1"]).stdout
        assert "default" not in c.run(1, ["ip", "route"]).stdout
        for cmd in (["iptables", "-t", "nat", "-L", "-n"], ["ebtables", "-L"],
                    ["sysctl", "net.ipv4.ip_forward"], ["sysctl", "-w", "net.ipv4.ip_forward=1"]):
            cp = c.run(1, cmd)
            assert cp.returncode == 0, f"{cmd}: {cp.stderr}"
        cp = c.run(1, ["sh", "-c", ("ip link add br0 type bridge && ip link set eth1 master br0 "
                                    "&& ip link set br0 up")])
        assert cp.returncode == 0, cp.stderr
        run = functools.partial(c.run, 1)
        name = PREFIX + "node1"
        serial_in_node = f"/var/log/libvirt/qemu/{name}-serial.log"
        serial_on_host = os.path.join(n.dir, "var-log-libvirt", "qemu", f"{name}-serial.log")
        xml = domain_xml(name, serial_in_node,
                         f"console=ttyS0 panic=1 panel.ip=eth0,10.77.1.21/24,{PUBLIC_HOST_ADDRESS}",
                         "br0", ip_filter="10.77.1.21")
        cp = run(["virsh", "-q", "-c", URI, "define", "/dev/stdin"], input=xml)
        assert cp.returncode == 0, cp.stderr
        _virsh(run, "start", name)
        g = Guest(run, name, serial_on_host)
        g.wait_for(r"^TINY-GUEST booted")
        g.wait_for(r"^TINY-GUEST net ready")
        wait_shell(run, name, g.log, timeout=60)
        code, out = g.cmd(f"ping -c 1 -W 5 {PUBLIC_HOST_ADDRESS}")
        assert code == 0, out
        assert "libvirt" in c.run(1, ["ebtables", "-t", "nat", "-L"]).stdout
        code, out = g.cmd("ip addr flush dev eth0; ip addr add 10.77.1.50/24 dev eth0")
        code, out = g.cmd(f"ping -c 2 -W 2 {PUBLIC_HOST_ADDRESS}")
        assert code != 0, f"spoofed address got through inside the node: {out}"
    finally:
        c.stop()


def test_report_timings():
    if TIMINGS:
        print("\n" + "\n".join(f"  {k}: {v:.2f}" for k, v in TIMINGS.items()))

"""Self-test of tests/cluster.py: the namespace-based test cluster.

Run: cd /work/main && .venv/bin/python -m pytest tests/test_cluster_infra.py -q -p no:xdist
Needs root, iproute2, openssh-server, libvirt + QEMU. No Django database.
"""
from __future__ import annotations

import base64
import glob
import hashlib
import os
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.cluster import BASE_DIR, BRIDGE, NETNS_PREFIX, VETH_PREFIX, Cluster, ClusterError



def _xdist_group(name: str) -> list:
    """All tests of this module on one xdist worker (one cluster per machine); the marker
    is unknown (--strict-markers) when xdist is off, e.g. with -p no:xdist."""
    try:
        return [pytest.mark.xdist_group(name)]
    except pytest.fail.Exception:
        return []


pytestmark = [pytest.mark.e2e, *_xdist_group("cluster")]

paramiko = pytest.importorskip("paramiko")
libvirt = pytest.importorskip("libvirt")

TINY_GUEST = Path(__file__).resolve().parent.parent / ".cache" / "tiny-guest"


def _file_digest(path: str) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


@pytest.fixture(scope="module")
def host_files():
    """Host files the cluster must never touch, recorded before it starts."""
    return {p: _file_digest(p) for p in ("/root/.ssh/authorized_keys", "/root/.ssh/known_hosts",
                                         "/etc/shadow", "/etc/hostname")}


@pytest.fixture(scope="module")
def cluster(host_files):
    if os.geteuid() != 0:
        pytest.skip("the test cluster needs root")
    c = Cluster()
    try:
        c.start(count=3, extra_broken=True)
    except ClusterError as e:
        # Under xdist the tests of this module may be spread over workers (xdist_group did
        # not keep them together with pytest 9.2 + xdist 3.8); there is one cluster per machine.
        if os.environ.get("PYTEST_XDIST_WORKER") and "in use" in str(e):
            pytest.skip("the test cluster is in use by another xdist worker; "
                        "run this module with -p no:xdist")
        raise
    yield c
    c.stop()


def _ssh(node, **kw) -> "paramiko.SSHClient":
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect(node.address, port=22, username="root", look_for_keys=False,
                   allow_agent=False, timeout=10, banner_timeout=10, auth_timeout=10, **kw)
    return client


def _exec(client, cmd: str, stdin: str | None = None) -> tuple[int, str, str]:
    i, o, e = client.exec_command(cmd, timeout=60)
    if stdin is not None:
        i.write(stdin)
        i.channel.shutdown_write()
    out, err = o.read().decode(), e.read().decode()
    return o.channel.recv_exit_status(), out, err


def _sha256_fp(key) -> str:
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def _tcp_ok(address: str, timeout: float) -> bool:
    try:
        socket.create_connection((address, 22), timeout=timeout).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def client_key(tmp_path_factory):
    """A temporary ed25519 key and an ssh wrapper that keeps known_hosts out of /root/.ssh."""
    d = tmp_path_factory.mktemp("cluster-ssh")
    key = d / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pnl-cluster-test",
                    "-f", str(key)], check=True)
    wrapper = d / "ssh"
    wrapper.write_text("#!/bin/sh\nexec ssh -F /dev/null -o UserKnownHostsFile=%s "
                       "-o GlobalKnownHostsFile=/dev/null -o BatchMode=yes \"$@\"\n"
                       % (d / "known_hosts"))
    wrapper.chmod(0o755)
    return key, wrapper


def _uri(node, key, wrapper) -> str:
    return (f"qemu+ssh://root@{node.address}/system?keyfile={key}&no_verify=1"
            f"&command={wrapper}&no_tty=1")


# ------------------------------------------------------------------------------ tests

def test_nodes_layout(cluster):
    assert [n.name for n in cluster.nodes] == ["node1", "node2", "node3", "node4"]
    for i in (1, 2, 3, 4):
        n = cluster.node(i)
        assert n.address == f"10.77.0.{10 + i}"
        assert n.netns == f"pnl-node{i}"
        assert n.root_password == cluster.root_password
    assert cluster.node(4).broken and not cluster.node(1).broken


@pytest.mark.parametrize("i", [1, 2, 3, 4])
def test_password_login_and_hostname(cluster, i):
    n = cluster.node(i)
    client = _ssh(n, password=cluster.root_password)
    try:
        rc, out, _ = _exec(client, "hostname")
        assert (rc, out.strip()) == (0, n.name)
        fp = _sha256_fp(client.get_transport().get_remote_server_key())
        assert fp == cluster.host_key_fingerprint(i)
        # the node's own /root/.ssh: empty dir, mode 700
        rc, out, _ = _exec(client, "stat -c %a /root/.ssh; ls -A /root/.ssh | wc -l")
        assert out.split()[0] == "700"
    finally:
        client.close()


def test_wrong_password_is_refused(cluster):
    with pytest.raises(paramiko.AuthenticationException):
        _ssh(cluster.node(1), password=cluster.root_password + "x").close()


@pytest.mark.parametrize("i", [1, 2, 3])
def test_libvirt_runs_per_node(cluster, i):
    cp = cluster.run(i, ["virsh", "-c", "qemu:///system", "hostname"])
    assert (cp.returncode, cp.stdout.strip()) == (0, f"node{i}"), cp.stderr
    cp = cluster.run(i, ["virsh", "-c", "qemu:///system", "list", "--all", "--name"])
    assert cp.returncode == 0 and cp.stdout.strip() == "", cp.stdout   # no host domains
    cp = cluster.run(i, ["virsh", "-c", "qemu:///system", "net-list", "--all", "--autostart"])
    assert "default" not in cp.stdout
    cp = cluster.run(i, ["test", "-d", "/var/lib/libvirt/images"])
    assert cp.returncode == 0
    cp = cluster.run(i, ["sh", "-c", "ls -A /var/lib/libvirt/images | wc -l"])
    assert cp.stdout.strip() == "0"
    assert cluster.libvirtd_pid(i)


def test_host_uuids_differ(cluster):
    uuids = set()
    for i in (1, 2, 3):
        cp = cluster.run(i, ["virsh", "-c", "qemu:///system", "capabilities"])
        m = re.search(r"<uuid>([0-9a-f-]+)</uuid>", cp.stdout)
        assert m, cp.stdout[:500]
        uuids.add(m.group(1))
    assert len(uuids) == 3


def test_qemu_ssh_with_key(cluster, client_key, host_files):
    key, wrapper = client_key
    n = cluster.node(1)
    client = _ssh(n, password=cluster.root_password)
    try:
        rc, _, err = _exec(client, "mkdir -p ~/.ssh && chmod 700 ~/.ssh && "
                                   "cat >> ~/.ssh/authorized_keys && chmod 600 ~/.ssh/authorized_keys",
                           stdin=(key.with_suffix(".pub")).read_text())
        assert rc == 0, err
    finally:
        client.close()
    conn = libvirt.open(_uri(n, key, wrapper))
    try:
        assert conn.getHostname() == "node1"
        assert "<capabilities>" in conn.getCapabilities()
    finally:
        conn.close()
    # key login works only for node1 (its own /root/.ssh), and the host's files are untouched
    with pytest.raises(libvirt.libvirtError):
        libvirt.open(_uri(cluster.node(2), key, wrapper))
    for path, digest in host_files.items():
        assert _file_digest(path) == digest, f"{path} changed on the host"


@pytest.mark.skipif(not (TINY_GUEST / "vmlinuz").exists(), reason="no tiny guest built")
def test_domain_runs_inside_node(cluster, client_key):
    """A guest started over qemu+ssh runs in the node's namespaces (its qemu is in pnl-node1)."""
    key, wrapper = client_key
    name = "pnl-cluster-selftest"
    serial = f"/var/log/libvirt/qemu/{name}-serial.log"
    xml = f"""<domain type='qemu'><name>{name}</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>
      <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{TINY_GUEST}/vmlinuz</kernel>
      <initrd>{TINY_GUEST}/initrd.img</initrd><cmdline>console=ttyS0 panic=1</cmdline></os>
      <features><acpi/></features><on_poweroff>destroy</on_poweroff>
      <devices><serial type='file'><source path='{serial}'/><target port='0'/></serial>
      <graphics type='vnc' port='-1' autoport='yes'/></devices></domain>"""
    conn = libvirt.open(_uri(cluster.node(1), key, wrapper))
    try:
        dom = conn.createXML(xml, 0)
        try:
            pid = int(cluster.run(1, ["cat", f"/run/libvirt/qemu/{name}.pid"]).stdout)
            assert pid in [int(p) for p in subprocess.run(
                ["ip", "netns", "pids", "pnl-node1"], capture_output=True, text=True).stdout.split()]
            host_serial = os.path.join(cluster.node(1).dir, "var-log-libvirt", "qemu",
                                       f"{name}-serial.log")
            end = time.monotonic() + 90
            while time.monotonic() < end:
                if "TINY-GUEST booted" in Path(host_serial).read_text(errors="replace"):
                    break
                time.sleep(0.5)
            else:
                pytest.fail("tiny guest did not boot in node1")
            assert "listen='0.0.0.0'" in dom.XMLDesc(0) or 'listen="0.0.0.0"' in dom.XMLDesc(0)
        finally:
            dom.destroy()
    finally:
        conn.close()
    # the host's libvirtd never saw it
    cp = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
                        capture_output=True, text=True)
    assert name not in cp.stdout


def test_kill_and_start_libvirtd(cluster):
    old = cluster.libvirtd_pid(2)
    assert old
    cluster.kill_libvirtd(2)
    assert cluster.libvirtd_pid(2) is None
    state = Path(f"/proc/{old}/stat").read_text().rsplit(")", 1)[1].split()[0] \
        if os.path.exists(f"/proc/{old}/stat") else None
    assert state in (None, "Z")
    cp = cluster.run(2, ["virsh", "-c", "qemu:///system", "version"], timeout=30)
    assert cp.returncode != 0
    new = cluster.start_libvirtd(2)
    assert new and new != old
    cp = cluster.run(2, ["virsh", "-c", "qemu:///system", "hostname"])
    assert cp.stdout.strip() == "node2"
    # the other nodes' libvirtd were not affected
    assert cluster.libvirtd_pid(1) and cluster.libvirtd_pid(3)


def test_link_down_and_up(cluster):
    n = cluster.node(3)
    assert _tcp_ok(n.address, 3)
    cluster.link_down(3)
    try:
        t = time.monotonic()
        assert not _tcp_ok(n.address, 3)
        assert time.monotonic() - t < 3.5
        assert _tcp_ok(cluster.node(2).address, 3)          # the others still answer
    finally:
        cluster.link_up(3)
    end = time.monotonic() + 10
    while not _tcp_ok(n.address, 1):
        assert time.monotonic() < end, "node3 not reachable after link_up"
        time.sleep(0.2)
    client = _ssh(n, password=cluster.root_password)
    try:
        assert _exec(client, "hostname")[1].strip() == "node3"
    finally:
        client.close()


def test_replace_host_key(cluster):
    old = cluster.host_key_fingerprint(3)
    new = cluster.replace_host_key(3)
    assert new != old and new == cluster.host_key_fingerprint(3)
    client = _ssh(cluster.node(3), password=cluster.root_password)
    try:
        assert _sha256_fp(client.get_transport().get_remote_server_key()) == new
    finally:
        client.close()


def test_broken_node(cluster):
    n = cluster.node(4)
    assert cluster.libvirtd_pid(4) is None
    client = _ssh(n, password=cluster.root_password)
    try:
        rc, out, err = _exec(client, "apt-get install -y qemu-system-x86")
        assert rc == 100 and "E: Unable to locate package qemu-system-x86" in err
        rc, out, err = _exec(client, "virsh -c qemu:///system version")
        assert rc == 127 and "command not found" in err
        rc, out, err = _exec(client, "test -S /run/libvirt/libvirt-sock")
        assert rc != 0
    finally:
        client.close()
    # only inside node4: the host's apt-get is the real one
    cp = subprocess.run(["apt-get", "--version"], capture_output=True, text=True)
    assert cp.returncode == 0


def test_stop_leaves_nothing(cluster):
    pids = []
    for n in cluster.nodes:
        pids += [int(p) for p in subprocess.run(["ip", "netns", "pids", n.netns],
                                                capture_output=True, text=True).stdout.split()]
    assert pids
    cluster.stop()
    cluster.stop()                                   # idempotent
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert NETNS_PREFIX not in ns
    links = os.listdir("/sys/class/net")
    assert BRIDGE not in links
    assert not [l for l in links if re.fullmatch(VETH_PREFIX + r"\d+", l)]
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            continue
        assert state == "Z", f"process {pid} of the cluster still running"
    assert not os.path.exists(BASE_DIR)
    held = []
    for mi in glob.glob("/proc/[0-9]*/mountinfo"):
        try:
            if BASE_DIR in Path(mi).read_text():
                held.append(mi)
        except OSError:
            pass
    assert not held, f"mounts of {BASE_DIR} still held: {held}"

"""A test cluster: "servers" made of network namespaces on this machine.

Each node is a network namespace (``pnl-node<i>``, address ``10.77.0.<10+i>/24``)
plugged into the host bridge ``pnltbr0`` (``10.77.0.1/24``) with a veth pair, plus
a private mount and UTS namespace in which the node has its own hostname, ``/run``,
``/etc/shadow``, ``/root/.ssh``, ``/etc/libvirt``, ``/var/lib/libvirt``,
``/var/log/libvirt`` and ``/var/cache/libvirt``, and runs its own ``sshd``,
``virtlogd`` and ``libvirtd``. The panel adds such a node over SSH exactly as it
would add a real server (password login as root on first contact, then keys).

Only addresses in 10.77.0.0/24 (10.77.1.0/24 with ``public=True``) and loopback are used. The host's root password,
``/root/.ssh`` and libvirtd are never touched. Requires root; stdlib only.

    with Cluster() as c:            # or c = Cluster(); c.start(3); ...; c.stop()
        c.start(count=3)
        n = c.node(1)                # n.name, n.address, n.netns, n.root_password
        c.run(1, ["virsh", "-c", "qemu:///system", "hostname"])

See tests/infra/README.md, section "The test cluster".
"""
from __future__ import annotations

import atexit
import errno
import fcntl
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

BRIDGE = "pnltbr0"
HOST_ADDRESS = "10.77.0.1"
PREFIX_LEN = 24
SUBNET = "10.77.0.0/24"
NETNS_PREFIX = "pnl-node"
VETH_PREFIX = "pnlv"  # host side of node i's veth is "pnlv<i>"; the node side is "eth0"
# Optional "public" segment (start(public=True)): a second veth per node, host side
# "pnlq<i>" in the bridge pnltpub0 (10.77.1.1/24 on the host), node side "eth1" without
# any address (the panel's installer puts a bridge over it for guests).
PUBLIC_BRIDGE = "pnltpub0"
PUBLIC_HOST_ADDRESS = "10.77.1.1"
PUBLIC_PREFIX_LEN = 24
PUBLIC_SUBNET = "10.77.1.0/24"
PUBLIC_VETH_PREFIX = "pnlq"
PUBLIC_IFACE = "eth1"
BASE_DIR = "/tmp/pnl-cluster"
LOCK_FILE = "/tmp/pnl-cluster.lock"
BROKEN_NODE_INDEX = 4
START_TIMEOUT = 60.0

# Files replaced in the "broken" node (a host without virtualization packages).
_BROKEN_APT = ("/usr/bin/apt-get", "/usr/bin/apt")
_BROKEN_MISSING = ("/usr/sbin/libvirtd", "/usr/bin/virsh", "/usr/bin/qemu-system-x86_64",
                   "/usr/bin/dnf", "/usr/bin/yum")


class ClusterError(RuntimeError):
    pass


def node_address(i: int) -> str:
    if not 1 <= i <= 200:
        raise ValueError(f"node index out of range: {i}")
    return f"10.77.0.{10 + i}"


@dataclass(frozen=True)
class Node:
    index: int
    name: str          # "node1"
    address: str       # "10.77.0.11"
    netns: str         # "pnl-node1"
    root_password: str
    broken: bool = False
    dir: str = ""      # per-node files on the host, /tmp/pnl-cluster/node1
    public_iface: str = ""   # "eth1" with start(public=True): in pnltpub0, no address


# --------------------------------------------------------------------------- helpers

def _sh(args, check=True, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    cp = subprocess.run(args, **kw)
    if check and cp.returncode != 0:
        raise ClusterError(f"command failed ({cp.returncode}): {' '.join(args)}\n"
                           f"{(cp.stderr or '').strip()}\n{(cp.stdout or '').strip()}".rstrip())
    return cp


def _proc_state(pid: int) -> str | None:
    """Single-letter state from /proc/PID/stat, or None when the PID is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # "pid (comm) S ..." - comm may contain spaces/parentheses
    return data[data.rindex(")") + 2:].split(" ", 1)[0]


def _alive(pid: int) -> bool:
    st = _proc_state(pid)
    return st is not None and st not in ("Z", "X")


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _tail(path: str, lines: int = 25) -> str:
    try:
        with open(path, errors="replace") as f:
            data = f.read().splitlines()
    except OSError:
        return f"    ({path}: missing)"
    body = "\n".join("    " + l for l in data[-lines:])
    return f"  --- {path} (last {min(lines, len(data))} lines)\n{body}" if data else f"    ({path}: empty)"


def _wait(pred, timeout: float, interval: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(interval)


def _tcp_open(address: str, port: int = 22, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(4).startswith(b"SSH")
    except OSError:
        return False


def _netns_list() -> list[str]:
    cp = _sh(["ip", "netns", "list"], check=False)
    return [l.split()[0] for l in cp.stdout.splitlines() if l.strip()]


def _netns_pids(netns: str) -> list[int]:
    cp = _sh(["ip", "netns", "pids", netns], check=False)
    return [int(x) for x in cp.stdout.split() if x.isdigit()]


def _link_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


def _copy_owner_mode(src: str, dst: str) -> None:
    st = os.lstat(src)
    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))


def _copy_dir_skeleton(src: str, dst: str, skip_dir=lambda rel: False) -> None:
    """Directories only (same owner/mode), no files: a fresh /var/lib/libvirt."""
    os.makedirs(dst, exist_ok=True)
    if os.path.isdir(src):
        _copy_owner_mode(src, dst)
        for root, dirs, _files in os.walk(src):
            rel_root = os.path.relpath(root, src)
            keep = []
            for d in dirs:
                rel = os.path.normpath(os.path.join(rel_root, d))
                if skip_dir(rel) or os.path.islink(os.path.join(root, d)):
                    continue
                keep.append(d)
                os.makedirs(os.path.join(dst, rel), exist_ok=True)
                _copy_owner_mode(os.path.join(root, d), os.path.join(dst, rel))
            dirs[:] = keep


def _fresh_etc_libvirt(dst: str) -> None:
    """Copy of /etc/libvirt with config files only: no domains, pools, secrets, hooks
    or autostart links (what a fresh install has, minus the default network's autostart)."""
    src = "/etc/libvirt"

    def ignore(d, names):
        rel = os.path.relpath(d, src)
        out = set()
        for n in names:
            p = os.path.join(d, n)
            if rel in ("hooks", "secrets", "storage", "storage/autostart", "qemu/autostart",
                       "qemu/networks/autostart") and not os.path.isdir(p):
                out.add(n)
            elif rel == "qemu" and n.endswith(".xml"):     # the host's domains
                out.add(n)
            elif rel == "qemu" and n in ("checkpoint", "snapshot", "autostart") and os.path.isdir(p):
                out.add(n)
            elif n.endswith((".dpkg-old", ".dpkg-dist", ".bak", "~")):
                out.add(n)
        return out

    shutil.copytree(src, dst, symlinks=True, ignore=ignore)
    for d in ("hooks", "secrets", "storage/autostart", "qemu/autostart", "qemu/networks/autostart"):
        os.makedirs(os.path.join(dst, d), exist_ok=True)


def _set_conf(path: str, values: dict[str, str]) -> None:
    """Drop active lines of these keys from a libvirt .conf and append ours."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        lines = []
    keys = "|".join(re.escape(k) for k in values)
    rx = re.compile(rf"^\s*({keys})\s*=")
    lines = [l for l in lines if not rx.match(l)]
    lines.append("# --- tests/cluster.py")
    lines += [f"{k} = {v}" for k, v in values.items()]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


# --------------------------------------------------------------------------- scripts

_SETUP_SH = r"""#!/bin/sh
# Runs as: ip netns exec NETNS unshare --mount --uts --propagation private sh setup.sh
set -eu
D="$1"; NAME="$2"; BROKEN="$3"; WARM="$4"
hostname "$NAME"
mount -t tmpfs -o mode=755 pnl-run /run
mkdir -p /run/sshd /run/libvirt /run/lock
chmod 1777 /run/lock
mount -t tmpfs -o mode=711 pnl-cache /var/cache/libvirt
mkdir -p /var/cache/libvirt/qemu
chmod 711 /var/cache/libvirt/qemu
if [ "$WARM" = 1 ] && [ -d "$D/qemu-caps" ]; then
  cp -a "$D/qemu-caps" /var/cache/libvirt/qemu/capabilities
fi
for k in default eth0; do echo 1 > /proc/sys/net/ipv6/conf/$k/disable_ipv6; done
mount --bind "$D/var-lib-libvirt" /var/lib/libvirt
mount --bind "$D/var-log-libvirt" /var/log/libvirt
mount --bind "$D/etc-libvirt" /etc/libvirt
mount --bind "$D/shadow" /etc/shadow
mount --bind "$D/root-ssh" /root/.ssh
mount --bind "$D/hostname" /etc/hostname
mount --bind "$D/hosts" /etc/hosts
mount --bind "$D/machine-id" /etc/machine-id
if [ "$BROKEN" = 1 ]; then
  while read -r fake target; do
    [ -e "$target" ] && mount --bind "$D/bin/$fake" "$target"
  done < "$D/bin/list"
else
  virtlogd -d </dev/null >>"$D/virtlogd.out" 2>&1
  libvirtd -d </dev/null >>"$D/libvirtd.out" 2>&1
fi
/usr/sbin/sshd -f "$D/sshd_config" -E "$D/sshd.log" </dev/null >>"$D/sshd.out" 2>&1
echo $$ > "$D/anchor.pid.tmp"
mv "$D/anchor.pid.tmp" "$D/anchor.pid"
exec sleep infinity </dev/null >/dev/null 2>&1
"""

_FAKE_APT = r"""#!/bin/sh
# tests/cluster.py: apt on a host whose repositories lack the virtualization packages.
cmd=""
pkgs=""
for a in "$@"; do
  case "$a" in
    -*) ;;
    *) if [ -z "$cmd" ]; then cmd="$a"; else pkgs="$pkgs $a"; fi ;;
  esac
done
case "$cmd" in
  update) echo "Reading package lists... Done"; exit 0 ;;
  install)
    echo "Reading package lists... Done"
    echo "Building dependency tree... Done"
    for p in $pkgs; do echo "E: Unable to locate package $p" >&2; done
    [ -n "$pkgs" ] || echo "E: Unable to locate package" >&2
    exit 100 ;;
  *) echo "E: Unable to locate package" >&2; exit 100 ;;
esac
"""

_FAKE_MISSING = r"""#!/bin/sh
# tests/cluster.py: a binary that is not installed on this host.
echo "$(basename "$0"): command not found" >&2
exit 127
"""

_SSHD_CONFIG = """# tests/cluster.py - sshd of {name}
Port 22
ListenAddress {address}
AddressFamily inet
HostKey {dir}/ssh_host_ed25519_key
PidFile {dir}/sshd.pid
PermitRootLogin yes
PasswordAuthentication yes
PermitEmptyPasswords no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
PrintLastLog no
MaxStartups 100:30:200
MaxSessions 50
MaxAuthTries 10
LoginGraceTime 30
AcceptEnv LANG LC_*
Subsystem sftp /usr/lib/openssh/sftp-server
LogLevel INFO
"""


# --------------------------------------------------------------------------- cluster

class Cluster:
    """Nodes as network namespaces with their own sshd and libvirtd (see module doc).

    Not named Test* so that pytest does not collect it.
    """

    def __init__(self, base_dir: str = BASE_DIR, warm_caps: bool = True):
        self.base_dir = base_dir
        self.warm_caps = warm_caps
        self.root_password = ""
        self._nodes: dict[int, Node] = {}
        self._anchors: dict[int, int] = {}
        self._procs: dict[int, subprocess.Popen] = {}
        self._lock_fd: int | None = None
        self._atexit = False

    # ---- context manager
    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- public API
    @property
    def nodes(self) -> list[Node]:
        return [self._nodes[i] for i in sorted(self._nodes)]

    def node(self, i: int) -> Node:
        try:
            return self._nodes[i]
        except KeyError:
            raise ClusterError(f"no node {i} (nodes: {sorted(self._nodes)})") from None

    def start(self, count: int = 3, extra_broken: bool = False, public: bool = False) -> "Cluster":
        """Create nodes node1..node<count> (+ broken node4 with extra_broken=True).

        public=True: every node also gets "eth1" (up, no address) plugged into the host
        bridge pnltpub0 (10.77.1.1/24) through the veth pnlq<i>.
        """
        if os.geteuid() != 0:
            raise ClusterError("the test cluster needs root")
        if extra_broken and count >= BROKEN_NODE_INDEX:
            raise ClusterError(f"extra_broken needs count < {BROKEN_NODE_INDEX}")
        if self._nodes:
            raise ClusterError("cluster already started")
        self._take_lock()
        try:
            self._cleanup_stale()
            self.root_password = secrets.token_urlsafe(18)
            pw_hash = _sh(["openssl", "passwd", "-6", "-stdin"],
                          input=self.root_password + "\n").stdout.strip()
            os.makedirs(self.base_dir, mode=0o755)
            os.chmod(self.base_dir, 0o755)
            specs = [(i, False) for i in range(1, count + 1)]
            if extra_broken:
                specs.append((BROKEN_NODE_INDEX, True))
            for i, broken in specs:
                self._nodes[i] = Node(index=i, name=f"node{i}", address=node_address(i),
                                      netns=f"{NETNS_PREFIX}{i}", root_password=self.root_password,
                                      broken=broken, dir=os.path.join(self.base_dir, f"node{i}"),
                                      public_iface=PUBLIC_IFACE if public else "")
            if not self._atexit:
                atexit.register(self.stop)
                self._atexit = True
            self._make_bridge()
            if public:
                self._make_bridge(PUBLIC_BRIDGE, f"{PUBLIC_HOST_ADDRESS}/{PUBLIC_PREFIX_LEN}")
            with ThreadPoolExecutor(max_workers=max(1, len(specs))) as ex:
                list(ex.map(lambda n: self._prepare_node(n, pw_hash), self.nodes))
                for n in self.nodes:
                    self._spawn_node(n)
                list(ex.map(self._wait_node, self.nodes))
        except BaseException:
            try:
                self._teardown()
            except Exception:
                pass
            self._release_lock()
            raise
        return self

    def stop(self) -> None:
        """Kill everything in the nodes, delete netns/veths/bridge/files. Idempotent.

        Also removes a stale cluster of a crashed run, but never one that another live
        process holds (the lock file /tmp/pnl-cluster.lock): then it does nothing.
        """
        if self._lock_fd is None:
            try:
                self._take_lock()
            except ClusterError:
                if self._nodes:
                    raise
                return                      # someone else's cluster: not ours to remove
        try:
            self._teardown()
        finally:
            self._release_lock()

    def _teardown(self) -> None:
        errors = []
        names = set(_netns_list())
        ours = sorted(n for n in names if re.fullmatch(re.escape(NETNS_PREFIX) + r"\d+", n))
        # 1. kill every process of every node, until none is left (zombies do not count:
        #    `ip netns pids` does not list them, and they hold no namespaces or mounts)
        for _ in range(3):
            for ns in ours:
                for pid in _netns_pids(ns):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            for p in self._procs.values():
                if p.poll() is None:
                    try:
                        p.kill()
                    except ProcessLookupError:
                        pass
            if _wait(lambda: all(not _netns_pids(ns) for ns in ours), 5.0):
                break
        else:
            left = {ns: _netns_pids(ns) for ns in ours}
            errors.append(f"processes left in node namespaces: {left}")
        for p in self._procs.values():          # reap our anchors
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                errors.append(f"anchor {p.pid} did not exit")
        for pid in self._anchors.values():
            _wait(lambda: not _alive(pid), 5.0)
        # 2. network
        for ns in ours:
            cp = _sh(["ip", "netns", "delete", ns], check=False)
            if cp.returncode != 0 and ns in _netns_list():
                errors.append(f"ip netns delete {ns}: {cp.stderr.strip()}")
        for name in sorted(os.listdir("/sys/class/net")):
            if _is_cluster_link(name):
                cp = _sh(["ip", "link", "delete", name], check=False)
                if cp.returncode != 0 and _link_exists(name):
                    errors.append(f"ip link delete {name}: {cp.stderr.strip()}")
        # 3. files (never while something is still mounted below the dir in our namespace)
        if os.path.isdir(self.base_dir):
            mounted = self._host_mounts_below(self.base_dir)
            if mounted:
                errors.append(f"not removing {self.base_dir}: mounted: {mounted}")
            else:
                shutil.rmtree(self.base_dir, ignore_errors=True)
                if os.path.exists(self.base_dir):
                    errors.append(f"could not remove {self.base_dir}")
        self._nodes.clear()
        self._anchors.clear()
        self._procs.clear()
        if errors:
            raise ClusterError("cluster teardown incomplete:\n  " + "\n  ".join(errors))

    def run(self, i: int, cmd: list[str], **kw) -> subprocess.CompletedProcess:
        """Run cmd in node i's net+mount+uts namespaces (text output captured, no check)."""
        pid = self._anchor(i)
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        if "input" not in kw:
            kw.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.run(["nsenter", "--target", str(pid), "--mount", "--uts", "--net",
                               "--", *cmd], **kw)

    def libvirtd_pid(self, i: int) -> int | None:
        """PID of node i's running libvirtd (zombies do not count), or None."""
        pids = [p for p in _netns_pids(self.node(i).netns)
                if _comm(p) == "libvirtd" and _alive(p)]
        return min(pids) if pids else None

    def kill_libvirtd(self, i: int, timeout: float = 10.0) -> None:
        """SIGKILL node i's libvirtd and wait until it is not running (zombie is fine)."""
        pid = self.libvirtd_pid(i)
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if not _wait(lambda: not _alive(pid) and self.libvirtd_pid(i) is None, timeout):
            raise ClusterError(f"libvirtd {pid} of node{i} still running after SIGKILL")

    def start_libvirtd(self, i: int, timeout: float = 30.0) -> int:
        """Start libvirtd (and virtlogd if needed) in node i; wait until virsh answers."""
        n = self.node(i)
        if n.broken:
            raise ClusterError(f"{n.name} is the broken node: it has no libvirtd")
        if not any(_comm(p) == "virtlogd" and _alive(p) for p in _netns_pids(n.netns)):
            self.run(i, ["sh", "-c", f'virtlogd -d </dev/null >>"{n.dir}/virtlogd.out" 2>&1'])
        if self.libvirtd_pid(i) is None:
            cp = self.run(i, ["sh", "-c", f'libvirtd -d </dev/null >>"{n.dir}/libvirtd.out" 2>&1'])
            if cp.returncode != 0:
                raise ClusterError(f"libvirtd -d failed in {n.name}\n" + self._logs(n))
        self._wait_libvirtd(n, timeout)
        return self.libvirtd_pid(i)

    def link_down(self, i: int) -> None:
        _sh(["ip", "link", "set", f"{VETH_PREFIX}{self.node(i).index}", "down"])

    def link_up(self, i: int) -> None:
        _sh(["ip", "link", "set", f"{VETH_PREFIX}{self.node(i).index}", "up"])

    def host_key_fingerprint(self, i: int) -> str:
        """'SHA256:...' of node i's ed25519 host key, as OpenSSH prints it."""
        out = _sh(["ssh-keygen", "-l", "-E", "sha256", "-f",
                   os.path.join(self.node(i).dir, "ssh_host_ed25519_key.pub")]).stdout
        return out.split()[1]

    def host_public_key(self, i: int) -> str:
        """'ssh-ed25519 AAAA...' (for a known_hosts line)."""
        with open(os.path.join(self.node(i).dir, "ssh_host_ed25519_key.pub")) as f:
            return " ".join(f.read().split()[:2])

    def replace_host_key(self, i: int) -> str:
        """New ed25519 host key for node i and restart its sshd; returns the new fingerprint."""
        n = self.node(i)
        key = os.path.join(n.dir, "ssh_host_ed25519_key")
        for p in (key, key + ".pub"):
            if os.path.exists(p):
                os.unlink(p)
        _sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{n.name}", "-f", key])
        self._restart_sshd(n)
        return self.host_key_fingerprint(i)

    def sshd_pid(self, i: int) -> int | None:
        try:
            with open(os.path.join(self.node(i).dir, "sshd.pid")) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) and _comm(pid) == "sshd" else None

    def logs(self, i: int) -> str:
        return self._logs(self.node(i))

    # ---- internals
    def _anchor(self, i: int) -> int:
        n = self.node(i)
        pid = self._anchors.get(i)
        if pid is None or not _alive(pid):
            raise ClusterError(f"{n.name}: anchor process is not running")
        return pid

    def _take_lock(self) -> None:
        fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise ClusterError(f"another test cluster is in use ({LOCK_FILE} is locked)") from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            finally:
                os.close(self._lock_fd)
                self._lock_fd = None

    def _cleanup_stale(self) -> None:
        leftovers = [n for n in _netns_list() if n.startswith(NETNS_PREFIX)]
        if leftovers or os.path.exists(self.base_dir) or any(
                _is_cluster_link(x) for x in os.listdir("/sys/class/net")):
            self._teardown()

    @staticmethod
    def _host_mounts_below(path: str) -> list[str]:
        out = []
        with open("/proc/self/mountinfo") as f:
            for line in f:
                mp = line.split()[4].replace("\\040", " ")
                if mp == path or mp.startswith(path.rstrip("/") + "/"):
                    out.append(mp)
        return out

    def _make_bridge(self, name: str = BRIDGE, cidr: str = f"{HOST_ADDRESS}/{PREFIX_LEN}") -> None:
        _sh(["ip", "link", "add", name, "type", "bridge"])
        # no STP delay, no IPv6 on the test bridges (only 10.77.0.0/24, 10.77.1.0/24 are used)
        for k in ("disable_ipv6",):
            p = f"/proc/sys/net/ipv6/conf/{name}/{k}"
            if os.path.exists(p):
                with open(p, "w") as f:
                    f.write("1")
        _sh(["ip", "addr", "add", cidr, "dev", name])
        _sh(["ip", "link", "set", name, "up"])

    def _prepare_node(self, n: Node, pw_hash: str) -> None:
        d = n.dir
        os.makedirs(d, mode=0o755)
        os.chmod(d, 0o755)
        # network: veth pnlv<i> (host, in the bridge) <-> eth0 (node)
        veth = f"{VETH_PREFIX}{n.index}"
        _sh(["ip", "netns", "add", n.netns])
        _sh(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", n.netns])
        p = f"/proc/sys/net/ipv6/conf/{veth}/disable_ipv6"
        if os.path.exists(p):
            with open(p, "w") as f:
                f.write("1")
        _sh(["ip", "link", "set", veth, "master", BRIDGE, "up"])
        _sh(["ip", "-n", n.netns, "link", "set", "lo", "up"])
        _sh(["ip", "-n", n.netns, "addr", "add", f"{n.address}/{PREFIX_LEN}", "dev", "eth0"])
        _sh(["ip", "-n", n.netns, "link", "set", "eth0", "up"])
        if n.public_iface:
            # public segment: pnlq<i> (host, in pnltpub0) <-> eth1 (node), up, no address
            pveth = f"{PUBLIC_VETH_PREFIX}{n.index}"
            _sh(["ip", "link", "add", pveth, "type", "veth", "peer", "name", n.public_iface,
                 "netns", n.netns])
            p = f"/proc/sys/net/ipv6/conf/{pveth}/disable_ipv6"
            if os.path.exists(p):
                with open(p, "w") as f:
                    f.write("1")
            _sh(["ip", "link", "set", pveth, "master", PUBLIC_BRIDGE, "up"])
            # no IPv6 link-local address on eth1 either (it carries no address at all)
            _sh(["ip", "netns", "exec", n.netns, "sysctl", "-q", "-w",
                 f"net.ipv6.conf.{n.public_iface}.disable_ipv6=1"])
            _sh(["ip", "-n", n.netns, "link", "set", n.public_iface, "up"])
        # identity files
        with open("/etc/shadow") as f:
            shadow = f.read().splitlines()
        shadow = [(f"root:{pw_hash}:" + l.split(":", 2)[2]) if l.startswith("root:") else l
                  for l in shadow]
        _write(os.path.join(d, "shadow"), "\n".join(shadow) + "\n", 0o640)
        st = os.stat("/etc/shadow")
        os.chown(os.path.join(d, "shadow"), st.st_uid, st.st_gid)
        _write(os.path.join(d, "hostname"), n.name + "\n", 0o644)
        hosts = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback",
                 f"{HOST_ADDRESS}\tpnl-host"]
        hosts += [f"{m.address}\t{m.name}" for m in self.nodes]
        _write(os.path.join(d, "hosts"), "\n".join(hosts) + "\n", 0o644)
        _write(os.path.join(d, "machine-id"), uuid.uuid4().hex + "\n", 0o444)
        os.makedirs(os.path.join(d, "root-ssh"), mode=0o700)
        os.chmod(os.path.join(d, "root-ssh"), 0o700)
        if not os.path.isdir("/root/.ssh"):          # a mount point is needed on the host
            os.makedirs("/root/.ssh", mode=0o700, exist_ok=True)
        # sshd
        key = os.path.join(d, "ssh_host_ed25519_key")
        _sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{n.name}", "-f", key])
        _write(os.path.join(d, "sshd_config"),
               _SSHD_CONFIG.format(name=n.name, address=n.address, dir=d), 0o644)
        _write(os.path.join(d, "setup.sh"), _SETUP_SH, 0o755)
        # libvirt state: fresh copies
        _fresh_etc_libvirt(os.path.join(d, "etc-libvirt"))
        _set_conf(os.path.join(d, "etc-libvirt", "libvirtd.conf"), {
            "host_uuid": f'"{uuid.uuid4()}"',
            "log_outputs": '"3:file:/var/log/libvirt/libvirtd.log"',
        })
        _set_conf(os.path.join(d, "etc-libvirt", "qemu.conf"), {
            "migration_host": f'"{n.address}"',
            "vnc_listen": '"0.0.0.0"',
        })
        _copy_dir_skeleton(
            "/var/lib/libvirt", os.path.join(d, "var-lib-libvirt"),
            skip_dir=lambda rel: rel.startswith("images/") or "/domain-" in "/" + rel
            or rel.startswith(("dnsmasq/", "qemu/channel/target/")))
        os.makedirs(os.path.join(d, "var-lib-libvirt", "images"), exist_ok=True)
        _copy_dir_skeleton("/var/log/libvirt", os.path.join(d, "var-log-libvirt"),
                           skip_dir=lambda rel: False)
        for sub in ("qemu",):
            os.makedirs(os.path.join(d, "var-log-libvirt", sub), exist_ok=True)
        # a copy of the host libvirtd's QEMU capabilities cache (libvirt re-validates it
        # against the binaries and reprobes if stale) saves the ~8 s first probe
        caps = "/var/cache/libvirt/qemu/capabilities"
        if self.warm_caps and os.path.isdir(caps):
            shutil.copytree(caps, os.path.join(d, "qemu-caps"))
        # the broken node: no virtualization packages to be had
        os.makedirs(os.path.join(d, "bin"))
        _write(os.path.join(d, "bin", "fake-apt"), _FAKE_APT, 0o755)
        _write(os.path.join(d, "bin", "fake-missing"), _FAKE_MISSING, 0o755)
        lst = [f"fake-apt {p}" for p in _BROKEN_APT] + [f"fake-missing {p}" for p in _BROKEN_MISSING]
        _write(os.path.join(d, "bin", "list"), "\n".join(lst) + "\n", 0o644)

    def _spawn_node(self, n: Node) -> None:
        log = open(os.path.join(n.dir, "setup.log"), "ab")
        try:
            self._procs[n.index] = subprocess.Popen(
                ["ip", "netns", "exec", n.netns, "unshare", "--mount", "--uts",
                 "--propagation", "private", "sh", os.path.join(n.dir, "setup.sh"),
                 n.dir, n.name, "1" if n.broken else "0", "1" if self.warm_caps else "0"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                close_fds=True)
        finally:
            log.close()

    def _wait_node(self, n: Node) -> None:
        proc = self._procs[n.index]
        pidfile = os.path.join(n.dir, "anchor.pid")
        end = time.monotonic() + START_TIMEOUT
        while not os.path.exists(pidfile):
            if proc.poll() is not None:
                raise ClusterError(f"{n.name}: setup script exited with {proc.returncode}\n"
                                   + self._logs(n))
            if time.monotonic() > end:
                raise ClusterError(f"{n.name}: setup did not finish in {START_TIMEOUT:.0f} s\n"
                                   + self._logs(n))
            time.sleep(0.02)
        with open(pidfile) as f:
            self._anchors[n.index] = int(f.read().strip())
        if not _wait(lambda: _tcp_open(n.address), max(1.0, end - time.monotonic()), 0.05):
            raise ClusterError(f"{n.name}: sshd does not answer on {n.address}:22\n" + self._logs(n))
        if not n.broken:
            self._wait_libvirtd(n, max(1.0, end - time.monotonic()))

    def _wait_libvirtd(self, n: Node, timeout: float) -> None:
        last = [None]

        def ok():
            cp = self.run(n.index, ["virsh", "-c", "qemu:///system", "version"], timeout=30)
            last[0] = cp
            return cp.returncode == 0

        if not _wait(ok, timeout, 0.1):
            cp = last[0]
            msg = (cp.stderr or cp.stdout).strip() if cp else ""
            raise ClusterError(f"{n.name}: libvirtd does not answer ({msg})\n" + self._logs(n))

    def _restart_sshd(self, n: Node) -> None:
        pid = self.sshd_pid(n.index)
        if pid:
            os.kill(pid, signal.SIGTERM)
            if not _wait(lambda: not _alive(pid), 5.0):
                os.kill(pid, signal.SIGKILL)
                _wait(lambda: not _alive(pid), 5.0)
        if not _wait(lambda: not _tcp_open(n.address, timeout=0.2), 5.0):
            raise ClusterError(f"{n.name}: old sshd still listening")
        cp = self.run(n.index, ["/usr/sbin/sshd", "-f", os.path.join(n.dir, "sshd_config"),
                                "-E", os.path.join(n.dir, "sshd.log")])
        if cp.returncode != 0 or not _wait(lambda: _tcp_open(n.address), 10.0):
            raise ClusterError(f"{n.name}: sshd did not restart: {cp.stderr.strip()}\n" + self._logs(n))

    def _logs(self, n: Node) -> str:
        d = n.dir
        return "\n".join(_tail(os.path.join(d, f)) for f in (
            "setup.log", "sshd.out", "sshd.log", "virtlogd.out", "libvirtd.out",
            "var-log-libvirt/libvirtd.log"))


def _is_cluster_link(name: str) -> bool:
    """A host link that belongs to the test cluster (bridges and host-side veths)."""
    return name in (BRIDGE, PUBLIC_BRIDGE) or bool(
        re.fullmatch(rf"(?:{re.escape(VETH_PREFIX)}|{re.escape(PUBLIC_VETH_PREFIX)})\d+", name))


def _write(path: str, text: str, mode: int) -> None:
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)

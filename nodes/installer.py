"""Installing a node over SSH, idempotently: every step checks before it changes anything.

Run by the worker as the `node_install` operation. A second run on an installed node changes
nothing and says so in the operation's log.
"""

import re
from collections.abc import Callable

from django.db import transaction
from django.utils import timezone

from nodes.capabilities import probe_shell, summary
from nodes.connection import driver_for, forget
from nodes.models import Node, Storage
from nodes.driver import DriverError
from nodes.ssh import HostKeyChanged, NodeShell, SshError, load_private_key, panel_identity
from nodes.sshfiles import node_uri, write_client_files
from panel.crypto import decrypt
from panel.events import emit
from panel.runner import Job
from panel.vps.models import Operation

# What a node needs, by OS family: the package, and a command that proves it works.
REQUIREMENTS = {
    "apt": [
        ("qemu-system-x86", ["qemu-system-x86_64", "--version"]),
        ("qemu-utils", ["qemu-img", "--version"]),
        ("libvirt-daemon-system", ["libvirtd", "--version"]),
        ("libvirt-clients", ["virsh", "--version"]),
        ("lvm2", ["lvm", "version"]),
        ("bridge-utils", ["bridge", "-V"]),
        # checksums backups in a node folder (BLAKE3; without it the node falls back to SHA-256)
        ("b3sum", ["b3sum", "--version"]),
    ],
    "dnf": [
        ("qemu-kvm", ["/usr/libexec/qemu-kvm", "--version"]),
        ("qemu-img", ["qemu-img", "--version"]),
        ("libvirt", ["libvirtd", "--version"]),
        ("libvirt-client", ["virsh", "--version"]),
        ("lvm2", ["lvm", "version"]),
        ("iproute", ["bridge", "-V"]),
    ],
}

Step = Callable[[int, str], None]


def detect_family(shell: NodeShell) -> tuple[str, str]:
    """('apt'|'dnf', pretty OS name) from /etc/os-release."""
    text = shell.run(["cat", "/etc/os-release"]).out
    fields = dict(re.findall(r'^([A-Z_]+)="?([^"\n]*)"?$', text, re.M))
    ids = {fields.get("ID", "")} | set(fields.get("ID_LIKE", "").split())
    name = fields.get("PRETTY_NAME", fields.get("ID", "unknown"))
    if ids & {"debian", "ubuntu"}:
        return "apt", name
    if ids & {"rhel", "centos", "fedora", "rocky", "almalinux"}:
        return "dnf", name
    raise SshError(f"unsupported OS {name!r}: the panel installs Debian/Ubuntu (apt) or RHEL-family (dnf) nodes")


def _works(shell: NodeShell, argv: list[str]) -> bool:
    return shell.run(argv, check=False, timeout=60).code == 0


def install_packages(shell: NodeShell, family: str, step: Step) -> None:
    missing = [package for package, probe in REQUIREMENTS[family] if not _works(shell, probe)]
    if not missing:
        step(35, "virtualization packages: already installed")
        return
    step(25, f"installing {' '.join(missing)}")
    if family == "apt":
        shell.run(["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "update", "-q"], check=False, timeout=900)
        command = ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q", *missing]
    else:
        command = ["dnf", "install", "-y", "-q", *missing]
    try:
        shell.run(command, timeout=1800)
    except SshError as exc:
        raise SshError(f"installing the virtualization packages failed: {exc}") from exc
    still = [package for package, probe in REQUIREMENTS[family] if not _works(shell, probe)]
    if still:
        raise SshError(f"after installing, these still do not work: {' '.join(still)}")
    step(35, "virtualization packages installed")


START_LIBVIRTD = r"""
if virsh -c qemu:///system version >/dev/null 2>&1; then echo running; exit 0; fi
if [ -d /run/systemd/system ]; then
  systemctl enable --now virtlogd libvirtd >/dev/null 2>&1 || systemctl enable --now virtqemud >/dev/null 2>&1
else
  pgrep -x virtlogd >/dev/null || virtlogd -d
  libvirtd -d
fi
for i in $(seq 1 40); do
  virsh -c qemu:///system version >/dev/null 2>&1 && { echo started; exit 0; }
  sleep 0.5
done
echo "libvirtd does not answer on qemu:///system" >&2; exit 1
"""


def start_libvirtd(shell: NodeShell, step: Step) -> None:
    result = shell.script(START_LIBVIRTD, timeout=120)
    step(45, "libvirtd: already running" if "running" in result.out else "libvirtd: started")


def cpu_virtualization(shell: NodeShell) -> bool:
    result = shell.script("grep -cE '(vmx|svm)' /proc/cpuinfo; test -e /dev/kvm", check=False)
    return result.code == 0 and int((result.out.split() or ["0"])[0]) > 0


PREPARE_STORAGE = {
    Storage.Kind.DIR: 'if [ -d "$1" ]; then echo exists; else mkdir -p "$1" && echo created; fi',
    Storage.Kind.NFS: ('if mountpoint -q "$1"; then echo exists; '
                       'else mkdir -p "$1" && mount -t nfs "$2" "$1" && echo created; fi'),
    Storage.Kind.LVM: 'vgs "$3" >/dev/null && echo exists',
}

# `out=$(df …) &&`: a failing df (a stale NFS handle) must fail the script, not vanish in a pipe.
CAPACITY = {
    Storage.Kind.DIR: 'out=$(df -B1G --output=size,avail "$1") && printf "%s\\n" "$out" | tail -n 1',
    Storage.Kind.NFS: 'out=$(df -B1G --output=size,avail "$1") && printf "%s\\n" "$out" | tail -n 1',
    Storage.Kind.LVM: 'vgs --noheadings --nosuffix --units g -o vg_size,vg_free "$3"',
}


def prepare_storages(shell: NodeShell, node: Node, step: Step) -> dict:
    capacity = {}
    for storage in node.cluster.storages.all():
        args = (storage.path or "/", storage.nfs_source or "-", storage.volume_group or "-")
        try:
            done = shell.script(PREPARE_STORAGE[storage.kind], *args).out.strip()
            out = shell.script(CAPACITY[storage.kind], *args).out
            size, free = out.split()[:2]
            float(size), float(free)
        except SshError as exc:
            raise SshError(f"storage {storage.name} ({storage.kind}): {exc}") from exc
        except ValueError:
            raise SshError(f"storage {storage.name} ({storage.kind}): cannot read its capacity from {out!r}") from None
        capacity[str(storage.id)] = {"total_gib": int(float(size)), "free_gib": int(float(free))}
        step(60, f"storage {storage.name}: {'already there' if done == 'exists' else 'prepared'}, "
                 f"{capacity[str(storage.id)]['free_gib']} of {capacity[str(storage.id)]['total_gib']} GiB free")
    return capacity


# Values arrive as positional parameters: $1 bridge, $2 uplink (or gateway/prefix), $3 …
BRIDGED_NETWORK = r"""
ip link show "$3" >/dev/null 2>&1 || { echo "no interface $3 on this node" >&2; exit 1; }
if [ -n "$4" ] && ! ip link show "$2" >/dev/null 2>&1; then ip link add link "$3" name "$2" type vlan id "$4"; fi
if ip link show "$1" >/dev/null 2>&1; then state=exists; else ip link add "$1" type bridge; state=created; fi
ip link set "$2" master "$1" && ip link set "$2" up && ip link set "$1" up && echo "$state"
"""

NAT_NETWORK = r"""
if ip link show "$1" >/dev/null 2>&1; then state=exists; else ip link add "$1" type bridge; state=created; fi
ip -o addr show dev "$1" | grep -qF " $2 " || ip addr add "$2" dev "$1"
ip link set "$1" up
sysctl -qw net.ipv4.ip_forward=1
iptables -t nat -C POSTROUTING -s "$3" ! -d "$3" -j MASQUERADE 2>/dev/null \
  || iptables -t nat -A POSTROUTING -s "$3" ! -d "$3" -j MASQUERADE
iptables -C FORWARD -i "$1" -j ACCEPT 2>/dev/null || iptables -I FORWARD -i "$1" -j ACCEPT
iptables -C FORWARD -o "$1" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT 2>/dev/null \
  || iptables -I FORWARD -o "$1" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
echo "$state"
"""


def prepare_networks(shell: NodeShell, node: Node, step: Step) -> None:
    """Make the bridges of the cluster's networks (runtime configuration, re-applied by every
    install run)."""
    import ipaddress

    from nodes.models import Network

    for network in node.cluster.networks.all():
        try:
            if network.kind == Network.Kind.BRIDGED:
                state = shell.script(BRIDGED_NETWORK, network.bridge, network.uplink, network.interface,
                                     str(network.vlan or "")).out.strip()
                what = f"bridge {network.bridge} over {network.uplink}"
            else:
                prefix = ipaddress.ip_network(network.nat_cidr).prefixlen
                state = shell.script(NAT_NETWORK, network.bridge, f"{network.nat_gateway}/{prefix}",
                                     network.nat_cidr).out.strip()
                what = f"NAT bridge {network.bridge} for {network.nat_cidr}"
        except SshError as exc:
            raise SshError(f"network {network.name}: {exc}") from exc
        step(65, f"{what}: {'already there' if state == 'exists' else 'created'}")


# The node's own services (sshd, VNC, libvirt, migration ports) are not the guests' business.
# One chain, PANEL-GUESTS, jumped to first from INPUT (IPv4 and IPv6), flushed and refilled on
# every run: a second run gives the same rules. Values arrive as positional parameters:
# $1 the NAT bridges, $2 the IPv4 guest ranges (first-last), $3 the IPv6 ones.
# - the panel's own SSH session (SSH_CLIENT) always passes: the install never locks itself out;
# - from a NAT bridge (where guests reach the node as their gateway): replies and ICMP only
#   (IPv6: nothing, NAT networks are IPv4);
# - from a guest address of any pool (public guests come back through the uplink's router):
#   ICMP and replies only.
# Management traffic from elsewhere (the panel, other nodes' migrations, consoles) is untouched.
GUEST_FIREWALL = r"""
set -euf
rules() { iptables -w -S PANEL-GUESTS 2>/dev/null; ip6tables -w -S PANEL-GUESTS 2>/dev/null; }
before=$(rules || true)
for tool in iptables ip6tables; do
  $tool -w -N PANEL-GUESTS 2>/dev/null || true
  $tool -w -F PANEL-GUESTS
  $tool -w -C INPUT -j PANEL-GUESTS 2>/dev/null || $tool -w -I INPUT 1 -j PANEL-GUESTS
done
panel="${SSH_CLIENT:-}"; panel="${panel%% *}"
case "$panel" in
  *:*) ip6tables -w -A PANEL-GUESTS -s "$panel" -j RETURN ;;
  ?*) iptables -w -A PANEL-GUESTS -s "$panel" -j RETURN ;;
esac
for br in $1; do
  iptables -w -A PANEL-GUESTS -i "$br" -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN
  iptables -w -A PANEL-GUESTS -i "$br" -p icmp -j RETURN
  iptables -w -A PANEL-GUESTS -i "$br" -j DROP
  ip6tables -w -A PANEL-GUESTS -i "$br" -j DROP
done
for range in $2; do
  iptables -w -A PANEL-GUESTS -m iprange --src-range "$range" -p icmp -j RETURN
  iptables -w -A PANEL-GUESTS -m iprange --src-range "$range" -m conntrack ! --ctstate ESTABLISHED,RELATED -j DROP
done
for range in $3; do
  ip6tables -w -A PANEL-GUESTS -m iprange --src-range "$range" -p ipv6-icmp -j RETURN
  ip6tables -w -A PANEL-GUESTS -m iprange --src-range "$range" -m conntrack ! --ctstate ESTABLISHED,RELATED -j DROP
done
if [ "$before" = "$(rules)" ]; then echo unchanged; else echo updated; fi
"""


def guest_ranges(node: Node) -> tuple[list[str], list[str]]:
    """The guest address ranges (first-last) of every pool of the node's cluster: IPv4, IPv6.
    A /64 delegation's range runs to the end of its last /64."""
    import ipaddress

    v4, v6 = [], []
    for network in node.cluster.networks.all():
        for pool in network.ip_pools.all():  # the reverse relation: nodes does not import panel.ipam
            start, end = pool.bounds()
            end += pool.step() - 1
            make = ipaddress.IPv4Address if pool.version == 4 else ipaddress.IPv6Address
            (v4 if pool.version == 4 else v6).append(f"{make(start)}-{make(end)}")
    return v4, v6


def guest_firewall(shell: NodeShell, node: Node, step: Step) -> None:
    from nodes.models import Network

    bridges = [n.bridge for n in node.cluster.networks.filter(kind=Network.Kind.NAT)]
    v4, v6 = guest_ranges(node)
    try:
        state = shell.script(GUEST_FIREWALL, " ".join(bridges), " ".join(v4), " ".join(v6)).out.strip()
    except SshError as exc:
        raise SshError(f"the node's firewall for guests: {exc}") from exc
    step(67, f"firewall: guests kept from the node's own services ({'unchanged' if state == 'unchanged' else 'updated'})")


def authorize_panel_key(shell: NodeShell, step: Step) -> None:
    public = panel_identity()[1]
    result = shell.script(
        'mkdir -p ~/.ssh && chmod 700 ~/.ssh && touch ~/.ssh/authorized_keys && '
        'if grep -qxF "$1" ~/.ssh/authorized_keys; then echo present; '
        'else printf "%s\\n" "$1" >> ~/.ssh/authorized_keys && chmod 600 ~/.ssh/authorized_keys && echo added; fi',
        public,
    )
    step(15, "the panel's SSH key: already authorized" if "present" in result.out else "the panel's SSH key: installed")


def install(step: Step, node: Node, password: str = "", private_key: str = "") -> None:
    """Install and connect `node`; raises SshError/DriverError with a clear reason on failure."""
    step(5, f"connecting to {node.ssh_user}@{node.address}:{node.ssh_port}")
    key = load_private_key(private_key) if private_key else None
    with NodeShell(node.address, node.ssh_port, node.ssh_user, node.host_key, password=password,
                   private_key=key) as shell:
        if not node.host_key:
            node.host_key = shell.host_key
            node.save(update_fields=["host_key"])
            step(10, f"host key pinned at first contact: {node.host_key_fingerprint}")
        if password or key:
            authorize_panel_key(shell, step)
    # From here on, only the panel's own key: the password (or the admin's key) is done with.
    with NodeShell(node.address, node.ssh_port, node.ssh_user, node.host_key) as shell:
        family, os_name = detect_family(shell)
        step(20, f"{os_name} ({family} family)")
        if node.cluster.os_family != family:
            raise SshError(f"cluster {node.cluster} is {node.cluster.os_family}, this node is {family}")
        has_virt = cpu_virtualization(shell)
        step(22, "hardware virtualization: yes" if has_virt else "hardware virtualization: no (software emulation)")
        install_packages(shell, family, step)
        start_libvirtd(shell, step)
        capabilities = probe_shell(shell)
        step(50, f"capabilities: {summary(capabilities)}")
        capacity = prepare_storages(shell, node, step)
        prepare_networks(shell, node, step)
        guest_firewall(shell, node, step)
        qemu_binary = "qemu-system-x86_64" if family == "apt" else "/usr/libexec/qemu-kvm"
        qemu = re.search(r"version (\d+\.\d+(\.\d+)?)", shell.run([qemu_binary, "--version"]).out)

    write_client_files()
    uri = node_uri(node.address, node.ssh_port, node.ssh_user)
    forget(uri)
    step(70, "connecting libvirt over SSH (the first capabilities probe may take a while)")
    driver = driver_for(uri)
    host = driver.host_info()
    for storage in node.cluster.storages.exclude(kind=Storage.Kind.LVM):
        driver.ensure_pool(storage.pool_name, storage.path)
    driver.ensure_filters()
    step(75, "network filter panel-clean-traffic (IPv4, ARP and IPv6 anti-spoofing): defined")
    with transaction.atomic():
        node = Node.objects.select_for_update().get(pk=node.pk)
        was_online = node.state == Node.State.ONLINE
        node.uri = uri
        node.os_name = os_name
        node.cpus, node.ram_mib = host.cpus, host.ram_mib
        node.virt_type = host.virt_type if has_virt else "qemu"
        node.libvirt_version = host.libvirt_version
        node.qemu_version = qemu.group(1) if qemu else ""
        node.capabilities = capabilities
        node.storage_capacity = capacity
        node.storage_dir = next((s.path for s in node.cluster.storages.all() if s.path), "")
        if node.state != Node.State.MAINTENANCE:
            node.state = Node.State.ONLINE
        node.last_error = ""
        node.checked_at = timezone.now()
        node.save()
    if not was_online and node.state == Node.State.ONLINE:
        emit("node.up", node=node.id, name=node.name)
    step(95, f"online: {host.cpus} CPUs, {host.ram_mib} MiB RAM, libvirt {host.libvirt_version}, "
             f"QEMU {node.qemu_version or '?'}, domains of type {node.virt_type}")


class NodeInstallJob(Job):
    """The `node_install` operation. A node whose first install fails is removed again: the
    operation keeps the reason, and no half-registered node is left."""

    expected = (Exception,)  # SSH, package and libvirt failures say what went wrong

    def __init__(self, op: Operation):
        super().__init__(op)
        # The password or key given for the first contact is used once and then forgotten.
        self.secret = decrypt(op.params.pop("secret", ""))
        Operation.objects.filter(pk=op.pk).update(params=op.params)
        self.node = Node.objects.select_related("cluster").filter(pk=op.node_id).first()

    def run(self, step) -> None:
        if self.node is None:
            raise DriverError("the node no longer exists")
        kind = self.op.params.get("auth", "")
        install(step, self.node, password=self.secret if kind == "password" else "",
                private_key=self.secret if kind == "key" else "")

    def failed(self, exc: Exception) -> None:
        op, node = self.op, self.node
        if node is None:
            return
        if op.params.get("first_install", False):
            op.log += f"{timezone.now():%H:%M:%S} removed the node: its first install did not finish\n"
            node.delete()
        else:
            Node.objects.filter(pk=node.pk, state=Node.State.INSTALLING).update(state=Node.State.OFFLINE)
            offered = {"offered_host_key": exc.offered} if isinstance(exc, HostKeyChanged) else {}
            Node.objects.filter(pk=node.pk).update(last_error=op.error[:2000], **offered)

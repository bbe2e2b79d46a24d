"""The panel's own host as the first node, when libvirt answers there."""

import logging
import os

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from nodes.capabilities import probe_local, summary
from nodes.connection import driver_for
from nodes.driver import DriverError
from nodes.models import Cluster, Node, Storage

log = logging.getLogger(__name__)


def register_local_node() -> Node | None:
    """Create or refresh the `local` node for settings.LOCAL_LIBVIRT_URI; None without libvirt.

    The node gets a cluster and a directory storage of its own (STORAGE_DIR), so placement
    treats it like any other node.
    """
    uri = settings.LOCAL_LIBVIRT_URI
    if not uri:  # a panel-only install (make run PANEL_ONLY=1)
        return None
    try:
        driver = driver_for(uri)
        host = driver.host_info()
    except (DriverError, ImportError) as exc:
        log.info("no local node: libvirt does not answer at %s (%s)", uri, exc)
        return None
    capabilities = probe_local()  # probed again at every registration: the host may have changed
    with transaction.atomic():
        node = Node.objects.filter(uri=uri).select_related("cluster").first()
        cluster = node.cluster if node and node.cluster else Cluster.objects.get_or_create(name="local")[0]
        storage = cluster.storages.filter(kind=Storage.Kind.DIR).first() or Storage.objects.create(
            cluster=cluster, name="local", kind=Storage.Kind.DIR, path=str(settings.STORAGE_DIR))
        facts = {
            "cluster": cluster,
            "cpus": host.cpus,
            "ram_mib": host.ram_mib,
            "virt_type": host.virt_type,
            "libvirt_version": host.libvirt_version,
            "capabilities": capabilities,
            "storage_dir": storage.path,
            "state": Node.State.ONLINE,
            "last_error": "",
            "checked_at": timezone.now(),
        }
        node, created = Node.objects.update_or_create(uri=uri, defaults=facts,
                                                      create_defaults={**facts, "name": "local"})
    try:
        driver.ensure_pool(storage.pool_name, storage.path)
    except DriverError as exc:
        Node.objects.filter(pk=node.pk).update(state=Node.State.DEGRADED, last_error=f"storage {storage.path}: {exc}")
        log.warning("local node: storage %s unusable: %s", storage.path, exc)
        return node
    ensure_local_network(node)
    stat = os.statvfs(storage.path)
    gib = 1024 ** 3
    node.storage_capacity = {str(storage.id): {"total_gib": stat.f_blocks * stat.f_frsize // gib,
                                               "free_gib": stat.f_bavail * stat.f_frsize // gib}}
    node.save(update_fields=["storage_capacity"])
    log.info("%s local node %s: %s CPUs, %s MiB, virt type %s; %s", "registered" if created else "refreshed",
             uri, host.cpus, host.ram_mib, host.virt_type, summary(capabilities))
    return node


def ensure_local_network(node: Node) -> None:
    """Give the local node's cluster a NAT network (LOCAL_NAT_CIDR) with a pool when it has no
    network yet, and make its bridge here: servers then get an address, reach the internet
    through this host and fetch their install config from the panel at the gateway."""
    import ipaddress
    import subprocess

    from nodes.installer import NAT_NETWORK
    from nodes.models import Network
    from panel.ipam.models import IpPool

    cidr = settings.LOCAL_NAT_CIDR
    if cidr and not node.cluster.networks.exists():
        with transaction.atomic():
            network = Network.objects.create(cluster=node.cluster, name="local", kind=Network.Kind.NAT,
                                             bridge="pnl-local", nat_cidr=cidr)
            hosts = list(ipaddress.ip_network(cidr).hosts())
            IpPool.objects.create(name=f"local-{node.cluster.pk}", network=network, cidr=cidr,
                                  gateway=network.nat_gateway, first=str(hosts[min(9, len(hosts) - 1)]),
                                  last=str(hosts[-1]), quarantine_minutes=0)
        log.info("local node: NAT network %s on bridge %s", cidr, network.bridge)
    for network in node.cluster.networks.filter(kind=Network.Kind.NAT):
        prefix = ipaddress.ip_network(network.nat_cidr).prefixlen
        done = subprocess.run(["sh", "-c", NAT_NETWORK, "sh", network.bridge, f"{network.nat_gateway}/{prefix}",
                               network.nat_cidr], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            log.warning("local node: network %s: %s", network.name, done.stderr.strip() or done.stdout.strip())

"""The panel's own host as the first node, when libvirt answers there."""

import logging

from django.conf import settings
from django.utils import timezone

from nodes.connection import driver_for
from nodes.driver import DriverError
from nodes.models import Node

log = logging.getLogger(__name__)

STORAGE_POOL = "panel"


def register_local_node() -> Node | None:
    """Create or refresh the `local` node for settings.LOCAL_LIBVIRT_URI; None without libvirt."""
    uri = settings.LOCAL_LIBVIRT_URI
    try:
        driver = driver_for(uri)
        host = driver.host_info()
        driver.ensure_pool(STORAGE_POOL, str(settings.STORAGE_DIR))
    except (DriverError, ImportError) as exc:
        log.info("no local node: libvirt does not answer at %s (%s)", uri, exc)
        return None
    facts = {
        "cpus": host.cpus,
        "ram_mib": host.ram_mib,
        "virt_type": host.virt_type,
        "libvirt_version": host.libvirt_version,
        "storage_dir": str(settings.STORAGE_DIR),
        "state": Node.State.ONLINE,
        "last_error": "",
        "checked_at": timezone.now(),
    }
    node, created = Node.objects.update_or_create(uri=uri, defaults=facts, create_defaults={**facts, "name": "local"})
    log.info("%s local node %s: %s CPUs, %s MiB, virt type %s", "registered" if created else "refreshed",
             uri, host.cpus, host.ram_mib, host.virt_type)
    return node

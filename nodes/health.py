"""Node health: every node is checked every few seconds, and state changes are events.

Checks: SSH answers (a banner on the node's port) and libvirtd answers a round trip on a
kept-open connection with keepalive, so a cut link is noticed within seconds, not at the next
TCP timeout. States: online (both answer), degraded (libvirt answers, SSH does not: servers
run but the node cannot be managed fully), offline (libvirt does not answer: out of placement
at once, `node.down`). Nodes in maintenance or being installed are left alone.

Runs as its own process (`manage.py monitor_nodes`, started by runpanel): libvirt's event loop
and the open connections live here, not in the worker.
"""

import logging
import socket
import time
from concurrent.futures import Future, ThreadPoolExecutor

from django.conf import settings
from django.db import close_old_connections, transaction
from django.utils import timezone

from nodes.keepalive import Keepalive
from nodes.models import Node
from panel.events import emit

log = logging.getLogger(__name__)

CHECK_DEADLINE_SECONDS = 8
SKIPPED = (Node.State.MAINTENANCE, Node.State.INSTALLING)


def ssh_answers(address: str, port: int, timeout: float = 3) -> str:
    """'' when an SSH server greets us at address:port, else the reason."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            banner = sock.recv(64)
    except OSError as exc:
        return f"SSH port {port} does not answer: {exc}"
    return "" if banner.startswith(b"SSH-") else f"port {port} answers, but not with SSH"


class Monitor:
    def __init__(self):
        self.keepalive = Keepalive()
        self.pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="health")
        self.pending: dict[int, tuple[float, Future]] = {}

    def libvirt_answers(self, node_id: int, uri: str) -> str:
        """'' when libvirtd on the node answers a round trip, else the reason."""
        return self.keepalive.answers(node_id, uri)

    def check(self, node: Node) -> tuple[str, str]:
        if node.address:
            from nodes.sshfiles import ensure_client_files

            ensure_client_files()
        libvirt_error = self.libvirt_answers(node.id, node.uri)
        if libvirt_error:
            return Node.State.OFFLINE, libvirt_error
        ssh_error = ssh_answers(node.address, node.ssh_port) if node.address else ""
        return (Node.State.DEGRADED, ssh_error) if ssh_error else (Node.State.ONLINE, "")

    def run_once(self) -> None:
        close_old_connections()
        now = time.monotonic()
        for node in Node.objects.exclude(state__in=SKIPPED):
            started, future = self.pending.get(node.id, (None, None))
            if future is None:
                self.pending[node.id] = (now, self.pool.submit(self._checked, node))
            elif not future.done() and now - started > CHECK_DEADLINE_SECONDS:
                # The check itself hangs (a half-dead link): that is an answer too.
                record(node.id, Node.State.OFFLINE, f"no answer within {CHECK_DEADLINE_SECONDS} s")
        self.collect()

    def _checked(self, node: Node) -> tuple[str, str]:
        try:
            return self.check(node)
        except Exception as exc:  # a bug in a check must not stop the monitor
            log.exception("health check of %s failed", node)
            return Node.State.OFFLINE, f"health check failed: {exc}"
        finally:
            close_old_connections()

    def forever(self) -> None:
        interval = settings.HEALTH_INTERVAL_SECONDS
        while True:
            started = time.monotonic()
            self.run_once()
            # Collect results quickly, start new checks every `interval` seconds.
            while time.monotonic() - started < interval:
                time.sleep(0.25)
                self.collect()

    def collect(self) -> None:
        for node_id, (_started, future) in list(self.pending.items()):
            if future.done():
                del self.pending[node_id]
                state, error = future.result()
                record(node_id, state, error)


def record(node_id: int, state: str, error: str) -> None:
    """Write a check's result; a change from or to offline is an event."""
    with transaction.atomic():
        node = Node.objects.select_for_update().filter(pk=node_id).first()
        if node is None or node.state in SKIPPED:
            return
        previous = node.state
        if node.offered_host_key and state == Node.State.ONLINE:
            # Running servers may still answer, but the node cannot be managed until an admin
            # decides about the new key.
            state = Node.State.DEGRADED
            error = f"SSH host key changed: offered {node.offered_host_key_fingerprint}; accept it or investigate"
        node.state, node.last_error, node.checked_at = state, error[:2000], timezone.now()
        node.save(update_fields=["state", "last_error", "checked_at"])
    if previous != state:
        log.warning("node %s: %s -> %s %s", node.name, previous, state, error)
    if previous != Node.State.OFFLINE and state == Node.State.OFFLINE:
        emit("node.down", node=node.id, name=node.name, reason=error)
    elif previous == Node.State.OFFLINE and state != Node.State.OFFLINE:
        emit("node.up", node=node.id, name=node.name)

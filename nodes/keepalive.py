"""Kept-open libvirt connections with keepalive, for the node health monitor.

A connection per node stays open with libvirt's keepalive probes, so a cut link is noticed
within seconds (libvirt closes the connection), not at the next TCP timeout. Keepalive needs
libvirt's event loop: it is registered before the first connection is opened and runs in a
daemon thread of the process that checks (`manage.py monitor_nodes`), not in the worker.

This is the driver room's side of health checks; `nodes.health` keeps the scheduling and the
node states and asks `Keepalive.answers` for the libvirt half of a check.
"""

import threading
from typing import Hashable

import libvirt

# Two unanswered probes two seconds apart close the connection: a cut link is seen within ~6 s.
KEEPALIVE_INTERVAL_SECONDS = 2
KEEPALIVE_COUNT = 2


class Keepalive:
    """One kept-open connection per key (a node), reopened when its URI changes or it died."""

    def __init__(self):
        # libvirt prints every error to stderr by default; the reasons are returned instead.
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        # Must be registered before any connection is opened, or keepalive is not available.
        libvirt.virEventRegisterDefaultImpl()
        threading.Thread(target=self._event_loop, name="libvirt-events", daemon=True).start()
        self._connections: dict[Hashable, tuple[str, libvirt.virConnect]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _event_loop() -> None:
        while True:
            libvirt.virEventRunDefaultImpl()

    def drop(self, key: Hashable) -> None:
        """Close and forget the connection of `key` (the next check opens a new one)."""
        with self._lock:
            entry = self._connections.pop(key, None)
        if entry:
            try:
                entry[1].close()
            except libvirt.libvirtError:
                pass

    def answers(self, key: Hashable, uri: str) -> str:
        """'' when libvirtd at `uri` answers a round trip on the kept connection, else the reason."""
        with self._lock:
            entry = self._connections.get(key)
        if entry and entry[0] != uri:
            self.drop(key)
            entry = None
        try:
            if entry is None:
                conn = libvirt.open(uri)
                conn.setKeepAlive(KEEPALIVE_INTERVAL_SECONDS, KEEPALIVE_COUNT)
                with self._lock:
                    self._connections[key] = (uri, conn)
            else:
                conn = entry[1]
            conn.getLibVersion()
            if not conn.isAlive():
                raise libvirt.libvirtError("the connection was closed")
            return ""
        except libvirt.libvirtError as exc:
            self.drop(key)
            return f"libvirtd does not answer: {exc.get_error_message() or exc}"

"""One driver per node URI per process, reused across operations."""

import threading

from nodes.driver import Driver

_drivers: dict[str, Driver] = {}
_lock = threading.Lock()
_fake_world = None  # the hosts of this process's fake:// nodes (made with the first one)


def driver_for(uri: str) -> Driver:
    """The driver of the node at `uri`: in-memory for fake://, libvirt otherwise."""
    global _fake_world
    with _lock:
        driver = _drivers.get(uri)
        if driver is None:
            if uri.startswith("fake://"):
                from nodes.fake import FakeDriver, FakeWorld

                _fake_world = _fake_world or FakeWorld()
                driver = FakeDriver(uri, _fake_world)
            else:
                from nodes.driver import LibvirtDriver

                driver = LibvirtDriver(uri)
            _drivers[uri] = driver
        return driver


def forget(uri: str) -> None:
    with _lock:
        driver = _drivers.pop(uri, None)
    if driver is not None:
        driver.close()


def forget_fake_nodes() -> None:
    """Tests: every fake:// node's driver and host go; the next `driver_for` starts afresh."""
    global _fake_world
    with _lock:
        for uri in [u for u in _drivers if u.startswith("fake://")]:
            del _drivers[uri]
        _fake_world = None

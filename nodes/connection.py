"""One driver per node URI per process, reused across operations."""

import threading

from nodes.driver import Driver

_drivers: dict[str, Driver] = {}
_lock = threading.Lock()


def driver_for(uri: str) -> Driver:
    """The driver of the node at `uri`: in-memory for fake://, libvirt otherwise."""
    with _lock:
        driver = _drivers.get(uri)
        if driver is None:
            if uri.startswith("fake://"):
                from nodes.fake import FakeDriver

                driver = FakeDriver(uri)
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

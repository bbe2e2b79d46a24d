"""Live graphs: a point every few seconds for the servers someone is watching, over the server
page's websocket (panel/ui/consumers.py, message type `metrics.live`).

Sampling is per node and per web process: one `Driver.node_stats(names)` call each
`LIVE_SECONDS` for the watched domains of a node, shared by every watcher of that node's
servers, at most `LIVE_MAX_PER_NODE` watched servers per node (another is told the live view is
busy). A node loop runs only while it has watchers, so nobody watching means no reads. The read
runs in a thread of its own pool with a deadline; a node that does not answer gives its watchers a
"no answer" notice, and is not read again until the hung read returns.

A point is the rate between two consecutive cumulative reads of the same boot (another boot id,
a counter that went down or a busy domain's missing disks: no point, the next read starts anew),
in the API's series and units (panel/metrics/store.read: counters per second, net_* in bytes/s,
drawn as bit/s). Nothing here is written anywhere: the minute collector
(panel/metrics/collector.py) stays the only writer of the store and of billing.

Messages to a watcher: `{"type": "metrics.live", "status": ...}` with status `on` (subscribed:
`seconds`, `window`), `point` (`t` epoch seconds, `series` {name: value}), `busy`, `no_answer`,
`stopped` (the domain does not run on its node), `off`, `refused` (`detail` says why). No node
names in any of them.
"""

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from django.conf import settings

from nodes.connection import driver_for
from nodes.node_stats import DomainSample

log = logging.getLogger(__name__)

TYPE = "metrics.live"
WINDOW_SECONDS = 600  # what the browser keeps on its charts
# The `detail`s are English for logs and scripts; the page shows its own translated words per status.
BUSY = "Live view is busy on this server's host; try again later."


def live_seconds() -> float:
    return float(getattr(settings, "METRICS_LIVE_SECONDS", 5))


def max_per_node() -> int:
    return int(getattr(settings, "METRICS_LIVE_MAX_PER_NODE", 20))


def deadline_seconds() -> float:
    """A read must be back well before the next one is due."""
    return float(getattr(settings, "METRICS_LIVE_DEADLINE_SECONDS", max(0.5, live_seconds() * 0.8)))


# Reads run here, never on the event loop nor in channels' single database thread: at most one
# per node at a time (a hung node holds one thread until libvirt gives up).
_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="metrics-live")
_reading: dict[int, asyncio.Future] = {}  # node id → its read in progress (outlives a NodeLoop)


def rates(prev: DomainSample, cur: DomainSample, seconds: float) -> dict[str, float] | None:
    """The point between two reads of one domain `seconds` apart, or None when there is none:
    another boot, a counter that went down (never a negative rate), a busy domain's read."""
    if seconds <= 0 or prev.boot_id != cur.boot_id or not (prev.complete and cur.complete):
        return None
    counters = {"cpu_ns": (prev.cpu_ns, cur.cpu_ns),
                "net_rx": (sum(n.rx_bytes for n in prev.nics), sum(n.rx_bytes for n in cur.nics)),
                "net_tx": (sum(n.tx_bytes for n in prev.nics), sum(n.tx_bytes for n in cur.nics))}
    if prev.vcpu_wait_ns is not None and cur.vcpu_wait_ns is not None:
        counters["vcpu_wait_ns"] = (prev.vcpu_wait_ns, cur.vcpu_wait_ns)
    before = {d.device: d for d in prev.disks}
    for disk in cur.disks:
        old = before.get(disk.device)
        if old is None:
            continue  # a disk attached since the last read: from the next one
        for name in ("rd_bytes", "wr_bytes", "rd_ops", "wr_ops"):
            counters[f"disk.{disk.device}.{name}"] = (getattr(old, name), getattr(disk, name))
    if any(new < old for old, new in counters.values()):
        return None
    delta = {name: new - old for name, (old, new) in counters.items()}
    out = {name: value / seconds for name, value in delta.items() if name not in ("cpu_ns", "vcpu_wait_ns")}
    if cur.vcpus:
        capacity = seconds * 1e9 * cur.vcpus
        out["cpu"] = min(100.0, 100 * delta["cpu_ns"] / capacity)
        if "vcpu_wait_ns" in delta:
            out["steal"] = min(100.0, 100 * delta["vcpu_wait_ns"] / capacity)
    if cur.mem_used is not None and cur.mem_total:
        out |= {"mem_used": float(cur.mem_used), "mem_total": float(cur.mem_total)}
    return out


Send = Callable[[dict], Awaitable[None]]


@dataclass
class Watch:
    """One browser watching one server (its socket's `send`)."""

    server_id: int
    domain: str
    send: Send


@dataclass
class NodeLoop:
    """The sampling of one node while anybody watches one of its servers."""

    node_id: int
    uri: str
    watches: dict[object, Watch] = field(default_factory=dict)  # by watcher (the consumer)
    last: dict[str, tuple[float, DomainSample]] = field(default_factory=dict)  # domain → (monotonic, sample)
    task: asyncio.Task | None = None
    reads: int = 0  # node_stats calls made (for the tests)

    def servers(self) -> set[int]:
        return {w.server_id for w in self.watches.values()}

    async def run(self) -> None:
        try:
            while self.watches:
                started = time.monotonic()
                await self.tick()
                await asyncio.sleep(max(0.05, live_seconds() - (time.monotonic() - started)))
        except asyncio.CancelledError:
            pass
        except Exception:  # noqa: BLE001  (never a silent end with watchers left waiting)
            log.exception("live metrics of node %s failed", self.node_id)
            await self.fan(None, no_answer())

    async def tick(self) -> None:
        names = sorted({w.domain for w in self.watches.values()})
        pending = _reading.get(self.node_id)
        if pending is not None and not pending.done():
            await self.fan(None, no_answer())  # the last read still hangs: not another one
            return
        self.reads += 1
        reading = _reading[self.node_id] = asyncio.get_running_loop().run_in_executor(
            _pool, read_node, self.uri, names)
        reading.add_done_callback(lambda f: f.cancelled() or f.exception())  # a late failure is not "never retrieved"
        try:
            sample = await asyncio.wait_for(asyncio.shield(reading), deadline_seconds())
        except asyncio.TimeoutError:
            log.warning("live metrics: node %s did not answer within %s s", self.node_id, deadline_seconds())
            self.last.clear()  # the next point starts from a fresh read
            await self.fan(None, no_answer())
            return
        except Exception as exc:  # noqa: BLE001  (DriverError and whatever libvirt raises)
            log.warning("live metrics: cannot read node %s: %s", self.node_id, exc)
            self.last.clear()
            await self.fan(None, no_answer())
            return
        now, at = time.monotonic(), time.time()
        for name in names:
            cur = sample.domains.get(name)
            if cur is None:
                self.last.pop(name, None)
                await self.fan(name, {"status": "stopped", "detail": "The server is not running."})
                continue
            prev = self.last.get(name)
            self.last[name] = (now, cur)
            point = rates(prev[1], cur, now - prev[0]) if prev else None
            if point is not None:
                await self.fan(name, {"status": "point", "t": round(at, 3), "series": point})
        for name in list(self.last):
            if name not in names:
                del self.last[name]

    async def fan(self, domain: str | None, message: dict) -> None:
        """To every watcher of `domain` (all of them for None)."""
        for watch in list(self.watches.values()):
            if domain is None or watch.domain == domain:
                await deliver(watch, message)


def no_answer() -> dict:
    return {"status": "no_answer", "detail": "The host did not answer in time; retrying."}


def read_node(uri: str, names: list[str]):
    return driver_for(uri).node_stats(names)


async def deliver(watch: Watch, message: dict) -> None:
    try:
        await asyncio.wait_for(watch.send({"type": TYPE, **message}), 2)
    except Exception:  # noqa: BLE001  (a closed or stuck socket: its disconnect unsubscribes it)
        log.debug("live metrics: cannot send to a watcher of server %s", watch.server_id, exc_info=True)


class Hub:
    """This process's node loops. State lives with the event loop that serves the sockets; a
    new event loop (a test's) starts from nothing."""

    def __init__(self):
        self.nodes: dict[int, NodeLoop] = {}
        self.loop = None

    def _here(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self.loop:
            self.nodes, self.loop = {}, loop
            _reading.clear()

    async def subscribe(self, watcher: object, server_id: int, node_id: int, uri: str, domain: str,
                        send: Send) -> bool:
        """Start sending `server_id`'s points to `send`; False (and a `busy` message) when its
        node already has as many watched servers as allowed."""
        self._here()
        self.unsubscribe(watcher)
        node = self.nodes.get(node_id)
        if node is None:
            node = self.nodes[node_id] = NodeLoop(node_id, uri)
        if server_id not in node.servers() and len(node.servers()) >= max_per_node():
            if not node.watches:
                del self.nodes[node_id]
            await deliver(Watch(server_id, domain, send),
                          {"status": "busy", "detail": BUSY})
            return False
        node.watches[watcher] = Watch(server_id, domain, send)
        await deliver(node.watches[watcher], {"status": "on", "seconds": live_seconds(), "window": WINDOW_SECONDS})
        if node.task is None or node.task.done():
            node.task = asyncio.create_task(node.run(), name=f"metrics-live-{node_id}")
        return True

    def unsubscribe(self, watcher: object) -> bool:
        """Stop `watcher`'s points; a node nobody watches any more stops being read."""
        if self.loop is None:
            return False
        found = False
        for node_id, node in list(self.nodes.items()):
            if node.watches.pop(watcher, None) is not None:
                found = True
            if not node.watches:
                if node.task is not None and not node.task.done():
                    node.task.cancel()
                del self.nodes[node_id]
        return found

    def watching(self) -> dict[int, set[int]]:
        """Node id → the server ids watched on it."""
        return {node_id: node.servers() for node_id, node in self.nodes.items()}


hub = Hub()

"""Live graphs over the server page's websocket (panel/metrics/live.py, the `metrics.live`
message of panel/ui/consumers.py), on the real ASGI application with the fake driver on MariaDB.

Rates come from two consecutive cumulative reads and are never negative; a node is read once per
interval for all its watchers, at most METRICS_LIVE_MAX_PER_NODE watched servers per node; a node
that hangs gives a "no answer" notice; nobody watching, no reads; a customer gets only their own
server's points, and no message names a node."""

import asyncio
import json
import time

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings

from nodes.connection import driver_for
from nodes.node_stats import DiskSample, DomainSample, NicSample
from panel.metrics import live
from panel.metrics.models import MetricBucket
from panel.usage.models import UsageSample
from tests.test_ui_isolation import ui_inline, ui_world  # noqa: F401  (fixtures)

pytestmark = pytest.mark.django_db(transaction=True)  # the consumer reads committed rows

TICK = 0.3


@pytest.fixture(autouse=True)
def fast_live(settings):
    settings.ALLOWED_HOSTS = ["*"]
    settings.METRICS_LIVE_SECONDS = TICK
    settings.METRICS_LIVE_DEADLINE_SECONDS = 0.25
    settings.METRICS_LIVE_MAX_PER_NODE = 20


def sample(boot=7, cpu=0, rx=0, tx=0, rd=0, wr=0, mem=None, complete=True, vcpus=2) -> DomainSample:
    return DomainSample(name="d", boot_id=boot, vcpus=vcpus, cpu_ns=cpu, vcpu_wait_ns=0, mem_total=2**30,
                        mem_used=mem, nics=(NicSample("vnet0", rx, tx, 0, 0),),
                        disks=(DiskSample("vda", rd, wr, rd // 4096, wr // 4096, None),), complete=complete)


# --- rates from two reads -------------------------------------------------------------------

def test_it_computes_the_rates_between_two_reads():
    point = live.rates(sample(cpu=0, rx=0, tx=0, rd=0, wr=0),
                       sample(cpu=5 * 10**9, rx=1_000_000, tx=250_000, rd=409_600, wr=819_200, mem=300 * 2**20), 5.0)
    assert point["cpu"] == pytest.approx(50.0)  # 5 s of CPU over 2 vCPUs × 5 s
    assert point["net_rx"] == pytest.approx(200_000)  # bytes/s (the page draws 1.6 Mbit/s)
    assert point["net_tx"] == pytest.approx(50_000)
    assert point["disk.vda.rd_bytes"] == pytest.approx(81_920)
    assert point["disk.vda.wr_bytes"] == pytest.approx(163_840)
    assert point["disk.vda.wr_ops"] == pytest.approx(40)
    assert point["mem_used"] == 300 * 2**20 and point["mem_total"] == 2**30
    assert "steal" in point and all(v >= 0 for v in point.values())


def test_it_skips_a_point_across_a_reset_a_lower_counter_or_a_busy_read():
    before = sample(cpu=10**9, rx=5000, wr=8192)
    assert live.rates(before, sample(boot=8, cpu=2 * 10**9, rx=6000, wr=8192), 5) is None  # another boot
    assert live.rates(before, sample(cpu=2 * 10**9, rx=10, wr=8192), 5) is None  # rx went down
    assert live.rates(before, sample(cpu=2 * 10**9, rx=6000, wr=0), 5) is None  # a disk counter went down
    assert live.rates(before, sample(cpu=2 * 10**9, rx=6000, wr=8192, complete=False), 5) is None
    assert live.rates(before, sample(cpu=2 * 10**9, rx=6000, wr=8192), 0) is None
    assert live.rates(before, sample(cpu=2 * 10**9, rx=6000, wr=8192), 5)["net_rx"] == pytest.approx(200)
    # Memory unknown (no balloon driver): absent, never 0.
    assert "mem_used" not in live.rates(before, sample(cpu=2 * 10**9, rx=6000, wr=8192), 5)


# --- over the websocket ----------------------------------------------------------------------

def headers_for(world, user):
    session = world.client(user).cookies[django_settings.SESSION_COOKIE_NAME].value
    return [(b"host", b"testserver"), (b"origin", b"http://testserver"),
            (b"cookie", f"{django_settings.SESSION_COOKIE_NAME}={session}".encode())]


async def opened(world, user, server_id):
    from panel.asgi import application

    headers = await database_sync_to_async(headers_for)(world, user)
    communicator = WebsocketCommunicator(application, f"/ws/servers/{server_id}/", headers=headers)
    communicator.scope.update(client=["127.0.0.1", 50000], scheme="ws")
    connected, code = await communicator.connect(timeout=5)
    return communicator, connected, code


async def live_messages(communicator, until, timeout=5.0) -> list[dict]:
    """The `metrics.live` messages received until `until(messages)` holds (state messages skipped)."""
    got, ends = [], time.monotonic() + timeout
    while not until(got):
        left = ends - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out; got {got}")
        try:
            message = await communicator.receive_json_from(timeout=left)
        except asyncio.TimeoutError:
            raise AssertionError(f"timed out; got {got}") from None
        if message.get("type") == live.TYPE:
            got.append(message)
    return got


def points(messages):
    return [m for m in messages if m["status"] == "point"]


def node_reads(driver) -> int:
    return sum(1 for method, _ in driver.calls if method == "node_stats")


def test_a_watcher_gets_points_with_the_rates_of_its_server_and_nothing_is_stored(ui_world):
    server = ui_world.alice_server
    driver = driver_for(ui_world.node.uri)
    buckets, usage = MetricBucket.objects.count(), UsageSample.objects.count()

    async def run():
        ws, connected, _ = await opened(ui_world, ui_world.alice, server.pk)
        assert connected
        await ws.send_json_to({"type": "metrics.live", "on": True})
        got = await live_messages(ws, lambda m: m and m[0]["status"] == "on")
        assert got[0]["seconds"] == TICK and got[0]["window"] == 600
        counters = {"rx_bytes": 0, "tx_bytes": 0, "cpu_ns": 0, "write_bytes": 0}
        seen = []
        for _ in range(4):
            for key in counters:
                counters[key] += 1_000_000
            driver.set_counters(server.domain_name, **counters, mem_used=100 * 2**20)
            seen += points(await live_messages(ws, lambda m: points(m)))
        await ws.send_json_to({"type": "metrics.live", "on": False})
        await live_messages(ws, lambda m: m and m[-1]["status"] == "off")
        await ws.disconnect()
        return seen

    seen = async_to_sync(run)()
    assert len(seen) >= 3
    for point in seen:
        s = point["series"]
        assert {"cpu", "steal", "net_rx", "net_tx", "disk.vda.rd_bytes", "disk.vda.wr_bytes", "mem_used"} <= set(s)
        assert all(v >= 0 for v in s.values()), s
        assert s["mem_used"] == 100 * 2**20
        assert point["t"] == pytest.approx(time.time(), abs=30)
    # 1 MB per tick of TICK s (give or take the scheduling): somewhere near 3.3 MB/s, never wild.
    assert any(0.3e6 < p["series"]["net_rx"] < 20e6 for p in seen), seen
    assert MetricBucket.objects.count() == buckets and UsageSample.objects.count() == usage  # nothing written
    assert live.hub.watching() == {}


def test_a_reboot_between_two_reads_gives_no_point_and_never_a_negative_one(ui_world):
    server = ui_world.alice_server
    driver = driver_for(ui_world.node.uri)
    driver.set_counters(server.domain_name, rx_bytes=50_000_000, cpu_ns=10**12)

    async def run():
        ws, _, _ = await opened(ui_world, ui_world.alice, server.pk)
        await ws.send_json_to({"type": "metrics.live", "on": True})
        first = points(await live_messages(ws, lambda m: points(m)))
        # A new QEMU: another boot id and the counters from zero.
        with driver.world.lock:
            driver.host.domains[server.domain_name]["boot_id"] += 1000
            driver.host.domains[server.domain_name]["counters"] = {"rx_bytes": 1000, "cpu_ns": 10**6}
        later = await live_messages(ws, lambda m: len(points(m)) >= 2, timeout=8)
        await ws.disconnect()
        return first, later

    first, later = async_to_sync(run)()
    assert first
    for point in first + points(later):
        assert all(v >= 0 for v in point["series"].values()), point
    # The read after the reboot has no earlier read of its boot: skipped, then points again.
    assert all(p["series"]["net_rx"] < 1e9 for p in points(later))


def test_several_watchers_of_a_node_share_one_read_per_interval(ui_world):
    driver = driver_for(ui_world.node.uri)
    alice_server, bob_server = ui_world.alice_server, ui_world.bob_server
    assert alice_server.node_id == bob_server.node_id
    asked = []
    real = type(driver).node_stats

    def spying(self, names=None):
        asked.append(tuple(sorted(names or ())))
        return real(self, names)

    async def run():
        sockets = [(await opened(ui_world, ui_world.alice, alice_server.pk))[0] for _ in range(2)]
        sockets.append((await opened(ui_world, ui_world.bob, bob_server.pk))[0])
        sockets.append((await opened(ui_world, ui_world.admin, alice_server.pk))[0])
        for ws in sockets:
            await ws.send_json_to({"type": "metrics.live", "on": True})
        for ws in sockets:
            await live_messages(ws, lambda m: m and m[0]["status"] == "on")
        reads_before = node_reads(driver)
        started = time.monotonic()
        for ws in sockets:
            await live_messages(ws, lambda m: len(points(m)) >= 2, timeout=8)
        elapsed = time.monotonic() - started
        reads = node_reads(driver) - reads_before
        watching = live.hub.watching()
        for ws in sockets:
            await ws.disconnect()
        await asyncio.sleep(TICK * 3)
        return reads, elapsed, watching

    import unittest.mock as mock

    with mock.patch.object(type(driver), "node_stats", spying):
        reads, elapsed, watching = async_to_sync(run)()
        after = node_reads(driver)
        time.sleep(TICK * 4)
        assert node_reads(driver) == after, "a node nobody watches is still read"
    # One read per interval for four watchers of two servers (not four or two).
    assert reads <= elapsed / TICK + 2, (reads, elapsed)
    assert watching == {ui_world.node.pk: {alice_server.pk, bob_server.pk}}
    # Each read asks for the watched domains of the node, once the four have subscribed both of them.
    assert asked[-1] == tuple(sorted([alice_server.domain_name, bob_server.domain_name]))
    assert set(asked) <= {asked[-1], (alice_server.domain_name,), (bob_server.domain_name,)}
    assert live.hub.watching() == {}


def test_over_the_bound_per_node_the_toggle_is_told_the_live_view_is_busy(ui_world, settings):
    settings.METRICS_LIVE_MAX_PER_NODE = 1

    async def run():
        alice, _, _ = await opened(ui_world, ui_world.alice, ui_world.alice_server.pk)
        await alice.send_json_to({"type": "metrics.live", "on": True})
        await live_messages(alice, lambda m: m and m[0]["status"] == "on")
        # Another watcher of the same server fits (it is one watched server) …
        admin, _, _ = await opened(ui_world, ui_world.admin, ui_world.alice_server.pk)
        await admin.send_json_to({"type": "metrics.live", "on": True})
        same = await live_messages(admin, lambda m: m)
        # … a second server on that node does not, and nothing breaks: its state still comes.
        bob, _, _ = await opened(ui_world, ui_world.bob, ui_world.bob_server.pk)
        await bob.send_json_to({"type": "metrics.live", "on": True})
        busy = await live_messages(bob, lambda m: m)
        await bob.send_json_to({"type": "refresh"})
        watching = live.hub.watching()
        alice_points = points(await live_messages(alice, lambda m: points(m)))
        for ws in (alice, admin, bob):
            await ws.disconnect()
        return same, busy, watching, alice_points

    same, busy, watching, alice_points = async_to_sync(run)()
    assert same[0]["status"] == "on"
    assert busy[0]["status"] == "busy" and "busy" in busy[0]["detail"] and "try again later" in busy[0]["detail"]
    assert watching == {ui_world.node.pk: {ui_world.alice_server.pk}}
    assert alice_points


def test_a_customer_cannot_watch_another_customers_server(ui_world):
    driver = driver_for(ui_world.node.uri)

    async def run():
        # Bob's socket on Alice's server: closed before anything is read.
        _, connected, code = await opened(ui_world, ui_world.bob, ui_world.alice_server.pk)
        # Bob's own socket, asking for Alice's server by id: refused, and nothing of hers read.
        ws, connected_own, _ = await opened(ui_world, ui_world.bob, ui_world.bob_server.pk)
        before = len(driver.calls)
        await ws.send_json_to({"type": "metrics.live", "on": True, "server": ui_world.alice_server.pk})
        refused = await live_messages(ws, lambda m: m)
        await asyncio.sleep(TICK * 2)
        calls = driver.calls[before:]
        await ws.disconnect()
        return connected, code, connected_own, refused, calls

    connected, code, connected_own, refused, calls = async_to_sync(run)()
    assert not connected and code == 4404
    assert connected_own
    assert refused[0]["status"] == "refused"
    assert not [c for c in calls if c[0] == "node_stats"]
    assert live.hub.watching() == {}


def test_a_node_that_does_not_answer_gives_a_notice_not_a_hang_and_no_node_names(ui_world, monkeypatch):
    import threading

    driver = driver_for(ui_world.node.uri)
    release = threading.Event()
    real = type(driver).node_stats
    started_reads = []

    def hangs(self, names=None):
        started_reads.append(names)
        release.wait(5)
        return real(self, names)

    monkeypatch.setattr(type(driver), "node_stats", hangs)

    async def run():
        ws, _, _ = await opened(ui_world, ui_world.alice, ui_world.alice_server.pk)
        await ws.send_json_to({"type": "metrics.live", "on": True})
        started = time.monotonic()
        got = await live_messages(ws, lambda m: len([x for x in m if x["status"] == "no_answer"]) >= 2, timeout=4)
        took = time.monotonic() - started
        reads = len(started_reads)
        # The socket still answers: a state message comes back at once.
        await ws.send_json_to({"type": "refresh"})
        release.set()
        await ws.disconnect()
        return got, took, reads

    got, took, reads = async_to_sync(run)()
    assert took < 2, took  # the deadline (0.25 s) and the next interval, not the hang
    assert reads == 1, "a node whose read hangs is read again before it returns"
    text = json.dumps(got)
    assert ui_world.node.name not in text and ui_world.node.uri not in text


def test_a_stopped_server_is_told_so_and_nobody_watching_means_no_reads(ui_world):
    driver = driver_for(ui_world.node.uri)
    server = ui_world.alice_server
    driver.destroy(server.domain_name)  # gone from the node while the panel still thinks it runs

    async def run():
        ws, _, _ = await opened(ui_world, ui_world.alice, server.pk)
        await ws.send_json_to({"type": "metrics.live", "on": True})
        got = await live_messages(ws, lambda m: [x for x in m if x["status"] == "stopped"])
        await ws.disconnect()
        return got

    got = async_to_sync(run)()
    assert any(m["status"] == "stopped" for m in got)
    reads = node_reads(driver)
    time.sleep(TICK * 3)
    assert node_reads(driver) == reads and live.hub.watching() == {}

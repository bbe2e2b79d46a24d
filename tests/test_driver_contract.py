"""The driver contract (nodes/driver.py's docstring, nodes/libvirt_backups.py's for backups),
one set of cases run against both drivers: the in-memory FakeDriver, and — marked e2e — the
real LibvirtDriver on qemu:///system.

The real half works in two directory pools of its own (`contract-<hex>`, `contract-<hex>-b`)
with tiny domains (32 MiB, one empty qcow2 disk, no OS: QEMU under TCG runs them, SeaBIOS
finds nothing to boot, and nothing answers the ACPI power button); everything it makes is
named `contract-…` and removed afterwards. At the end, the fake alone: what only it has
(its injected failures, its record of calls, guests that do power off on ACPI, its worlds).
"""

import abc
import hashlib
import os
import secrets
import shutil
import tempfile
import uuid

import blake3
import pytest

from nodes.domain_xml import Disk, DomainSpec, Nic
from nodes.driver import DomainState, Driver, DriverError
from nodes.fake import FakeDriver, FakeWorld

URI = "qemu:///system"


class Node:
    """A driver under test, its two pools and the names it may use."""

    def __init__(self, driver: Driver, prefix: str, pool: str, other_pool: str):
        self.driver, self.prefix, self.pool, self.other_pool = driver, prefix, pool, other_pool
        self.uuids: dict[str, str] = {}
        self.paths: dict[str, str] = {}  # pool -> its folder

    @property
    def real(self) -> bool:
        return not isinstance(self.driver, FakeDriver)

    def name(self, short: str) -> str:
        return f"{self.prefix}-{short}"

    def spec(self, short: str, **overrides) -> DomainSpec:
        """A tiny domain `short` booting an empty disk of its own (created here)."""
        name = self.name(short)
        disk = self.driver.create_volume(self.pool, f"{name}.qcow2", 1)
        values = dict(name=name, uuid=self.uuids.setdefault(name, str(uuid.uuid4())), vcpus=1, ram_mib=32,
                      virt_type="qemu", disks=(Disk(path=disk),), panel_instance=self.prefix, server_id=7)
        return DomainSpec(**{**values, **overrides})

    def domain(self, short: str, running: bool = False, **overrides) -> str:
        spec = self.spec(short, **overrides)
        self.driver.define(spec)
        if running:
            self.driver.start(spec.name)
        return spec.name

    def ignores_acpi(self, name: str) -> None:
        # A real guest without an OS ignores the power button already.
        if not self.real:
            self.driver.host.deaf_to_acpi.add(name)

    def ours(self, domains) -> list:
        return sorted((d for d in domains if d.name.startswith(self.prefix)), key=lambda d: d.name)


def _fake_node() -> Node:
    driver = FakeDriver("fake://contract", FakeWorld())
    node = Node(driver, "contract-fake", "contract-pool", "contract-pool-b")
    node.paths = {node.pool: "/fake/a", node.other_pool: "/fake/b"}
    for pool, path in node.paths.items():
        driver.ensure_pool(pool, path)
    return node


def _remove_pool(conn, name: str) -> None:
    import libvirt

    try:
        pool = conn.storagePoolLookupByName(name)
    except libvirt.libvirtError:
        return
    if pool.isActive():
        pool.refresh(0)
        for vol in pool.listAllVolumes(0):
            vol.delete(0)
        pool.destroy()
    pool.undefine()


@pytest.fixture(params=["fake", pytest.param("libvirt", marks=pytest.mark.e2e)])
def node(request):
    if request.param == "fake":
        yield _fake_node()
        return
    from nodes.driver import LibvirtDriver

    driver = LibvirtDriver(URI)
    prefix = f"contract-{secrets.token_hex(3)}"
    dirs = []
    for _ in range(2):
        # QEMU runs as another user: not under pytest's private tmp folders.
        dirs.append(tempfile.mkdtemp(prefix=f"{prefix}-"))
        os.chmod(dirs[-1], 0o755)
    node = Node(driver, prefix, prefix, f"{prefix}-b")
    node.paths = dict(zip((node.pool, node.other_pool), dirs))
    try:
        for pool, path in node.paths.items():
            driver.ensure_pool(pool, path)
        yield node
    finally:
        for info in node.ours(driver.list_domains()):
            driver.undefine(info.name)
        for pool in (node.pool, node.other_pool):
            _remove_pool(driver.conn, pool)
        driver.close()
        for path in dirs:
            shutil.rmtree(path, ignore_errors=True)


def read(node: Node, name: str, pool: str | None = None) -> bytes:
    return b"".join(node.driver.read_volume(pool or node.pool, name))


# -- domains --------------------------------------------------------------------------------

def test_the_node_answers(node):
    node.driver.ping()
    host = node.driver.host_info()
    assert host.cpus > 0 and host.ram_mib > 0 and host.hostname and host.virt_type in ("kvm", "qemu")


def test_removing_missing_things_succeeds(node):
    d, missing = node.driver, node.name("never-defined")
    d.destroy(missing)
    d.undefine(missing)
    d.delete_volume(node.pool, f"{missing}.qcow2")
    d.request_shutdown(missing)
    assert d.info(missing) is None and d.state(missing) is None and d.stats(missing) is None
    assert not d.volume_exists(node.pool, f"{missing}.qcow2")
    assert d.volume_size(node.pool, f"{missing}.qcow2") is None
    assert d.checkpoints(missing) == []
    d.drop_checkpoints(missing)


def test_removal_is_idempotent(node):
    d = node.driver
    name = node.domain("d1", running=True)
    for _ in range(2):
        d.destroy(name)
        d.undefine(name)
        d.delete_volume(node.pool, f"{name}.qcow2")
    assert node.ours(d.list_domains()) == [] and not d.volume_exists(node.pool, f"{name}.qcow2")


def test_undefine_of_a_running_domain_powers_it_off_first(node):
    name = node.domain("d1", running=True)
    node.driver.undefine(name)
    assert node.driver.info(name) is None


def test_info_list_domains_and_state(node):
    d = node.driver
    name = node.domain("d1", server_id=42)
    info = d.info(name)
    assert (info.name, info.uuid, info.state, info.boot_id) == (name, node.uuids[name], DomainState.SHUTOFF, -1)
    assert info.metadata == {"instance": node.prefix, "id": "42"}
    assert d.state(name) == DomainState.SHUTOFF
    d.start(name)
    running = d.info(name)
    assert running.state == DomainState.RUNNING and running.boot_id > 0 and running.metadata == info.metadata
    other = node.domain("d2")
    assert [(i.name, i.state) for i in node.ours(d.list_domains())] == [
        (name, DomainState.RUNNING), (other, DomainState.SHUTOFF)]


def test_every_boot_has_a_new_boot_id(node):
    d = node.driver
    name = node.domain("d1", running=True)
    first = d.info(name).boot_id
    d.destroy(name)
    assert d.info(name).boot_id == -1
    d.start(name)
    assert d.info(name).boot_id not in (-1, first)


def test_define_of_an_existing_name_replaces_the_definition(node):
    name = node.domain("d1", server_id=1)
    node.domain("d1", server_id=2, vcpus=2)
    assert node.driver.info(name).metadata["id"] == "2"
    assert [i.name for i in node.ours(node.driver.list_domains())] == [name]


def test_define_of_a_running_domain_keeps_it_running(node):
    d = node.driver
    name = node.domain("d1", running=True)
    boot = d.info(name).boot_id
    node.domain("d1", vcpus=2, ram_mib=48)
    info = d.info(name)
    assert info.state == DomainState.RUNNING and info.boot_id == boot


def test_define_with_the_uuid_of_another_domain_fails_and_leaves_nothing(node):
    d = node.driver
    first = node.domain("d1")
    with pytest.raises(DriverError):
        d.define(node.spec("d2", uuid=node.uuids[first]))
    assert d.info(node.name("d2")) is None
    assert [i.name for i in node.ours(d.list_domains())] == [first]


def test_define_of_an_existing_name_with_another_uuid_fails_and_keeps_the_domain(node):
    d = node.driver
    name = node.domain("d1", server_id=1)
    with pytest.raises(DriverError):
        d.define(node.spec("d1", uuid=str(uuid.uuid4()), server_id=2))
    info = d.info(name)
    assert info.uuid == node.uuids[name] and info.metadata["id"] == "1"


def test_start_of_a_running_domain_and_shutdown_of_a_stopped_one_do_nothing(node):
    d = node.driver
    name = node.domain("d1")
    d.request_shutdown(name)
    assert d.state(name) == DomainState.SHUTOFF
    d.start(name)
    boot = d.info(name).boot_id
    d.start(name)
    assert d.info(name).boot_id == boot and d.state(name) == DomainState.RUNNING


def test_stop_forces_off_a_guest_that_ignores_acpi_after_the_timeout(node):
    d = node.driver
    name = node.domain("deaf", running=True)
    node.ignores_acpi(name)
    ticks = []
    assert d.stop(name, timeout=0.6, tick=ticks.append) is True
    assert d.state(name) == DomainState.SHUTOFF and d.info(name).boot_id == -1
    assert ticks and all(0 <= t < 0.6 for t in ticks)


def test_stop_with_no_timeout_forces_at_once(node):
    name = node.domain("d1", running=True)
    assert node.driver.stop(name, timeout=0) is True
    assert node.driver.state(name) == DomainState.SHUTOFF


def test_stop_of_a_stopped_or_missing_domain_does_nothing(node):
    name = node.domain("d1")
    assert node.driver.stop(name, timeout=1) is False
    assert node.driver.stop(node.name("missing"), timeout=1) is False


def test_what_needs_a_domain_is_a_driver_error_for_a_missing_one(node):
    d, missing = node.driver, node.name("missing")
    nic = Nic(bridge="virbr0", mac="52:54:00:00:00:01")
    for call in (lambda: d.start(missing), lambda: d.update_nic(missing, nic),
                 lambda: d.set_resources(missing, 1, 32, live=True),
                 lambda: d.set_user_password(missing, "root", "secret-pass"), lambda: d.vnc_port(missing),
                 lambda: d.backup_disk(missing, node.pool, "x.qcow2", "staging.qcow2", "cp1")):
        with pytest.raises(DriverError):
            call()


def test_a_stopped_domain_has_no_vnc_port_and_no_stats(node):
    d = node.driver
    name = node.domain("d1")
    with pytest.raises(DriverError):
        d.vnc_port(name)
    assert d.stats(name) is None
    d.start(name)
    assert d.vnc_port(name) > 0
    stats = d.stats(name)
    assert stats.boot_id == d.info(name).boot_id


def test_node_stats_read_every_running_domain_at_once_and_the_host(node):
    d = node.driver
    running, stopped = node.domain("d1", running=True), node.domain("d2")
    sample = d.node_stats()
    assert stopped not in sample.domains
    mine = sample.domains[running]
    assert mine.boot_id == d.info(running).boot_id and mine.vcpus == 1
    assert [disk.device for disk in mine.disks] == ["vda"]
    assert mine.cpu_ns >= 0 and mine.mem_total > 0
    assert sample.host.cpus >= 1 and 0 < sample.host.mem_available <= sample.host.mem_total
    assert node.pool in sample.pools and sample.pools[node.pool].capacity > 0
    assert list(d.node_stats([running, stopped, node.name("missing")]).domains) == [running]
    assert d.guest_filesystems(running, timeout=1) == {}  # no guest agent answers
    d.destroy(running)
    assert running not in d.node_stats().domains


def test_update_nic_of_a_nic_the_domain_lacks_is_a_driver_error(node):
    name = node.domain("d1", running=True)
    with pytest.raises(DriverError):
        node.driver.update_nic(name, Nic(bridge="virbr0", mac="52:54:00:00:00:01"))


def test_set_resources_live_within_what_the_domain_booted_with(node):
    d = node.driver
    name = node.domain("d1", running=True)
    assert d.set_resources(name, 1, 32, live=True) is True
    assert d.set_resources(name, 2, 32, live=True) is False  # beyond its boot-time maximum
    assert d.set_resources(name, 1, 32, live=False) is False
    d.destroy(name)
    assert d.set_resources(name, 1, 32, live=True) is False  # not running: the next boot applies


def test_set_user_password_without_an_agent_says_so(node):
    d = node.driver
    name = node.domain("d1")
    assert d.set_user_password(name, "root", "secret-pass") is False  # not running
    d.start(name)
    assert d.set_user_password(name, "root", "secret-pass") is False  # no guest agent answers


# -- volumes --------------------------------------------------------------------------------

def test_ensure_pool_is_idempotent_and_the_pool_has_room(node):
    node.driver.write_volume(node.pool, "contract-kept", [b"kept"], 4)
    node.driver.ensure_pool(node.pool, node.paths[node.pool])
    assert read(node, "contract-kept") == b"kept"
    assert node.driver.pool_free_bytes(node.pool) > 0


def test_create_volume_keeps_an_existing_volume(node):
    d = node.driver
    d.write_volume(node.pool, "contract-disk", [b"the guest's data"], 16)
    path = d.create_volume(node.pool, "contract-disk", 1)
    assert d.create_volume(node.pool, "contract-disk", 2) == path
    assert read(node, "contract-disk") == b"the guest's data"  # not re-created
    assert d.volume_exists(node.pool, "contract-disk")


def test_create_volume_in_a_missing_pool_is_a_driver_error(node):
    with pytest.raises(DriverError):
        node.driver.create_volume("contract-no-such-pool", "x.qcow2", 1)


def test_upload_read_and_size_of_a_volume(node):
    d = node.driver
    d.upload_volume(node.pool, "contract-seed", b"seed one")
    assert d.volume_exists(node.pool, "contract-seed") and d.volume_size(node.pool, "contract-seed") == 8
    assert read(node, "contract-seed") == b"seed one"
    d.upload_volume(node.pool, "contract-seed", b"the second seed")  # replaces
    assert read(node, "contract-seed") == b"the second seed" and d.volume_size(node.pool, "contract-seed") == 15


def test_write_volume_of_the_announced_size_replaces_the_volume(node):
    d = node.driver
    d.write_volume(node.pool, "contract-w", [b"old"], 3)
    data = os.urandom(300 * 1024)
    d.write_volume(node.pool, "contract-w", [data[:1000], data[1000:]], len(data))
    assert read(node, "contract-w") == data and d.volume_size(node.pool, "contract-w") == len(data)


@pytest.mark.parametrize("sent", [b"short", b"far too long"])
def test_write_volume_of_another_size_fails_and_leaves_no_volume(node, sent):
    d = node.driver
    d.write_volume(node.pool, "contract-w", [b"previous"], 8)
    with pytest.raises(DriverError):
        d.write_volume(node.pool, "contract-w", [sent], 8)
    assert not d.volume_exists(node.pool, "contract-w")


def test_copy_volume_between_pools_replaces_the_destination(node):
    d = node.driver
    d.write_volume(node.pool, "contract-src", [b"copied bytes"], 12)
    d.write_volume(node.other_pool, "contract-dst", [b"old"], 3)
    d.copy_volume(node.pool, "contract-src", node.other_pool, "contract-dst")
    assert read(node, "contract-dst", node.other_pool) == b"copied bytes"
    assert read(node, "contract-src") == b"copied bytes"
    assert d.volume_size(node.other_pool, "contract-dst") == 12


def test_move_volume_renames_replacing_the_destination(node):
    d = node.driver
    d.write_volume(node.pool, "contract-new", [b"new disk"], 8)
    d.write_volume(node.pool, "contract-disk", [b"old disk!"], 9)
    d.move_volume(node.pool, "contract-new", "contract-disk")
    assert not d.volume_exists(node.pool, "contract-new")
    assert read(node, "contract-disk") == b"new disk" and d.volume_size(node.pool, "contract-disk") == 8


def test_what_needs_a_volume_is_a_driver_error_for_a_missing_one(node):
    d, missing = node.driver, "contract-missing.qcow2"
    for call in (lambda: read(node, missing), lambda: d.checksum_volume(node.pool, missing),
                 lambda: d.disk_stamp(node.pool, missing), lambda: d.grow_volume(node.pool, missing, 2),
                 lambda: d.copy_volume(node.pool, missing, node.other_pool, "contract-dst"),
                 lambda: d.move_volume(node.pool, missing, "contract-dst"),
                 lambda: d.assemble_disk(node.pool, [missing], "contract-assembled")):
        with pytest.raises(DriverError):
            call()
    assert not d.volume_exists(node.other_pool, "contract-dst") and not d.volume_exists(node.pool, "contract-dst")


def test_checksum_volume(node):
    data = b"checksummed " * 1000
    node.driver.write_volume(node.pool, "contract-sum", [data], len(data))
    algorithm, digest = node.driver.checksum_volume(node.pool, "contract-sum").split(":")
    expected = blake3.blake3(data).hexdigest() if algorithm == "blake3" else hashlib.sha256(data).hexdigest()
    assert algorithm in ("blake3", "sha256") and digest == expected


def test_grow_volume_grows_and_says_whether_the_guest_sees_it_now(node):
    d = node.driver
    name = node.domain("d1")
    assert d.grow_volume(node.pool, f"{name}.qcow2", 2, domain_name=name) is False  # stopped: next boot
    assert d.grow_volume(node.pool, f"{name}.qcow2", 1) is False  # never shrinks
    d.start(name)
    assert d.grow_volume(node.pool, f"{name}.qcow2", 3, domain_name=name) is True


def test_disk_stamp_moves_when_the_disk_is_replaced_or_booted_from(node):
    d = node.driver
    name = node.domain("d1")
    disk = f"{name}.qcow2"
    stamp = d.disk_stamp(node.pool, disk)
    assert d.disk_stamp(node.pool, disk) == stamp  # nothing happened
    d.start(name)
    d.destroy(name)
    assert d.disk_stamp(node.pool, disk) != stamp
    d.write_volume(node.pool, "contract-w", [b"12345678"], 8)
    d.write_volume(node.other_pool, "contract-c", [b"copy me!"], 8)
    d.write_volume(node.pool, "contract-m", [b"move me!"], 8)
    # Every replacement by one of the same size, so the size alone cannot tell.
    for what, replace in [
        ("write", lambda: d.write_volume(node.pool, "contract-w", [b"abcdefgh"], 8)),
        ("upload", lambda: d.upload_volume(node.pool, "contract-w", b"ABCDEFGH")),
        ("copy", lambda: d.copy_volume(node.other_pool, "contract-c", node.pool, "contract-w")),
        ("move", lambda: d.move_volume(node.pool, "contract-m", "contract-w")),
    ]:
        before = d.disk_stamp(node.pool, "contract-w")
        replace()
        assert d.disk_stamp(node.pool, "contract-w") != before, what


# -- backups --------------------------------------------------------------------------------

def test_backup_of_a_stopped_domain_is_full_without_a_checkpoint(node):
    d = node.driver
    name = node.domain("d1")
    assert d.backup_disk(name, node.pool, f"{name}.qcow2", "contract-b1", "cp1") == ("full", False)
    assert d.volume_exists(node.pool, "contract-b1") and d.checkpoints(name) == []


def test_backups_of_a_running_domain_make_checkpoints_and_increments(node):
    d = node.driver
    name = node.domain("d1", running=True)
    disk = f"{name}.qcow2"
    assert d.backup_disk(name, node.pool, disk, "contract-b1", "cp1") == ("full", True)
    assert d.backup_disk(name, node.pool, disk, "contract-b2", "cp2", since="cp1",
                         staging_pool=node.other_pool) == ("incremental", True)
    assert d.volume_exists(node.other_pool, "contract-b2")
    assert d.checkpoints(name) == ["cp1", "cp2"]
    d.drop_checkpoints(name, keep={"cp2"})
    assert d.checkpoints(name) == ["cp2"]
    # An increment since a checkpoint that is gone becomes a full backup.
    assert d.backup_disk(name, node.pool, disk, "contract-b3", "cp3", since="cp1") == ("full", True)
    d.assemble_disk(node.pool, ["contract-b3"], "contract-assembled")
    assert d.volume_exists(node.pool, "contract-assembled")


def test_checkpoints_are_listed_oldest_first(node):
    # backup/taking.py follows the chain by this order; libvirt's own listing is a hash table's.
    d = node.driver
    name = node.domain("d1", running=True)
    disk = f"{name}.qcow2"
    names = [f"cp{i}" for i in range(1, 7)]
    for i, checkpoint in enumerate(names):
        d.backup_disk(name, node.pool, disk, f"contract-b{i}", checkpoint, since=names[i - 1] if i else None)
    assert d.checkpoints(name) == names


def test_an_empty_increment_is_a_new_volume(node):
    name = node.domain("d1")
    node.driver.empty_increment(node.pool, f"{name}.qcow2", "contract-e1", node.other_pool)
    assert node.driver.volume_exists(node.other_pool, "contract-e1")


# -- the contract is abstract ---------------------------------------------------------------

def test_a_driver_that_lacks_a_primitive_cannot_be_made():
    assert {"ping", "close", "define", "read_volume"} <= Driver.__abstractmethods__
    assert {"state", "stop"}.isdisjoint(Driver.__abstractmethods__)  # composed: written once
    rest = {name: (lambda self, *args, **kwargs: None) for name in Driver.__abstractmethods__ - {"ping"}}
    lacking = abc.ABCMeta("Lacking", (Driver,), rest)
    with pytest.raises(TypeError, match="ping"):
        lacking()


# -- the fake alone -------------------------------------------------------------------------

@pytest.fixture
def fake() -> Node:
    return _fake_node()


def test_the_fake_guest_that_listens_to_acpi_stops_gracefully(fake):
    name = fake.domain("d1", running=True)
    assert fake.driver.stop(name, timeout=5) is False
    assert fake.driver.state(name) == DomainState.SHUTOFF
    assert ("request_shutdown", name) in fake.driver.calls and ("destroy", name) not in fake.driver.calls


def test_the_fake_records_calls_per_driver(fake):
    name = fake.domain("deaf", running=True)
    fake.ignores_acpi(name)
    fake.driver.stop(name, timeout=0.3)
    assert ("request_shutdown", name) in fake.driver.calls and ("destroy", name) in fake.driver.calls
    assert FakeDriver("fake://other", fake.driver.world).calls == []


def test_injected_failures_fire_once_on_that_driver_only(fake):
    d = fake.driver
    name = fake.domain("d1")
    other = FakeDriver("fake://contract", d.world)  # another connection to the same host
    d.fail_next["start"] = DriverError("boom", retryable=True)
    other.start(name)
    other.destroy(name)
    with pytest.raises(DriverError) as exc:
        d.start(name)
    assert exc.value.retryable
    d.start(name)
    assert d.state(name) == DomainState.RUNNING


def test_fake_hosts_are_shared_per_uri_within_a_world_and_nothing_between_worlds(fake):
    name = fake.domain("d1")
    world = fake.driver.world
    assert FakeDriver("fake://contract", world).info(name) is not None
    assert FakeDriver("fake://elsewhere", world).info(name) is None
    assert FakeDriver("fake://contract").info(name) is None  # a world of its own


def test_a_fake_domain_migrates_between_hosts_of_one_world(fake):
    name = fake.domain("d1")
    dest = FakeDriver("fake://dest", fake.driver.world)
    with pytest.raises(DriverError):
        fake.driver.migrate(name, dest, "10.0.0.2", "<domain/>")  # not running
    fake.driver.start(name)
    fake.driver.migrate(name, dest, "10.0.0.2", "<domain/>")
    assert fake.driver.info(name) is None and dest.state(name) == DomainState.RUNNING


def test_the_process_keeps_one_fake_driver_per_uri_until_the_fake_nodes_are_forgotten():
    from nodes.connection import driver_for, forget_fake_nodes

    first = driver_for("fake://contract-cached")
    assert driver_for("fake://contract-cached") is first
    assert driver_for("fake://contract-other").world is first.world
    forget_fake_nodes()
    assert driver_for("fake://contract-cached") is not first


# -- data disks (nodes/libvirt_disks.py) ----------------------------------------------------

def data_disk(node: Node, name: str, target: str = "vdb") -> Disk:
    return Disk(path=node.driver.create_volume(node.pool, f"{name}-{target}.qcow2", 1), target=target)


def defined_targets(node: Node, name: str) -> list[str]:
    if not node.real:
        return [d.target for d in node.driver.host.domains[name]["spec"].disks]
    import xml.etree.ElementTree as ET

    import libvirt
    dom = node.driver.conn.lookupByName(name)
    root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    return [t.get("dev") for t in root.findall("devices/disk/target")]


def live_targets(node: Node, name: str) -> set[str]:
    if not node.real:
        return node.driver.live_disks(name)
    import xml.etree.ElementTree as ET

    root = ET.fromstring(node.driver.conn.lookupByName(name).XMLDesc(0))
    return {t.get("dev") for t in root.findall("devices/disk/target")}


def test_a_disk_attached_to_a_stopped_domain_is_in_its_definition_and_detaches(node):
    d = node.driver
    name = node.domain("d1")
    disk = data_disk(node, name)
    assert d.attach_disk(name, disk) is False
    assert d.attach_disk(name, disk) is False  # a retried add changes nothing
    assert defined_targets(node, name) == ["vda", "vdb"]
    d.start(name)
    assert live_targets(node, name) == {"vda", "vdb"}
    d.destroy(name)
    d.detach_disk(name, disk, timeout=1)
    d.detach_disk(name, disk, timeout=1)  # not attached: nothing to do
    assert defined_targets(node, name) == ["vda"]


def test_a_disk_is_hot_plugged_and_a_guest_that_does_not_release_it_keeps_it(node):
    # A real domain without an OS never answers the unplug request (no ACPI hot-plug driver).
    d = node.driver
    name = node.domain("d1", running=True)
    disk = data_disk(node, name)
    assert d.attach_disk(name, disk) is True
    assert live_targets(node, name) == {"vda", "vdb"} and defined_targets(node, name) == ["vda", "vdb"]
    if not node.real:
        d.host.holds_disks.add(name)
    ticks = []
    with pytest.raises(DriverError, match="did not release vdb within 2 s"):
        d.detach_disk(name, disk, timeout=2, tick=ticks.append)
    assert ticks or not node.real
    assert "vdb" in live_targets(node, name) and defined_targets(node, name) == ["vda", "vdb"]


def test_backups_of_all_disks_share_one_checkpoint_and_a_new_disk_makes_a_full_one(node):
    d = node.driver
    name = node.domain("d1", running=True)
    vdb = data_disk(node, name)
    d.attach_disk(name, vdb)
    disks = [("vda", f"{name}.qcow2", "contract-b1"), ("vdb", f"{name}-vdb.qcow2", "contract-b1-vdb")]
    assert d.backup_disks(name, node.pool, disks, "cp1") == ("full", True)
    assert all(d.volume_exists(node.pool, s) for _t, _v, s in disks)
    again = [(t, v, s.replace("b1", "b2")) for t, v, s in disks]
    assert d.backup_disks(name, node.pool, again, "cp2", since="cp1", staging_pool=node.other_pool) == \
        ("incremental", True)
    assert all(d.volume_exists(node.other_pool, s) for _t, _v, s in again)
    vdc = data_disk(node, name, "vdc")
    d.attach_disk(name, vdc)
    more = [*again, ("vdc", f"{name}-vdc.qcow2", "contract-b3-vdc")]
    assert d.backup_disks(name, node.pool, more, "cp3", since="cp2") == ("full", True)  # vdc has no bitmap
    d.destroy(name)
    assert d.backup_disks(name, node.pool, [(t, v, s + "-off") for t, v, s in more], "cp4") == ("full", False)


# -- snapshots (nodes/libvirt_snapshots.py) -------------------------------------------------

def test_a_stopped_domains_snapshot_is_an_overlay_that_reverts_and_merges(node):
    d = node.driver
    name = node.domain("s1")
    disk, overlay = f"{name}.qcow2", f"{name}-snap1.qcow2"
    assert d.snapshot_disk(name, node.pool, disk, overlay) is False  # nothing to freeze
    assert d.volume_exists(node.pool, overlay)
    d.revert_disk(node.pool, disk, overlay)
    assert d.volume_exists(node.pool, overlay)
    d.merge_snapshot(name, node.pool, disk, overlay, None)
    assert not d.volume_exists(node.pool, overlay) and d.volume_exists(node.pool, disk)
    with pytest.raises(DriverError):
        d.snapshot_disk(name, node.pool, disk, overlay, memory=f"{name}-snap1.mem")


def test_a_running_domains_snapshots_merge_online_below_and_at_the_top(node):
    d = node.driver
    name = node.domain("s2", running=True)
    disk, first, second = f"{name}.qcow2", f"{name}-snap1.qcow2", f"{name}-snap2.qcow2"
    assert d.snapshot_disk(name, node.pool, disk, first) is False  # no guest agent answers
    d.snapshot_disk(name, node.pool, first, second)
    d.merge_snapshot(name, node.pool, disk, first, second)  # below the top: the newer one's backing changes
    assert not d.volume_exists(node.pool, first) and d.state(name) == DomainState.RUNNING
    d.merge_snapshot(name, node.pool, disk, second, None)  # the top: active commit and pivot
    assert not d.volume_exists(node.pool, second) and d.state(name) == DomainState.RUNNING


def test_a_memory_snapshot_restores_the_domain_running(node):
    d = node.driver
    name = node.domain("s3", running=True)
    disk, overlay, memory = f"{name}.qcow2", f"{name}-snap1.qcow2", f"{name}-snap1.mem"
    d.snapshot_disk(name, node.pool, disk, overlay, memory=memory)
    assert d.volume_exists(node.pool, memory) and d.state(name) == DomainState.RUNNING
    d.destroy(name)
    d.revert_disk(node.pool, disk, overlay)
    spec = node.spec("s3", disks=(Disk(path=f"{node.paths[node.pool]}/{overlay}"),))
    d.define(spec)
    d.restore_memory(name, node.pool, memory, spec.to_xml())
    assert d.state(name) == DomainState.RUNNING

# -- OVF export (nodes/libvirt_ovf.py) ------------------------------------------------------

def _raw_of(image: bytes) -> bytes:
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        with open(f"{tmp}/image", "wb") as f:
            f.write(image)
        subprocess.run(["qemu-img", "convert", "-q", "-O", "raw", f"{tmp}/image", f"{tmp}/raw"], check=True)
        with open(f"{tmp}/raw", "rb") as f:
            return f.read()


@pytest.mark.parametrize("fmt,magic", [("vmdk", b"KDMV"), ("qcow2", b"QFI\xfb")])
def test_export_disk_writes_a_standalone_image_of_the_disk(node, fmt, magic):
    d = node.driver
    data = b"exported bytes" + os.urandom(64 * 1024)
    d.write_volume(node.pool, "contract-ex", [data], len(data))
    d.export_disk(node.pool, "contract-ex", f"contract-ex.{fmt}", fmt, source_format="raw")
    image = read(node, f"contract-ex.{fmt}")
    assert image.startswith(magic) and _raw_of(image)[:len(data)] == data
    assert read(node, "contract-ex") == data  # the source is untouched


def test_export_disk_of_a_missing_volume_or_to_an_unknown_format_leaves_nothing(node):
    d = node.driver
    with pytest.raises(DriverError):
        d.export_disk(node.pool, "contract-none", "contract-none.vmdk", "vmdk")
    d.write_volume(node.pool, "contract-ex2", [b"x" * 512], 512)
    with pytest.raises(DriverError):
        d.export_disk(node.pool, "contract-ex2", "contract-ex2.vhd", "vhd")
    assert not d.volume_exists(node.pool, "contract-none.vmdk") and not d.volume_exists(node.pool, "contract-ex2.vhd")

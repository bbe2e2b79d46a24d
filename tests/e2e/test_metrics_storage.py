"""A storage filling up, on real libvirt (qemu:///system) and the suite's database: a directory
pool on a 64 MiB tmpfs of its own, read by the collector; writing 40 MiB into it raises its
"used" by that within 5 %, and the storage alert (its threshold lowered to 40 %) fires, then
resolves once the space is freed. (The forecast of days to full is unit-tested on a synthetic
linear fill: tests/test_alerts.py.)"""

import datetime as dt
import secrets
import subprocess
import tempfile
from pathlib import Path

import pytest

from nodes.connection import forget
from nodes.driver import LibvirtDriver

pytestmark = [pytest.mark.e2e, pytest.mark.django_db]
MIB = 2**20


@pytest.fixture
def small_storage():
    from nodes.models import Cluster, Node, Storage

    mount = Path(tempfile.mkdtemp(prefix="pnl-fill-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], check=True)
    cluster = Cluster.objects.create(name="fill")
    storage = Storage.objects.create(cluster=cluster, name=f"fill-{secrets.token_hex(3)}", kind="dir", path=str(mount))
    node = Node.objects.create(name="local", uri="qemu:///system", cluster=cluster, cpus=2, ram_mib=1024,
                               storage_dir=str(mount))
    driver = LibvirtDriver("qemu:///system")
    driver.ensure_pool(storage.pool_name, str(mount))
    try:
        yield storage, node, mount
    finally:
        import libvirt

        conn = libvirt.open("qemu:///system")
        pool = conn.storagePoolLookupByName(storage.pool_name)
        if pool.isActive():
            pool.destroy()
        pool.undefine()
        conn.close()
        driver.close()
        forget("qemu:///system")  # the collector's kept connection
        subprocess.run(["umount", str(mount)], check=True)
        mount.rmdir()


def test_filling_a_storage_raises_used_and_fires_its_alert(small_storage):
    from panel.alerts import evaluation
    from panel.alerts.kinds import Kind
    from panel.alerts.models import Alert, Rule
    from panel.alerts.rules import ensure_builtin_rules
    from panel.metrics import collector, store
    from panel.metrics.models import MetricBucket

    storage, node, mount = small_storage
    ensure_builtin_rules()
    Rule.objects.exclude(builtin=Kind.STORAGE_FULL).update(enabled=False)
    Rule.objects.filter(builtin=Kind.STORAGE_FULL).update(warning=40, critical=90, margin=5, resolve_after=1)
    now = store.floor(dt.datetime.now(dt.UTC), 60)

    def used(minute: int) -> int:
        result = collector.collect(now=now + dt.timedelta(minutes=minute))
        assert result["failed_nodes"] == [], result
        data = MetricBucket.objects.get(kind="storage", target_id=storage.pk, step=60,
                                        start=now + dt.timedelta(minutes=minute)).data
        assert 60 * MIB <= data["capacity"][0] <= 68 * MIB, data
        return data["used"][0]

    def alerts() -> list:
        return list(Alert.objects.filter(rule__builtin=Kind.STORAGE_FULL, target_id=storage.pk))

    empty = used(0)
    evaluation.evaluate(now + dt.timedelta(minutes=0, seconds=30))
    assert [a.state for a in alerts()] == []
    subprocess.run(["dd", "if=/dev/zero", f"of={mount}/fill", "bs=1M", "count=40", "status=none"], check=True)
    full = used(1)
    assert abs((full - empty) - 40 * MIB) <= 0.05 * 40 * MIB, (empty, full)
    evaluation.evaluate(now + dt.timedelta(minutes=1, seconds=30))
    [alert] = alerts()
    assert alert.state == "firing" and alert.severity == "warning", alert
    (mount / "fill").unlink()
    used(2)
    evaluation.evaluate(now + dt.timedelta(minutes=2, seconds=30))
    [alert] = alerts()
    assert alert.state == "resolved", alert

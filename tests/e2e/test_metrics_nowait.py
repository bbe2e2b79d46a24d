"""NOWAIT on real libvirt (qemu:///system): one domain whose QEMU monitor is held — its QEMU
stopped (SIGSTOP) while a `virsh domstats` waits on it, as a monitor busy with a migration or
backup job holds it — does not stall the bulk read of the others. Without NOWAIT the same call
waits for libvirt's 30 s job timeout (measured: 30.0 s against 0.004 s); with it the busy
domain comes back incomplete, which the collector records as a "busy" gap (never as counters
that went to zero), and a real pull-mode backup job running on another domain changes nothing.
"""

import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

import pytest

from benchmarks.metrics_collect import domain_xml
from nodes.driver import LibvirtDriver

pytestmark = pytest.mark.e2e
IMAGES = Path("/var/lib/libvirt/images")


@pytest.fixture
def three_domains():
    import libvirt

    conn = libvirt.open("qemu:///system")
    prefix = f"nowait-{secrets.token_hex(3)}"
    made = []
    try:
        for short in ("busy", "calm", "backed"):
            disk = IMAGES / f"{prefix}-{short}.qcow2"
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
            made.append((conn.createXML(domain_xml(f"{prefix}-{short}", disk), 0), disk))
        yield conn, [dom for dom, _ in made]
    finally:
        for dom, disk in made:
            try:
                os.kill(qemu_pid(dom.name()), signal.SIGCONT)
            except (ProcessLookupError, ValueError):
                pass
            try:
                dom.destroy()
            except libvirt.libvirtError:
                pass
            disk.unlink(missing_ok=True)
        for leftover in IMAGES.glob(f"{prefix}-*"):
            leftover.unlink()
        conn.close()


def qemu_pid(name: str) -> int:
    return int(Path(f"/run/libvirt/qemu/{name}.pid").read_text())


def test_a_domain_with_a_held_monitor_does_not_stall_the_others(three_domains):
    conn, (busy, calm, backed) = three_domains
    scratch = IMAGES / f"{backed.name()}-scratch.qcow2"
    socket = f"/var/lib/libvirt/qemu/{backed.name()}-nbd.sock"
    backed.backupBegin(f"""<domainbackup mode='pull'><server transport='unix' socket='{socket}'/>
<disks><disk name='vda' backup='yes' type='file'><scratch file='{scratch}'/></disk></disks></domainbackup>""", None, 0)
    os.kill(qemu_pid(busy.name()), signal.SIGSTOP)
    holder = subprocess.Popen(["virsh", "-c", "qemu:///system", "domstats", busy.name()],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1)  # the holder has taken the busy domain's job and waits on its monitor
        driver = LibvirtDriver("qemu:///system")
        started = time.monotonic()
        sample = driver.node_stats()
        took = time.monotonic() - started
        assert took < 5, took
        assert sample.domains[calm.name()].complete and sample.domains[calm.name()].disks[0].device == "vda"
        assert sample.domains[backed.name()].complete  # a backup job does not hold the monitor
        assert not sample.domains[busy.name()].complete  # no disk counters, not zeros taken as a restart
        assert sample.domains[busy.name()].cpu_ns > 0
        driver.close()
    finally:
        os.kill(qemu_pid(busy.name()), signal.SIGCONT)
        holder.wait(timeout=40)
        backed.abortJob()
        scratch.unlink(missing_ok=True)

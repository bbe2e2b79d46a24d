"""Node capabilities: the probe's facts and what they decide, placement filtering on a plan's
needs (traffic shaping for a bandwidth limit) with the reason in the 409 and the preview, and
the node page and API showing them. The probe itself runs for real in
tests/e2e/test_node_capabilities.py."""

import pytest

from nodes import capabilities, placement
from nodes.models import Network, Node
from panel.ipam.models import IpAddress, IpPool
from panel.vps.models import Operation, Plan, VirtualServer
from tests import test_ui_isolation
from tests.conftest import fake_node

ui_inline, ui_world = test_ui_isolation.ui_inline, test_ui_isolation.ui_world  # the UI tests' fixtures

pytestmark = pytest.mark.django_db

# What the probe printed on the development machine: TCG only, a kernel without sfq/fw/police.
NO_SHAPING = """cpu_flags=
dev_kvm=yes
nested=
tc_htb=ok
tc_class=ok
tc_fw=Error: TC classifier not found. We have an error talking to the kernel
tc_ingress=ok
tc_police=Error: Failed to load TC action module. We have an error talking to the kernel
tc_sfq=Error: Specified qdisc kind is unknown.
virsh_version=Compiled against library: libvirt 9.0.0 Using library: libvirt 9.0.0 Using API: QEMU 9.0.0 Running hypervisor: QEMU 7.2.22
nwfilters=24 clean-traffic
domcaps_backup=<backup supported='yes'
domcaps_channel=pty unix spicevmc
emulator=/usr/bin/qemu-system-x86_64
qemu_serial=virtio-serial-pci virtserialport
"""

FULL = """cpu_flags=vmx
dev_kvm=yes
nested=kvm_intel:Y
tc_htb=ok
tc_class=ok
tc_fw=ok
tc_ingress=ok
tc_police=ok
tc_sfq=ok
virsh_version=Using library: libvirt 10.0.0 Running hypervisor: QEMU 8.2.2
nwfilters=19 clean-traffic
domcaps_backup=<backup supported='yes'
domcaps_channel=pty unix
emulator=/usr/bin/qemu-system-x86_64
qemu_serial=virtio-serial-pci virtserialport
"""

NO_SFQ = {"shaping": {"ok": False, "detail": "tc sfq missing (Specified qdisc kind is unknown)"}}


def decided(text: str) -> dict:
    return capabilities.decide(capabilities.parse(text))


def oks(caps: dict) -> dict:
    return {name: cap["ok"] for name, cap in caps.items()}


# -- the probe's facts ------------------------------------------------------------------------
def test_a_tcg_host_without_sfq():
    caps = decided(NO_SHAPING)
    assert oks(caps) == {"kvm": False, "shaping": False, "nwfilter": True, "backup": True, "guest_agent": True,
                         "nested": False}
    assert caps["shaping"]["detail"] == ("tc sfq, tc fw filter, tc u32 police missing "
                                         "(Specified qdisc kind is unknown)")
    assert "no vmx/svm" in caps["kvm"]["detail"]
    assert caps["backup"]["detail"] == "libvirt 9.0.0, QEMU 7.2.22"  # the running hypervisor, not the API
    assert caps["nested"]["detail"] == "no kvm_intel/kvm_amd module loaded"


def test_a_full_kvm_host():
    caps = decided(FULL)
    assert set(oks(caps).values()) == {True}
    assert caps["nested"]["detail"] == "kvm_intel nested=Y"
    assert caps["kvm"]["detail"] == "vmx and /dev/kvm"


def test_broken_kvm_old_libvirt_no_filters_no_agent():
    caps = decided("cpu_flags=svm\ndev_kvm=no\nnested=kvm_amd:0\n"
                   "virsh_version=Using library: libvirt 6.0.0 Running hypervisor: QEMU 4.2.1\n"
                   "nwfilters=3 \ndomcaps_channel=pty\n")
    assert oks(caps) == {"kvm": False, "shaping": None, "nwfilter": False, "backup": False, "guest_agent": False,
                         "nested": False}
    assert "/dev/kvm is not usable" in caps["kvm"]["detail"]
    assert caps["backup"]["detail"] == "libvirt 6.0.0 < 7.2"
    assert caps["nwfilter"]["detail"] == "libvirt has no clean-traffic filter (3 filters)"
    assert caps["guest_agent"]["detail"] == "libvirt offers no unix channel (only pty)"


def test_what_cannot_be_tested_is_unknown_not_missing():
    caps = decided("netns=mount --make-shared /run/netns failed: Permission denied\n")
    assert caps["shaping"] == {"ok": None, "detail": "not tested: no network namespace for the test "
                                                     "(mount --make-shared /run/netns failed: Permission denied)"}
    assert caps["backup"]["ok"] is None and caps["nwfilter"]["ok"] is None and caps["guest_agent"]["ok"] is None
    # garbage and an empty answer parse to nothing
    assert capabilities.parse("hello\n=x\nNot-A-Key=1\n") == {}
    assert decided("")["shaping"]["ok"] is None


def test_a_missing_htb_is_named_rather_than_its_class():
    caps = decided("tc_htb=Error: Specified qdisc kind is unknown.\ntc_class=Error: failed\ntc_fw=ok\n"
                   "tc_ingress=ok\ntc_police=ok\ntc_sfq=ok\n")
    assert caps["shaping"] == {"ok": False, "detail": "tc htb, tc htb class missing (Specified qdisc kind is unknown)"}


def test_the_installer_runs_the_one_probe_script_through_its_shell():
    from nodes.ssh import Result

    calls = []

    class Shell:
        def script(self, body, *args, check=True, timeout=600):
            calls.append((body, args, check, timeout))
            return Result(0, FULL, "")

    caps = capabilities.probe_shell(Shell())
    assert caps == decided(FULL)
    assert calls == [(capabilities.PROBE, (), False, capabilities.PROBE_TIMEOUT)]
    assert capabilities.summary(decided(NO_SHAPING)) == ("kvm no, shaping no, nwfilter yes, backup yes, "
                                                         "guest_agent yes, nested no")


def test_the_probe_cleans_up_after_itself_and_quotes_its_names():
    script = capabilities.PROBE
    assert "trap 'timeout 20 ip netns del \"$ns\"" in script and 'ns="caps-probe-$$-' in script
    # every command that could hang (ip, tc through x(), virsh, QEMU) runs under a timeout
    risky = [line for line in script.splitlines() if any(word in line for word in
                                                          ("ip netns add", "x() {", "$V ", '"$emulator" -'))]
    assert len(risky) == 6 and all("$T" in line for line in risky), risky


# -- needs and placement ----------------------------------------------------------------------
def test_a_bandwidth_limit_needs_traffic_shaping():
    assert capabilities.needs_of(Plan(bandwidth_mbit=100)) == {"shaping"}
    assert capabilities.needs_of(Plan(throttled_mbit=8)) == {"shaping"}
    assert capabilities.needs_of(Plan()) == frozenset()
    # unknown (never probed, or could not tell) is allowed; only a known "no" refuses
    assert capabilities.lacking({}, {"shaping"}) == ""
    assert capabilities.lacking(None, {"shaping"}) == ""
    assert capabilities.lacking({"shaping": {"ok": None, "detail": "not tested"}}, {"shaping"}) == ""
    assert capabilities.lacking(NO_SFQ, set()) == ""
    assert capabilities.lacking(NO_SFQ, {"shaping"}) == ("cannot apply bandwidth limits: tc sfq missing "
                                                         "(Specified qdisc kind is unknown)")


def shaped(vcpus=1, ram=1024, disk=10):
    return placement.Request(vcpus, ram, disk, needs=frozenset({"shaping"}))


def test_placement_filters_out_a_node_without_shaping_with_the_reason(db):
    fake_node("no-tc", capabilities=NO_SFQ, alloc_ram_mib=0)
    fake_node("busy", capabilities={"shaping": {"ok": True, "detail": ""}}, alloc_ram_mib=8192)
    fake_node("old")  # installed before capabilities were probed: unknown, allowed
    # the fast path and the explained path agree; "no-tc" has the most free RAM but cannot shape
    assert placement.decide(shaped()).node.name == "old"
    decision = placement.decide(shaped(), explain=True)
    assert decision.node.name == "old"
    assert decision.rejected == {"no-tc": "cannot apply bandwidth limits: tc sfq missing "
                                          "(Specified qdisc kind is unknown)"}
    # without a bandwidth limit the node is fine
    assert placement.decide(placement.Request(1, 1024, 10)).node.name == "no-tc"
    Node.objects.exclude(name="no-tc").delete()
    decision = placement.decide(shaped())
    assert decision.node is None
    assert decision.reasons() == ("node no-tc: cannot apply bandwidth limits: tc sfq missing "
                                  "(Specified qdisc kind is unknown)")
    with pytest.raises(placement.NoCapacity):
        placement.reserve(shaped())
    assert Node.objects.get(name="no-tc").alloc_ram_mib == 0


@pytest.fixture
def limited(world):
    """A 100 Mbit/s plan, a node that cannot shape, and a pool whose addresses must stay free."""
    Node.objects.filter(pk=world.node.pk).update(capabilities=NO_SFQ)
    network = Network.objects.create(cluster=world.node.cluster, name="public", kind="bridged", bridge="br-pub",
                                     interface="eth1")
    IpPool.objects.create(name="pub4", network=network, cidr="203.0.113.0/28", gateway="203.0.113.1",
                          quarantine_minutes=0)
    return Plan.objects.create(name="limited", vcpus=1, ram_mib=256, disk_gib=1, bandwidth_mbit=100)


def test_a_create_with_a_bandwidth_limit_on_a_node_without_shaping_is_a_409_and_makes_nothing(world, limited):
    body = {"customer": world.alice_customer.id, "plan": limited.id, "hostname": "shaped", "os_template": "tiny"}
    r = world.client(world.admin_key).post("/api/v1/servers/", body, format="json")
    assert r.status_code == 409, r.data
    assert r.data["code"] == "no_capacity"
    assert r.data["detail"] == ("No node can take this server: node fake1: cannot apply bandwidth limits: "
                                "tc sfq missing (Specified qdisc kind is unknown)")
    # a customer is not told about nodes
    r = world.client(world.alice_key).post("/api/v1/servers/", {k: v for k, v in body.items() if k != "customer"},
                                           format="json")
    assert r.status_code == 409 and "fake1" not in r.data["detail"]
    assert not VirtualServer.objects.exists() and not Operation.objects.exists()
    assert not IpAddress.objects.filter(server__isnull=False).exists()
    node = Node.objects.get(pk=world.node.pk)
    assert (node.alloc_vcpus, node.alloc_ram_mib, node.alloc_disk_gib) == (0, 0, 0)
    # the same node takes the plan without a limit
    r = world.client(world.admin_key).post("/api/v1/servers/", {**body, "plan": world.plan.id}, format="json")
    assert r.status_code == 202, r.data


def test_a_plan_change_to_a_bandwidth_limit_is_refused_on_a_node_without_shaping(world, alice_server, limited):
    ops = Operation.objects.count()
    r = world.client(world.admin_key).post(f"/api/v1/servers/{alice_server.id}/change-plan/",
                                           {"plan": limited.id}, format="json")
    assert r.status_code == 409, r.data
    assert r.data["detail"] == ("The server cannot change to this plan: node fake1: cannot apply bandwidth limits: "
                                "tc sfq missing (Specified qdisc kind is unknown)")
    # the billing system is not told about nodes
    r = world.client(world.billing_key).post(f"/api/v1/servers/{alice_server.id}/change-plan/",
                                             {"plan": limited.id}, format="json")
    assert r.status_code == 409 and "fake1" not in r.data["detail"]
    assert Operation.objects.count() == ops
    alice_server.refresh_from_db()
    assert alice_server.plan_id == world.plan.id


def test_a_migration_to_a_node_without_shaping_is_refused(world, alice_server):
    alice_server.plan.bandwidth_mbit = 50
    alice_server.plan.save()
    target = fake_node("no-tc", capabilities=NO_SFQ)
    r = world.client(world.admin_key).post(f"/api/v1/servers/{alice_server.id}/migrate/",
                                           {"node": target.id}, format="json")
    assert r.status_code == 409, r.data
    assert "node no-tc: cannot apply bandwidth limits" in r.data["detail"]


def test_the_api_shows_a_nodes_capabilities(world):
    Node.objects.filter(pk=world.node.pk).update(capabilities=decided(NO_SHAPING))
    r = world.client(world.admin_key).get(f"/api/v1/nodes/{world.node.id}/")
    assert r.status_code == 200
    assert r.data["capabilities"]["shaping"]["ok"] is False and r.data["capabilities"]["kvm"]["ok"] is False


# -- the node page and the placement preview -------------------------------------------------
def test_the_node_page_shows_the_capabilities_table(ui_world):
    admin = ui_world.client(ui_world.admin)
    node = fake_node("probed", capabilities=decided(NO_SHAPING))
    page = admin.get(f"/admin/nodes/{node.pk}/").content.decode()
    table = page[page.index('id="node-capabilities"'):]
    table = table[:table.index("</table>")]
    assert 'data-capability="shaping" data-ok="no"' in table and "tc sfq" in table
    assert 'data-capability="nwfilter" data-ok="yes"' in table
    assert 'data-capability="kvm" data-ok="no"' in table and "software emulation" in table
    # a node never probed says so
    page = admin.get(f"/admin/nodes/{fake_node('old').pk}/").content.decode()
    assert "Not probed yet" in page


def test_the_placement_preview_gives_the_missing_capability(ui_world):
    admin = ui_world.client(ui_world.admin)
    fake_node("no-tc", capabilities=NO_SFQ)
    plan = Plan.objects.create(name="limited", vcpus=1, ram_mib=256, disk_gib=1, bandwidth_mbit=100)
    page = admin.get(f"/admin/servers/new/?plan={plan.pk}").content.decode()
    row = page[page.index('data-node="no-tc"'):]
    assert "cannot apply bandwidth limits: tc sfq missing" in row[:row.index("</tr>")]

"""Domain XML from typed specs, and the choice of kvm or qemu (the drivers' contract is
tests/test_driver_contract.py)."""

import xml.etree.ElementTree as ET

import pytest

from nodes.domain_xml import (ANTI_SPOOFING_FILTER, METADATA_NS, NO_IPV4, Disk, DomainSpec, KernelBoot,
                              anti_spoofing_filter_xml, link_local, read_metadata, volume_xml, Nic)
from nodes.driver import choose_virt_type

UUID = "6f1c3c1e-0000-4000-8000-00000000000a"


def spec(**overrides) -> DomainSpec:
    values = dict(name="vps-abc", uuid=UUID, vcpus=2, ram_mib=512, virt_type="kvm",
                  disks=(Disk(path="/var/lib/panel/vps-abc-disk0.qcow2"),),
                  kernel_boot=KernelBoot(kernel="/boot/vmlinuz", initrd="/boot/initrd.img"),
                  serial_log="/var/log/libvirt/qemu/vps-abc-serial.log", panel_instance="panel-1", server_id=42)
    values.update(overrides)
    return DomainSpec(**values)


def shape(el: ET.Element) -> list[str]:
    """Every element's path from the root: the structure of a document, without its text."""
    out = []

    def walk(node, prefix):
        path = f"{prefix}/{node.tag}"
        out.append(path)
        for child in node:
            walk(child, path)

    walk(el, "")
    return out


def test_it_renders_xml_that_parses():
    root = ET.fromstring(spec().to_xml())
    assert root.tag == "domain" and root.get("type") == "kvm"
    assert root.findtext("name") == "vps-abc" and root.findtext("uuid") == UUID
    assert root.find("memory").get("unit") == "MiB" and root.findtext("memory") == "512"
    assert root.findtext("vcpu") == "2"
    assert root.findtext("os/kernel") == "/boot/vmlinuz" and root.findtext("os/cmdline") == "console=ttyS0"
    assert root.find("devices/disk/source").get("file") == "/var/lib/panel/vps-abc-disk0.qcow2"
    assert root.find("devices/disk/target").get("bus") == "virtio"
    assert root.find("cpu").get("mode") == "host-passthrough"
    graphics = root.find("devices/graphics")
    assert graphics.get("listen") == "127.0.0.1" and graphics.get("passwd") is None
    channel = root.find("devices/channel")
    assert channel.get("type") == "unix" and channel.find("target").get("type") == "virtio"
    assert channel.find("target").get("name") == "org.qemu.guest_agent.0"


def test_qemu_domains_have_no_host_passthrough_cpu_and_disk_boot_without_a_kernel():
    root = ET.fromstring(spec(virt_type="qemu", kernel_boot=None, serial_log=None).to_xml())
    assert root.get("type") == "qemu" and root.find("cpu") is None
    assert root.find("os/boot").get("dev") == "hd" and root.find("os/kernel") is None
    assert root.find("devices/serial").get("type") == "pty"


def nic(bridge="br-pub", ips=("203.0.113.5",), kbytes=12207):
    return Nic(bridge=bridge, mac="52:54:00:aa:bb:cc", ips=ips, average_kbytes=kbytes)


def test_nics_with_anti_spoofing_bandwidth_and_vnc_password_are_rendered():
    root = ET.fromstring(spec(nics=(nic(ips=("203.0.113.5", "203.0.113.6")),), vnc_password="s3cret").to_xml())
    interface = root.find("devices/interface")
    assert interface.get("type") == "bridge" and interface.find("source").get("bridge") == "br-pub"
    assert interface.find("mac").get("address") == "52:54:00:aa:bb:cc"
    assert interface.find("filterref").get("filter") == ANTI_SPOOFING_FILTER
    assert [p.get("value") for p in interface.findall("filterref/parameter[@name='IP']")] == ["203.0.113.5",
                                                                                              "203.0.113.6"]
    assert interface.find("bandwidth/inbound").get("average") == "12207"
    assert interface.find("bandwidth/outbound").get("average") == "12207"
    assert root.find("devices/graphics").get("passwd") == "s3cret"


def test_a_nic_without_addresses_or_limit_has_no_filter_or_bandwidth():
    root = ET.fromstring(spec(nics=(nic(ips=(), kbytes=0),)).to_xml())
    assert root.find("devices/interface/filterref") is None and root.find("devices/interface/bandwidth") is None


def params(interface: ET.Element, name: str) -> list[str]:
    return [p.get("value") for p in interface.findall(f"filterref/parameter[@name='{name}']")]


def test_ipv6_addresses_are_filtered_as_ipv6_with_the_nics_own_link_local_and_nothing_is_learned():
    interface = ET.fromstring(nic(ips=("203.0.113.5", "2001:db8::5")).to_xml())
    assert params(interface, "IP") == ["203.0.113.5"]  # libvirt's IPv4 rules never see an IPv6 value
    assert params(interface, "IPV6") == ["2001:db8::5", "fe80::5054:ff:feaa:bbcc"]
    assert params(interface, "CTRL_IP_LEARNING") == ["none"]


def test_an_ipv6_only_nic_sends_no_ipv4():
    interface = ET.fromstring(nic(ips=("2001:db8::5",)).to_xml())
    assert params(interface, "IP") == [NO_IPV4] and params(interface, "IPV6")[0] == "2001:db8::5"


@pytest.mark.parametrize("mac, address", [("52:54:00:aa:bb:cc", "fe80::5054:ff:feaa:bbcc"),
                                          ("00:00:00:00:00:01", "fe80::200:ff:fe00:1"),
                                          ("02:00:00:00:00:00", "fe80::ff:fe00:0")])
def test_link_local_is_the_modified_eui64_of_the_mac(mac, address):
    assert link_local(mac) == address


def test_link_local_refuses_what_is_not_a_mac():
    with pytest.raises(ValueError):
        link_local("52:54:00:aa:bb")


def test_only_nat_nics_get_an_isolated_port():
    assert ET.fromstring(nic().to_xml()).find("port") is None
    isolated = Nic(bridge="br-nat", mac="52:54:00:aa:bb:cc", ips=("10.0.8.10",), isolated=True)
    assert ET.fromstring(isolated.to_xml()).find("port").get("isolated") == "yes"


def test_the_anti_spoofing_filter_covers_mac_ipv4_arp_and_ipv6_and_drops_the_rest():
    root = ET.fromstring(anti_spoofing_filter_xml())
    assert root.get("name") == ANTI_SPOOFING_FILTER and root.get("chain") == "root"
    refs = [r.get("filter") for r in root.findall("filterref")]
    assert refs == ["no-mac-spoofing", "no-ip-spoofing", "allow-incoming-ipv4", "no-ipv6-spoofing",
                    "allow-incoming-ipv6", "no-arp-spoofing", "no-other-l2-traffic", "qemu-announce-self"]
    accepted = {(r.find("mac").get("protocolid"), r.get("direction"), int(r.get("priority")))
                for r in root.findall("rule")}
    assert accepted == {("ipv4", "out", -650), ("ipv6", "out", -560), ("arp", "inout", -500)}
    # each family's accept comes after its spoofing chain (ipv4-ip -710, ipv6-ip -610, arp -520/-510)
    # and before the catch-all drop (priority 1000 in no-other-l2-traffic)
    assert anti_spoofing_filter_xml() == anti_spoofing_filter_xml()  # the same definition every time


HOSTILE = [
    "x</name><devices><disk type='file'/></devices><name>",
    "'; rm -rf / #",
    '"><script>alert(1)</script>',
    "a & b < c > d",
    "]]><!-- -->",
    "$(reboot) `id` | tee",
    "<!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]>&e;",
]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_a_hostile_name_stays_text(hostile):
    expected = shape(ET.fromstring(spec().to_xml()))
    root = ET.fromstring(spec(name=hostile).to_xml())
    assert root.findtext("name") == hostile
    assert shape(root) == expected  # no extra (or missing) element


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_cmdline_paths_and_passwords_stay_text(hostile):
    # a value with a colon is taken for IPv6: the NIC then has the IPv4 placeholder as well
    expected = shape(ET.fromstring(spec(vnc_password="p", nics=(nic(ips=("n:" if ":" in hostile else "n",)),)).to_xml()))
    hostile_spec = spec(
        kernel_boot=KernelBoot(kernel=hostile, initrd=hostile, cmdline=hostile),
        disks=(Disk(path=hostile),), serial_log=hostile, vnc_password=hostile,
        nics=(nic(bridge=hostile, ips=(hostile,)),),
        panel_instance=hostile,
    )
    root = ET.fromstring(hostile_spec.to_xml())
    assert shape(root) == expected
    assert root.findtext("os/cmdline") == hostile and root.findtext("os/kernel") == hostile
    assert root.find("devices/disk/source").get("file") == hostile
    assert root.find("devices/graphics").get("passwd") == hostile
    assert root.find("devices/interface/source").get("bridge") == hostile
    assert hostile in [p.get("value") for p in root.findall("devices/interface/filterref/parameter")]
    assert read_metadata(hostile_spec.to_xml())["instance"] == hostile


def test_read_metadata_returns_the_instance_and_the_id():
    xml = spec().to_xml()
    assert read_metadata(xml) == {"instance": "panel-1", "id": "42"}
    assert ET.fromstring(xml).find(f"metadata/{{{METADATA_NS}}}server") is not None


def test_read_metadata_of_a_domain_without_a_server_id():
    assert read_metadata(spec(server_id=None, panel_instance="").to_xml()) == {"instance": "", "id": ""}


def test_read_metadata_of_a_foreign_domain_is_empty():
    foreign = "<domain type='kvm'><name>other</name><metadata><x:y xmlns:x='urn:other' id='1'/></metadata></domain>"
    assert read_metadata(foreign) == {}
    assert read_metadata("<domain type='kvm'><name>bare</name></domain>") == {}


def test_volume_xml_escapes_its_name():
    root = ET.fromstring(volume_xml("a</name><x/>", 10))
    assert root.findtext("name") == "a</name><x/>" and root.find("x") is None
    assert root.findtext("capacity") == "10" and root.find("capacity").get("unit") == "GiB"


@pytest.mark.parametrize("overrides", [
    {"virt_type": "xen"},
    {"virt_type": "KVM"},
    {"virt_type": ""},
    {"ram_mib": 15},
    {"ram_mib": 0},
    {"ram_mib": -512},
    {"vcpus": 0},
])
def test_domain_spec_refuses_bad_values(overrides):
    with pytest.raises(ValueError):
        spec(**overrides)


def test_sixteen_mib_is_enough():
    assert spec(ram_mib=16, vcpus=1).ram_mib == 16


# -- choose_virt_type -----------------------------------------------------------------------

def capabilities(domain_types=("qemu", "kvm"), cpu_features=()) -> ET.Element:
    features = "".join(f"<feature name='{f}'/>" for f in cpu_features)
    domains = "".join(f"<domain type='{t}'/>" for t in domain_types)
    return ET.fromstring(
        "<capabilities><host><cpu><arch>x86_64</arch><model>Skylake</model>"
        f"{features}</cpu></host>"
        f"<guest><os_type>hvm</os_type><arch name='x86_64'><wordsize>64</wordsize>{domains}</arch></guest>"
        "</capabilities>"
    )


@pytest.mark.parametrize("domain_types, cpu_features, expected", [
    (("qemu", "kvm"), ("vmx",), "kvm"),
    (("qemu", "kvm"), ("svm", "lm"), "kvm"),
    (("qemu", "kvm"), ("lm", "sse4.2"), "qemu"),  # /dev/kvm there, but no hardware virtualization
    (("qemu", "kvm"), (), "qemu"),
    (("qemu",), ("vmx",), "qemu"),  # no kvm domain type offered
    ((), ("vmx",), "qemu"),
])
def test_choose_virt_type(domain_types, cpu_features, expected):
    assert choose_virt_type(capabilities(domain_types, cpu_features)) == expected


def test_choose_virt_type_ignores_kvm_offered_for_another_arch():
    caps = ET.fromstring(
        "<capabilities><host><cpu><feature name='vmx'/></cpu></host>"
        "<guest><arch name='i686'><domain type='kvm'/></arch></guest>"
        "<guest><arch name='x86_64'><domain type='qemu'/></arch></guest></capabilities>"
    )
    assert choose_virt_type(caps) == "qemu"


@pytest.mark.parametrize("field", ["name", "cmdline", "path"])
def test_a_control_character_is_refused_rather_than_rendered_into_broken_xml(field):
    """XML 1.0 cannot carry U+0001: the spec must refuse it (ValueError), never emit unparsable XML."""
    bad = "a\x01b"
    overrides = {
        "name": {"name": bad},
        "cmdline": {"kernel_boot": KernelBoot(kernel="/boot/vmlinuz", initrd="/boot/initrd.img", cmdline=bad)},
        "path": {"disks": (Disk(path=bad),)},
    }[field]
    try:
        xml = spec(**overrides).to_xml()
    except ValueError:
        return
    ET.fromstring(xml)  # raises ParseError today: the spec renders XML libvirt cannot read

"""OVF 1.x descriptors and OVA packages: writing them for an export, reading and checking them
for an import. Pure work on files in the panel's data dir; no database, no node.

An OVA is a tar whose first member is the descriptor (.ovf), then the disks, then the manifest
(.mf, "SHA256(name)= hex" lines) as VirtualBox and VMware write them. Reading one trusts none of
it: members are plain files with plain names; the manifest's checksums are checked; every disk's
format is what `qemu-img info` says (never the descriptor's claim, which must agree) and an
image naming other files (a backing file, a VMDK extent, a qcow2 data file) is refused, as it
would let an upload read the panel's own files. The descriptor is parsed with defusedxml (no
entities, no DTDs).
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree as ET

import defusedxml.ElementTree as SafeET
from django.conf import settings
from django.utils.translation import gettext as _

OVF = "http://schemas.dmtf.org/ovf/envelope/1"
RASD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
VSSD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
VMDK_STREAM = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"
QCOW2 = "http://www.gnome.org/~markmc/qcow-image-format.html"  # the URL qemu and oVirt write for qcow2

# The disk formats an import reads (qemu-img's names); VirtualBox's VDI and Hyper-V's too.
IMPORTABLE = {"vmdk", "qcow2", "vdi", "vhdx", "vpc", "raw"}
MAX_DISKS = 1  # a server has one system disk here; more are refused, not dropped
CHUNK = 1024 * 1024

# CIM ResourceType values (DSP1041) the panel maps, ignores or refuses.
CPU, MEMORY, IDE, SCSI, ETHERNET, DISK, OTHER_STORAGE = 3, 4, 5, 6, 10, 17, 20
CONTROLLERS = {IDE: "IDE", SCSI: "SCSI", OTHER_STORAGE: "SATA/other"}
IGNORED = {1: "other device", 14: "floppy drive", 15: "CD drive", 16: "DVD drive", 21: "serial port",
           22: "parallel port", 23: "USB controller", 24: "graphics controller", 35: "sound card"}


class OvfError(Exception):
    """An OVF/OVA the panel will not import or write: `problems` lists every reason."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


def ovf_dir(*parts: str) -> Path:
    """Where exports and uploaded imports live: the panel's data dir (admins only reach it)."""
    path = Path(getattr(settings, "OVF_DIR", settings.DATA_DIR / "ovf")).joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


# -- writing -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DiskFile:
    href: str  # the member's name in the OVA
    capacity_bytes: int  # the virtual size the guest sees
    fmt: str  # "vmdk" (streamOptimized) or "qcow2"


def _q(ns: str, tag: str) -> str:
    return f"{{{ns}}}{tag}"


def _item(parent: ET.Element, **rasd) -> None:
    item = ET.SubElement(parent, _q(OVF, "Item"))
    # The CIM schema orders an Item's elements alphabetically; VirtualBox writes them so too.
    for name in sorted(rasd):
        ET.SubElement(item, _q(RASD, name)).text = str(rasd[name])


def build_descriptor(name: str, vcpus: int, ram_mib: int, disks: list[DiskFile], nics: int) -> bytes:
    """An OVF 1.0 envelope with the hardware as VirtualBox writes it: CPUs, memory, one SATA
    (AHCI) controller with the disks, and virtio NICs on one logical network."""
    for prefix, ns in (("ovf", OVF), ("rasd", RASD), ("vssd", VSSD), ("xsi", XSI)):
        ET.register_namespace(prefix, ns)
    env = ET.Element(_q(OVF, "Envelope"), {_q(OVF, "version"): "1.0", "{http://www.w3.org/XML/1998/namespace}lang":
                                           "en-US"})
    refs = ET.SubElement(env, _q(OVF, "References"))
    for i, disk in enumerate(disks, 1):
        ET.SubElement(refs, _q(OVF, "File"), {_q(OVF, "href"): disk.href, _q(OVF, "id"): f"file{i}"})
    section = ET.SubElement(env, _q(OVF, "DiskSection"))
    ET.SubElement(section, _q(OVF, "Info")).text = "List of the virtual disks used in the package"
    for i, disk in enumerate(disks, 1):
        ET.SubElement(section, _q(OVF, "Disk"), {
            _q(OVF, "capacity"): str(disk.capacity_bytes), _q(OVF, "diskId"): f"vmdisk{i}",
            _q(OVF, "fileRef"): f"file{i}", _q(OVF, "format"): VMDK_STREAM if disk.fmt == "vmdk" else QCOW2})
    if nics:  # no NetworkSection without a network (COT, for one, cannot read an empty one)
        networks = ET.SubElement(env, _q(OVF, "NetworkSection"))
        ET.SubElement(networks, _q(OVF, "Info")).text = "Logical networks used in the package"
        net = ET.SubElement(networks, _q(OVF, "Network"), {_q(OVF, "name"): "public"})
        ET.SubElement(net, _q(OVF, "Description")).text = "The server's network"
    system = ET.SubElement(env, _q(OVF, "VirtualSystem"), {_q(OVF, "id"): name})
    ET.SubElement(system, _q(OVF, "Info")).text = "A virtual machine"
    os_section = ET.SubElement(system, _q(OVF, "OperatingSystemSection"), {_q(OVF, "id"): "101"})
    ET.SubElement(os_section, _q(OVF, "Info")).text = "The kind of installed guest operating system"
    ET.SubElement(os_section, _q(OVF, "Description")).text = "Linux26_64"
    hw = ET.SubElement(system, _q(OVF, "VirtualHardwareSection"))
    ET.SubElement(hw, _q(OVF, "Info")).text = "Virtual hardware requirements for a virtual machine"
    vs = ET.SubElement(hw, _q(OVF, "System"))
    for tag, text in (("ElementName", "Virtual Hardware Family"), ("InstanceID", "0"),
                      ("VirtualSystemIdentifier", name), ("VirtualSystemType", "vmx-07 virtualbox-2.2")):
        ET.SubElement(vs, _q(VSSD, tag)).text = text
    _item(hw, Caption=f"{vcpus} virtual CPU", Description="Number of virtual CPUs",
          ElementName=f"{vcpus} virtual CPU", InstanceID=1, ResourceType=CPU, VirtualQuantity=vcpus)
    _item(hw, AllocationUnits="MegaBytes", Caption=f"{ram_mib} MB of memory", Description="Memory Size",
          ElementName=f"{ram_mib} MB of memory", InstanceID=2, ResourceType=MEMORY, VirtualQuantity=ram_mib)
    _item(hw, Address=0, Caption="sataController0", Description="SATA Controller", ElementName="sataController0",
          InstanceID=3, ResourceSubType="AHCI", ResourceType=OTHER_STORAGE)
    instance = 4
    for i in range(nics):
        _item(hw, AutomaticAllocation="true", Caption="Ethernet adapter on 'public'", Connection="public",
              ElementName=f"Ethernet adapter {i + 1}", InstanceID=instance, ResourceSubType="virtio",
              ResourceType=ETHERNET)
        instance += 1
    for i, _disk in enumerate(disks, 1):
        _item(hw, AddressOnParent=i - 1, Caption=f"disk{i}", Description="Disk Image", ElementName=f"disk{i}",
              HostResource=f"/disk/vmdisk{i}", InstanceID=instance, Parent=3, ResourceType=DISK)
        instance += 1
    ET.indent(env)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(env, encoding="utf-8")


def sha256_file(path: Path, tick=None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            if tick:
                tick()
    return digest.hexdigest()


def write_ova(dest: Path, name: str, descriptor: bytes, disks: list[Path], tick=None) -> None:
    """The OVA at `dest`: descriptor first, the disks, the manifest last (written to a .part
    and renamed, so a failed export never looks finished)."""
    staging = dest.with_suffix(".staging")
    staging.mkdir(exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        ovf_path = staging / f"{name}.ovf"
        ovf_path.write_bytes(descriptor)
        lines = [f"SHA256({p.name})= {sha256_file(p, tick)}\n" for p in (ovf_path, *disks)]
        mf_path = staging / f"{name}.mf"
        mf_path.write_text("".join(lines))
        with tarfile.open(part, "w", format=tarfile.USTAR_FORMAT) as tar:
            for p in (ovf_path, *disks, mf_path):
                info = tar.gettarinfo(str(p), arcname=p.name)
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                info.mode = 0o644
                with open(p, "rb") as f:
                    tar.addfile(info, f)
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)


# -- reading -------------------------------------------------------------------------------------
@dataclass
class DiskRef:
    disk_id: str
    href: str
    capacity_bytes: int
    claimed: str  # the format the descriptor claims (qemu-img's name), "" when unknown
    fmt: str = ""  # what qemu-img says it is, once checked


@dataclass
class Appliance:
    """What an OVF describes, as the panel maps it; `mapping` says what became what."""

    name: str
    vcpus: int
    ram_mib: int
    disks: list[DiskRef]
    nics: int
    mapping: list[str] = field(default_factory=list)

    @property
    def disk_gib(self) -> int:
        return max(1, -(-sum(d.capacity_bytes for d in self.disks) // 2 ** 30))


def _units(text: str | None) -> int:
    """The multiplier of an OVF allocation-units string ("byte * 2^20", "MegaBytes", ...)."""
    text = (text or "byte").strip()
    named = {"byte": 1, "bytes": 1, "kilobytes": 2 ** 10, "kb": 2 ** 10, "megabytes": 2 ** 20, "mb": 2 ** 20,
             "gigabytes": 2 ** 30, "gb": 2 ** 30}
    if text.lower() in named:
        return named[text.lower()]
    match = re.fullmatch(r"byte\s*\*\s*(\d+)\s*\^\s*(\d+)", text)
    if not match or int(match[2]) > 60:
        raise ValueError(text)
    return int(match[1]) ** int(match[2])


def claimed_format(url: str) -> str:
    url = url.lower()
    for needle, fmt in (("vmdk", "vmdk"), ("qcow", "qcow2"), ("vdi", "vdi"), ("vhdx", "vhdx"), ("vhd", "vpc"),
                        ("raw", "raw")):
        if needle in url:
            return fmt
    return ""


def _rasd(item: ET.Element, tag: str) -> str | None:
    el = item.find(_q(RASD, tag))
    return el.text.strip() if el is not None and el.text else None


def parse_descriptor(data: bytes) -> Appliance:
    """Read an OVF 1.x descriptor into what the panel can build, or raise OvfError listing
    everything that cannot be mapped (so an admin fixes it all at once)."""
    try:
        root = SafeET.fromstring(data)
    except Exception as exc:  # defusedxml's refusals and plain syntax errors alike
        raise OvfError([_("the descriptor is not valid XML: %(e)s") % {"e": exc}]) from None
    if root.tag != _q(OVF, "Envelope"):
        raise OvfError([_("not an OVF 1.x descriptor (root element %(tag)s)") % {"tag": root.tag}])
    problems, mapping = [], []
    files = {f.get(_q(OVF, "id")): f.get(_q(OVF, "href")) for f in root.iterfind(f"{{{OVF}}}References/{{{OVF}}}File")}
    disks = {}
    for d in root.iterfind(f"{{{OVF}}}DiskSection/{{{OVF}}}Disk"):
        disk_id, ref = d.get(_q(OVF, "diskId")), d.get(_q(OVF, "fileRef"))
        if ref is None:
            problems.append(_("disk %(id)s has no file (an empty disk to create is not supported)") % {"id": disk_id})
            continue
        if files.get(ref) is None:
            problems.append(_("disk %(id)s names file %(ref)s, which References does not list") %
                            {"id": disk_id, "ref": ref})
            continue
        try:
            capacity = int(d.get(_q(OVF, "capacity"), "0")) * _units(d.get(_q(OVF, "capacityAllocationUnits")))
        except ValueError:
            problems.append(_("disk %(id)s has a capacity the panel cannot read") % {"id": disk_id})
            continue
        disks[disk_id] = DiskRef(disk_id, files[ref], capacity, claimed_format(d.get(_q(OVF, "format"), "")))
    systems = root.findall(_q(OVF, "VirtualSystem"))
    if root.find(_q(OVF, "VirtualSystemCollection")) is not None or len(systems) != 1:
        raise OvfError(problems + [_("the descriptor must hold exactly one virtual system (found %(n)d)") %
                                   {"n": len(systems)}])
    system = systems[0]
    name = system.get(_q(OVF, "id")) or "imported"
    hw = system.find(_q(OVF, "VirtualHardwareSection"))
    if hw is None:
        raise OvfError(problems + [_("the virtual system has no VirtualHardwareSection")])
    vcpus = ram_mib = 0
    nics, used = 0, []
    for item in hw.iterfind(_q(OVF, "Item")):
        kind = int(_rasd(item, "ResourceType") or 0)
        label = _rasd(item, "ElementName") or _rasd(item, "Caption") or f"item {_rasd(item, 'InstanceID')}"
        if kind == CPU:
            vcpus = int(_rasd(item, "VirtualQuantity") or 0)
        elif kind == MEMORY:
            try:
                ram_mib = int(_rasd(item, "VirtualQuantity") or 0) * _units(_rasd(item, "AllocationUnits")) // 2 ** 20
            except ValueError:
                problems.append(_("memory in units the panel cannot read: %(u)s") % {"u": _rasd(item, "AllocationUnits")})
        elif kind in CONTROLLERS:
            sub = _rasd(item, "ResourceSubType") or CONTROLLERS[kind]
            mapping.append(_("controller %(name)s (%(sub)s) → virtio") % {"name": label, "sub": sub})
        elif kind == ETHERNET:
            nics += 1
            mapping.append(_("network adapter %(name)s (%(sub)s) → virtio on the server's network") %
                           {"name": label, "sub": _rasd(item, "ResourceSubType") or "?"})
        elif kind == DISK:
            host = (_rasd(item, "HostResource") or "").removeprefix("ovf:")
            disk_id = host.removeprefix("/disk/")
            if not host.startswith("/disk/") or disk_id not in disks:
                problems.append(_("disk drive %(name)s names %(host)s, which DiskSection does not describe") %
                                {"name": label, "host": host or "nothing"})
            else:
                used.append(disks[disk_id])
        elif kind in IGNORED:
            mapping.append(_("%(what)s %(name)s → left out") % {"what": IGNORED[kind], "name": label})
        else:
            problems.append(_("device %(name)s of resource type %(type)d cannot be mapped") %
                            {"name": label, "type": kind})
    if vcpus < 1:
        problems.append(_("no CPU count (a ResourceType 3 item)"))
    if ram_mib < 1:
        problems.append(_("no memory size (a ResourceType 4 item)"))
    if not used:
        problems.append(_("no disk drive with a disk file"))
    if len(used) > MAX_DISKS:
        problems.append(_("%(n)d disks; a server takes %(max)d: %(list)s") %
                        {"n": len(used), "max": MAX_DISKS, "list": ", ".join(d.href for d in used)})
    for d in used:
        if not d.claimed:
            problems.append(_("disk %(href)s: the descriptor's format is not one the panel knows") % {"href": d.href})
    if problems:
        raise OvfError(problems)
    return Appliance(name, vcpus, ram_mib, used, nics, mapping)


def _plain_name(name: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9._+-]{1,200}", name)) and name not in (".", "..")


def unpack(ova: Path, into: Path, tick=None) -> Path:
    """Extract an OVA's members into `into` (plain files with plain names only), returning the
    descriptor's path. A truncated or damaged archive, links, devices or paths are refused."""
    into.mkdir(parents=True, exist_ok=True)
    descriptor = None
    try:
        with tarfile.open(ova, "r:") as tar:
            for member in tar:
                if not member.isfile() or not _plain_name(member.name):
                    raise OvfError([_("the OVA holds %(name)r, which is not a plain file with a plain name") %
                                    {"name": member.name}])
                target = into / member.name
                if target.exists():
                    raise OvfError([_("the OVA holds %(name)s twice") % {"name": member.name}])
                source = tar.extractfile(member)
                with open(target, "wb") as out:
                    copied = 0
                    while chunk := source.read(CHUNK):
                        out.write(chunk)
                        copied += len(chunk)
                        if tick:
                            tick()
                if copied != member.size:
                    raise OvfError([_("the OVA is truncated (%(name)s is cut short)") % {"name": member.name}])
                if member.name.lower().endswith(".ovf") and descriptor is None:
                    descriptor = target
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise OvfError([_("the OVA is truncated or not a tar archive (%(e)s)") % {"e": exc}]) from None
    if descriptor is None:
        raise OvfError([_("the OVA holds no .ovf descriptor")])
    return descriptor


def check_manifest(folder: Path, descriptor: Path, disks: list[DiskRef], tick=None) -> str:
    """Check the package's manifest (<name>.mf beside the descriptor, if any): every file it
    lists must be there with its SHA256/SHA1. Returns what was checked, for the log."""
    mf = descriptor.with_suffix(".mf")
    if not mf.exists():
        return _("no manifest: checksums not checked")
    problems, checked = [], 0
    listed = set()
    for line in mf.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        match = re.fullmatch(r"\s*(SHA256|SHA1|SHA512)\s*\((.+)\)\s*=\s*([0-9a-fA-F]+)\s*", line)
        if not match:
            problems.append(_("manifest line not understood: %(line)r") % {"line": line[:120]})
            continue
        algorithm, name, expected = match[1].lower(), match[2], match[3].lower()
        listed.add(name)
        path = folder / name
        if not _plain_name(name) or not path.is_file():
            problems.append(_("the manifest lists %(name)s, which the package does not hold") % {"name": name})
            continue
        digest = hashlib.new(algorithm)
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
                if tick:
                    tick()
        if digest.hexdigest() != expected:
            problems.append(_("checksum mismatch for %(name)s (the manifest says %(alg)s %(want)s…)") %
                            {"name": name, "alg": algorithm.upper(), "want": expected[:12]})
        checked += 1
    for name in [descriptor.name, *(d.href for d in disks)]:
        if name not in listed:
            problems.append(_("the manifest does not list %(name)s") % {"name": name})
    if problems:
        raise OvfError(problems)
    return _("manifest: %(n)d checksums match") % {"n": checked}


def qemu_info(path: Path) -> dict:
    """`qemu-img info` of an untrusted image (probed: what it is, not what it is called)."""
    try:
        done = subprocess.run(["qemu-img", "info", "--output=json", str(path)], capture_output=True, text=True,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OvfError([_("qemu-img info failed on %(name)s: %(e)s") % {"name": path.name, "e": exc}]) from None
    if done.returncode != 0:
        raise OvfError([_("%(name)s is not a disk image qemu-img reads: %(e)s") %
                        {"name": path.name, "e": done.stderr.strip()[-200:]}])
    return json.loads(done.stdout)


def check_disk(folder: Path, disk: DiskRef) -> None:
    """The disk file exists, is the format its descriptor claims (qemu-img says), and names
    no other file; sets `disk.fmt`."""
    path = folder / disk.href
    if not _plain_name(disk.href) or not path.is_file():
        raise OvfError([_("the descriptor names disk file %(name)s, which the package does not hold") %
                        {"name": disk.href}])
    info = qemu_info(path)
    fmt = info.get("format", "")
    data = (info.get("format-specific") or {}).get("data") or {}
    problems = []
    if fmt not in IMPORTABLE:
        problems.append(_("%(name)s is %(fmt)s, which the panel does not import") % {"name": disk.href, "fmt": fmt})
    elif fmt != disk.claimed:
        problems.append(_("%(name)s claims to be %(claim)s but is %(fmt)s") %
                        {"name": disk.href, "claim": disk.claimed, "fmt": fmt})
    if info.get("backing-filename") or info.get("full-backing-filename") or data.get("data-file"):
        problems.append(_("%(name)s refers to another file (a backing or data file)") % {"name": disk.href})
    for extent in data.get("extents", []):
        if Path(extent.get("filename", "")).resolve() != path.resolve():
            problems.append(_("%(name)s refers to another file (a VMDK extent)") % {"name": disk.href})
    if problems:
        raise OvfError(problems)
    disk.fmt = fmt


def inspect_package(folder: Path, descriptor: Path, tick=None) -> tuple[Appliance, str]:
    """Everything an import checks before it touches a node: the descriptor's mapping, the
    manifest, each disk. Returns the appliance and the manifest's log line."""
    appliance = parse_descriptor(descriptor.read_bytes())
    checked = check_manifest(folder, descriptor, appliance.disks, tick)
    for disk in appliance.disks:
        check_disk(folder, disk)
    return appliance, checked


def to_qcow2(source: Path, fmt: str, dest: Path, gib: int) -> None:
    """Convert a checked disk (its format given, never probed again) into a standalone qcow2
    of `gib` GiB (a plan's disk may be larger than the appliance's; never smaller)."""
    for argv in (["qemu-img", "convert", "-q", "-f", fmt, "-O", "qcow2", str(source), str(dest)],
                 ["qemu-img", "resize", "-q", "-f", "qcow2", str(dest), f"{gib}G"]):
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            dest.unlink(missing_ok=True)
            raise OvfError([_("%(name)s could not be converted: %(e)s") % {"name": source.name,
                                                                           "e": done.stderr.strip()[-200:]}])

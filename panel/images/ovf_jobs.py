"""OVA export and import: the requests (checked before any side effect) and the jobs.

Export (a stopped server, admins): the node writes the disk as one standalone image (a
streamOptimized VMDK or a compressed qcow2: a thin overlay's template is folded in), the panel
reads it over libvirt's stream into its data dir, writes the descriptor and the manifest and
packs the OVA; an admin downloads it by the operation (`/api/v1/operations/{id}/ova/`).

Import (admins): the upload is streamed to the panel's data dir and checked whole before
anything is recorded (panel/images/ovf.py: tar members, descriptor mapping, manifest, each
disk's real format); a refusal lists every problem and deletes the upload. Then the server is
placed like any new one (plan chosen, or the smallest that fits; addresses from the pool; the
OS template gives the boot method) and the job converts the disk to qcow2, streams it to the
node, defines and boots the domain. A failed import leaves nothing: no volume, no domain, no
record, no files.
"""

import shutil
import uuid
from pathlib import Path

from django.db import transaction
from django.utils.translation import gettext as _

from nodes.driver import DomainState, Driver, DriverError
from panel.accounts import audit
from panel.accounts.models import Customer
from panel.accounts.tenancy import Actor
from panel.events import emit
from panel.images import ovf
from panel.images.snapshots import Snapshot
from panel.operations import hand_over, new_operation
from panel.refusals import Refused
from panel.runner import Step, for_customer
from panel.vps.domain import domain_spec
from panel.vps.lifecycle import place_new_server
from panel.vps.models import Operation, Plan, ServerState, VirtualServer
from panel.vps.server_jobs import delete_record

FORMATS = ("vmdk", "qcow2")
MAX_UPLOAD_BYTES = 512 * 2 ** 30


def _provider_only(actor: Actor) -> None:
    if not actor.is_admin:
        raise Refused(_("Only admins export and import OVAs."), "permission_denied", 403)


# -- export --------------------------------------------------------------------------------------
def request_export(actor: Actor, server_id: int, fmt: str = "vmdk") -> Operation:
    """Export a stopped server as an OVA (admins)."""
    if fmt not in FORMATS:
        raise Refused(_("The disk format is vmdk or qcow2."), "invalid", 400, field="format")
    with transaction.atomic():
        server = actor.get_or_404(VirtualServer.objects.select_for_update(), pk=server_id)
        _provider_only(actor)
        if server.state != ServerState.STOPPED:
            raise Refused(_("Only a stopped server can be exported; it is %(state)s.") %
                          {"state": server.get_state_display().lower()}, "invalid_state")
        op = new_operation(actor, Operation.Kind.OVA_EXPORT, server=server, params={"format": fmt})
        audit.record(actor, "server.ova_export", server, operation=op.id, format=fmt)
        hand_over(op)
    return op


def export_path(op: Operation) -> Path | None:
    """The finished export of `op`, if it is there."""
    name = op.params.get("file")
    if op.kind != Operation.Kind.OVA_EXPORT or op.status != Operation.Status.SUCCEEDED or not name:
        return None
    path = ovf.ovf_dir("exports") / name
    return path if path.is_file() else None


def export(step: Step, server: VirtualServer, driver: Driver) -> None:
    fmt = step.op.params.get("format", "vmdk")
    if driver.state(server.domain_name) not in (DomainState.SHUTOFF, None):
        raise for_customer(DriverError("the server must be stopped to be exported"))
    pool, staged = server.storage.pool_name, f"{server.domain_name}-export.{fmt}"
    work = ovf.ovf_dir("exports", f"op-{step.op.id}")
    name = f"{server.hostname}-{step.op.id}"
    disk = work / f"{name}-disk1.{fmt}"
    try:
        step(10, f"writing the disk as a standalone {fmt} on node {server.node.name}", customer=True)
        # The top of the disk's chain (a snapshot's overlay, if any): qemu-img reads through it.
        driver.export_disk(pool, Snapshot.top_volume(server), staged, fmt)
        step(40, "reading the converted disk into the panel", customer=True)
        with open(disk, "wb") as out:
            for chunk in driver.read_volume(pool, staged):
                out.write(chunk)
                step.heartbeat()
        driver.delete_volume(pool, staged)
        capacity = ovf.qemu_info(disk)["virtual-size"]
        step(70, "writing the descriptor and the manifest (SHA256) and packing the OVA", customer=True)
        descriptor = ovf.build_descriptor(server.hostname, server.vcpus, server.ram_mib,
                                          [ovf.DiskFile(disk.name, capacity, fmt)], server.nics.count())
        dest = ovf.ovf_dir("exports") / f"{name}.ova"
        ovf.write_ova(dest, name, descriptor, [disk], tick=step.heartbeat)
    except BaseException:
        driver.delete_volume(pool, staged)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    step.op.params["file"] = dest.name
    step.op.params["size"] = dest.stat().st_size
    step(95, f"OVA ready: {dest.name}, {dest.stat().st_size} bytes", customer=True)


# -- import --------------------------------------------------------------------------------------
def receive_upload(chunks, limit: int = MAX_UPLOAD_BYTES) -> Path:
    """Stream an upload to a new file in the imports folder (never held in memory)."""
    path = ovf.ovf_dir("imports") / f"{uuid.uuid4().hex}.ova"
    size = 0
    try:
        with open(path, "wb") as out:
            for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise Refused(_("The upload is larger than %(n)d bytes.") % {"n": limit}, "too_large", 413)
                out.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if size == 0:
        path.unlink(missing_ok=True)
        raise Refused(_("The upload is empty."), "invalid", 400, field="file")
    return path


def derive_plan(appliance: ovf.Appliance) -> Plan:
    """The smallest plan that gives the appliance its CPUs and memory."""
    plan = Plan.objects.filter(vcpus__gte=appliance.vcpus, ram_mib__gte=appliance.ram_mib).order_by(
        "vcpus", "ram_mib", "disk_gib", "id").first()
    if plan is None:
        raise Refused(_("No plan gives %(cpus)d vCPUs and %(ram)d MiB; choose one.") %
                      {"cpus": appliance.vcpus, "ram": appliance.ram_mib}, "invalid", 400, field="plan")
    return plan


def request_import(actor: Actor, upload: Path, *, customer: Customer, hostname: str, os_template,
                   plan: Plan | None = None, node=None) -> tuple[VirtualServer, Operation, ovf.Appliance]:
    """Check an uploaded OVA and import it as a new server (admins). The upload is consumed:
    moved into the import's folder, or deleted with a refusal that lists every problem."""
    folder = upload.with_suffix(".d")
    try:
        _provider_only(actor)
        if os_template is None:
            raise Refused(_("Choose the OS template whose boot method the imported disk uses."), "invalid", 400,
                          field="os_template")
        try:
            descriptor = ovf.unpack(upload, folder)
            appliance, checked = ovf.inspect_package(folder, descriptor)
        except ovf.OvfError as exc:
            raise Refused(_("The OVA cannot be imported: %(list)s") % {"list": "; ".join(exc.problems)},
                          "ova_invalid", 400) from None
        upload.unlink(missing_ok=True)
        plan = plan or derive_plan(appliance)
        mapping = [_("%(cpus)d vCPUs, %(ram)d MiB → plan %(plan)s (%(pcpus)d vCPUs, %(pram)d MiB)") %
                   {"cpus": appliance.vcpus, "ram": appliance.ram_mib, "plan": plan.name, "pcpus": plan.vcpus,
                    "pram": plan.ram_mib},
                   *(_("disk %(href)s (%(fmt)s, %(size)d bytes) → virtio vda, qcow2") %
                     {"href": d.href, "fmt": d.fmt, "size": d.capacity_bytes} for d in appliance.disks),
                   *appliance.mapping, checked]
        with transaction.atomic():
            server = place_new_server(actor, customer=customer, plan=plan, hostname=hostname, os_template=os_template,
                                      node=node, disk_gib=appliance.disk_gib)
            disk = appliance.disks[0]
            op = new_operation(actor, Operation.Kind.OVA_IMPORT, server=server, params={
                "folder": folder.name, "disk": disk.href, "format": disk.fmt, "mapping": mapping})
            audit.record(actor, "server.ova_import", server, operation=op.id, plan=plan.name, name=appliance.name)
            emit("server.created", customer_id=customer.pk, server=server.pk, hostname=hostname, operation=op.id,
                 plan=plan.pk, os_template=os_template.slug)
            hand_over(op)
    except BaseException:
        upload.unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return server, op, appliance


def import_folder(op: Operation) -> Path:
    name = op.params.get("folder", "")
    if not ovf._plain_name(name):
        raise DriverError("the import's folder is missing")
    return ovf.ovf_dir("imports") / name


def import_server(step: Step, server: VirtualServer, driver: Driver) -> None:
    folder = import_folder(step.op)
    for line in step.op.params.get("mapping", []):
        step(5, f"mapped: {line}", customer=True)
    source = folder / step.op.params["disk"]
    if not source.is_file():
        raise for_customer(DriverError("the uploaded disk is gone (was the import already run?)"))
    qcow2 = folder / "disk.qcow2"
    step(10, f"converting {source.name} ({step.op.params['format']}) to qcow2", customer=True)
    try:
        ovf.to_qcow2(source, step.op.params["format"], qcow2, server.disk_gib)
    except ovf.OvfError as exc:
        raise for_customer(DriverError(str(exc))) from None
    source.unlink()
    pool = server.storage.pool_name
    step(30, f"preparing storage {server.storage.name} and streaming the disk to node {server.node.name}",
         customer="copying the disk")
    driver.ensure_pool(pool, server.storage.path)

    def chunks():
        with open(qcow2, "rb") as f:
            while chunk := f.read(ovf.CHUNK):
                yield chunk
                step.heartbeat()

    path = driver.write_volume(pool, server.disk_volume, chunks(), qcow2.stat().st_size)
    step(80, "defining and booting the imported server", customer=True)
    driver.define(domain_spec(server, path))
    driver.start(server.domain_name)
    server.set_state(ServerState.RUNNING, error="")
    shutil.rmtree(folder, ignore_errors=True)


def fail_import(op: Operation, server: VirtualServer, driver: Driver) -> None:
    """A failed import leaves nothing behind: the domain, the volume, the record and the files."""
    for undo in (lambda: driver.destroy(server.domain_name), lambda: driver.undefine(server.domain_name),
                 lambda: driver.delete_volume(server.storage.pool_name, server.disk_volume)):
        try:
            undo()
        except DriverError:
            pass
    try:
        shutil.rmtree(import_folder(op), ignore_errors=True)
    except DriverError:
        pass
    delete_record(server)

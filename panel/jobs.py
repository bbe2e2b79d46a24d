"""The table of job kinds: which room's job carries out each kind of Operation.

The worker's composition root, as urls.py is the web's: it imports the rooms and nothing in
them imports it. The queue reaches it by the dotted path `panel.jobs.run_operation`
(panel/operations.py); rows queued by older versions name panel.vps.tasks, kept for them.
"""

from backup import restoring, retention, taking
from nodes.installer import NodeInstallJob
from panel import runner
from panel.images import ovf_jobs
from panel.images import clone_jobs
from panel.images import disk_jobs
from panel.images import snapshot_actions, snapshot_jobs
from panel.vps import installing, server_jobs
from panel.vps.models import Operation
from panel.vps.server_jobs import ServerJob

Kind = Operation.Kind


def create(step, server, driver) -> None:
    """A server's create: an install, or for a clone (panel/images) a copy of its source's disk."""
    if "clone_of" in step.op.params:
        clone_jobs.clone(step, server, driver)
    else:
        installing.create(step, server, driver)


def delete(step, server, driver) -> None:
    """A server's delete: its domain and disks leave the node, then its backups (unless the
    request kept them), then its record, capacity and addresses."""
    server_jobs.remove_domain(step, server, driver)
    disk_jobs.remove_with_server(step, server, driver)
    retention.delete_with_server(step, server)
    bases = clone_jobs.bases_of(server)
    server_jobs.delete_record(server)
    clone_jobs.drop_unused(step, driver, bases)


JOBS: runner.JobTable = {
    Kind.CREATE: ServerJob.of(create, settle=installing.fail_install),
    Kind.REINSTALL: ServerJob.of(installing.reinstall, settle=installing.fail_install),
    Kind.START: ServerJob.of(server_jobs.start),
    Kind.STOP: ServerJob.of(server_jobs.stop),
    Kind.REBOOT: ServerJob.of(server_jobs.reboot),
    Kind.SUSPEND: ServerJob.of(server_jobs.suspend),
    Kind.UNSUSPEND: ServerJob.of(server_jobs.unsuspend),
    Kind.DELETE: ServerJob.of(delete),
    Kind.NETWORK_UPDATE: ServerJob.of(server_jobs.network_update),
    Kind.MIGRATE: ServerJob.of(server_jobs.migrate),
    Kind.CHANGE_PLAN: ServerJob.of(server_jobs.change_plan),
    Kind.RESET_PASSWORD: ServerJob.of(server_jobs.reset_password),
    Kind.BACKUP: ServerJob.of(taking.take),
    Kind.RESTORE: ServerJob.of(restoring.restore),
    Kind.NODE_INSTALL: NodeInstallJob,
    Kind.PANEL_BACKUP: taking.PanelBackupJob,
    snapshot_actions.CREATE: ServerJob.of(snapshot_jobs.create, settle=snapshot_jobs.forget_failed_create),
    snapshot_actions.REVERT: ServerJob.of(snapshot_jobs.revert),
    snapshot_actions.DELETE: ServerJob.of(snapshot_jobs.delete),
    disk_jobs.ADD: ServerJob.of(disk_jobs.add, settle=disk_jobs.add_failed),
    disk_jobs.GROW: ServerJob.of(disk_jobs.grow, settle=disk_jobs.grow_failed),
    disk_jobs.DELETE: ServerJob.of(disk_jobs.delete, settle=disk_jobs.delete_failed),
    Kind.OVA_EXPORT: ServerJob.of(ovf_jobs.export),
    Kind.OVA_IMPORT: ServerJob.of(ovf_jobs.import_server, settle=ovf_jobs.fail_import),
}


def run_operation(operation_id: int) -> str:
    """Carry out one operation (django-q2's task). Returns its final status."""
    return runner.run(operation_id, JOBS)

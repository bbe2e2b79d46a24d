"""Which backups to delete, without ever breaking an incremental chain.

A chain is a full backup and the incrementals built on it. Retention keeps at least `keep`
finished backups of a server on a target and deletes only whole chains, oldest first, and
never the newest chain (the next incremental builds on it). So a chain being written to
can make the count exceed `keep` for a while; no kept backup ever lacks its parent.
"""

import logging

from backup import files
from backup.models import Backup, BackupPlan, BackupTarget

log = logging.getLogger(__name__)

PANEL_KEEP = 7  # panel backups made by hand: how many stay on a target


def keep_for(server, plan: BackupPlan | None) -> int:
    """How many backups of `server` a run keeps: the backup plan's count, capped by what the
    server's plan includes (`Plan.backups`; 0 = no cap for backups a provider made)."""
    keep = plan.keep if plan else (server.plan.backups or 1)
    return min(keep, server.plan.backups) if server.plan.backups else keep


def chains(backups: list[Backup]) -> list[list[Backup]]:
    """Group finished backups (oldest first) into chains, each starting with its full backup."""
    by_root: dict[int, list[Backup]] = {}
    root_of: dict[int, int] = {}
    for backup in backups:
        root = backup.id if backup.parent_id is None else root_of.get(backup.parent_id, backup.parent_id)
        root_of[backup.id] = root
        by_root.setdefault(root, []).append(backup)
    return [by_root[root] for root in sorted(by_root)]


def prune(server_uuid, target: BackupTarget, keep: int) -> list[int]:
    """Delete the oldest chains of a server's backups on `target` while at least `keep` finished
    backups remain; also failed attempts older than the newest finished backup. Returns the
    ids deleted."""
    done = list(Backup.objects.filter(server_uuid=server_uuid, target=target, status=Backup.Status.DONE)
                .exclude(kind=Backup.Kind.PANEL).order_by("id"))
    doomed: list[Backup] = []
    remaining = len(done)
    for chain in chains(done)[:-1]:
        if remaining - len(chain) < keep:
            break
        doomed += chain
        remaining -= len(chain)
    if done:
        doomed += list(Backup.objects.filter(server_uuid=server_uuid, target=target, status=Backup.Status.FAILED,
                                             id__lt=done[-1].id))
    return delete_backups(doomed)


def prune_panel(target: BackupTarget, keep: int) -> list[int]:
    done = list(Backup.objects.filter(kind=Backup.Kind.PANEL, target=target, status=Backup.Status.DONE).order_by("-id"))
    failed = list(Backup.objects.filter(kind=Backup.Kind.PANEL, target=target, status=Backup.Status.FAILED,
                                        id__lt=done[0].id)) if done else []
    return delete_backups(done[keep:] + failed)


def delete_backups(backups: list[Backup]) -> list[int]:
    """Delete the backups' files from their targets, then their rows (newest first, so an
    incremental goes before its parent). A file that cannot be deleted keeps its row."""
    from backup.connect import target_for
    from backup.targets import TargetError

    deleted = []
    by_target: dict[tuple[int, int | None], list[Backup]] = {}
    for backup in sorted(backups, key=lambda b: -b.id):
        by_target.setdefault((backup.target_id, backup.node_id), []).append(backup)
    for batch in by_target.values():
        if batch[0].on_removed_node:
            log.warning("backups %s: their node is gone; forgetting them", [b.id for b in batch])
            target = _Gone()
        else:
            target = target_for(batch[0].target, node=batch[0].node)
        try:
            for backup in batch:
                if backup.children.exists():
                    continue  # a kept incremental still needs it
                try:
                    for name in (backup.file_name, *files.data_files(backup),
                                 files.manifest_name(backup) if backup.kind != Backup.Kind.PANEL else ""):
                        if name:
                            target.delete(name)
                except TargetError as exc:
                    log.warning("backup %s: its file could not be deleted: %s", backup.id, exc)
                    continue
                deleted.append(backup.id)  # before delete(), which clears it
                backup.delete()
        finally:
            target.close()
    return sorted(deleted)


class _Gone:
    """The target of files nobody can reach any more: deleting them succeeds."""

    def delete(self, name: str) -> None:
        pass

    def close(self) -> None:
        pass


def delete_with_server(step, server) -> None:
    """The backups' part of a server's delete: all of them, unless the request kept them."""
    if step.op.params.get("keep_backups"):
        step(80, "keeping the server's backups (keep_backups)", customer=True)
    else:
        removed = delete_server_backups(server)
        step(80, f"removed {len(removed)} backup(s)", customer=True)


def delete_server_backups(server) -> list[int]:
    """All backups of a server (it is being deleted without ?keep_backups=1)."""
    return delete_backups(list(Backup.objects.filter(server_uuid=server.uuid).select_related("target")))

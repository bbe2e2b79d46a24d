"""A BackupTarget row made into a connected Target of its kind (a folder on the panel's host,
a node folder, FTP/FTPS, SFTP), and the check that stores its result on the row.

The kinds live in `backup.targets` (the interface, folder and FTP), `backup.node_folder` and
`backup.sftp`; this module is the one that knows them all, so they need not know each other.
"""

from __future__ import annotations

from django.utils import timezone

from backup.models import BackupTarget
from backup.node_folder import NodeFolderTarget, check_on_nodes
from backup.sftp import SftpTarget
from backup.targets import DirTarget, FtpTarget, Target, TargetError
from nodes.driver import Driver
from nodes.models import Node
from panel.crypto import decrypt


def target_for(target: BackupTarget, node: Node | None = None, driver: Driver | None = None) -> Target:
    """The Target for a BackupTarget row; decrypts its password. A node folder is the one on
    `node` (reached through `driver` when given)."""
    if target.kind == BackupTarget.Kind.DIR:
        return DirTarget(target.path)
    if target.kind == BackupTarget.Kind.NODE:
        if node is None:
            raise ValueError("a node folder target is used on a node: none was given")
        return NodeFolderTarget(target.id, target.path, node, driver)
    if target.kind in (BackupTarget.Kind.FTP, BackupTarget.Kind.FTPS):
        return FtpTarget(
            target.host,
            target.port or 21,
            target.username,
            decrypt(target.password),
            target.path,
            tls=target.kind == BackupTarget.Kind.FTPS,
            host_key=_pin_of_kind(target),
        )
    if target.kind == BackupTarget.Kind.SFTP:
        return SftpTarget(target.host, target.port or 22, target.username, decrypt(target.password), target.path,
                          _pin_of_kind(target))
    raise ValueError(f"unknown backup target kind {target.kind!r}")


def _pin_of_kind(target: BackupTarget) -> str:
    """The target's pin, or "" when it was pinned as another kind (an SFTP target edited into an
    FTPS one): that pin says nothing about this server, the next check pins again."""
    certificate = target.host_key.startswith("x509 ")
    return target.host_key if certificate == (target.kind == BackupTarget.Kind.FTPS) else ""


def check_target(target: BackupTarget) -> str:
    """Check that `target` is writable, store the result (checked_at, check_error, free_bytes,
    and an SFTP host's key or an FTPS server's certificate pinned at first contact) on the row
    and return the error text ("" when fine). Never raises TargetError."""
    free_bytes = None
    fields = ["checked_at", "check_error", "free_bytes"]
    try:
        if target.kind == target.Kind.NODE:
            error, free_bytes = check_on_nodes(target)
        else:
            with target_for(target) as store:
                free_bytes = store.check().free_bytes
            error = ""
            pinned = getattr(store, "host_key", "")
            if pinned and pinned != target.host_key:  # first contact: pin the key (certificate) seen
                target.host_key = pinned
                fields.append("host_key")
    except TargetError as exc:
        error = str(exc)
    except ValueError as exc:  # undecryptable password, unknown kind, bad path
        error = str(exc)
    target.checked_at = timezone.now()
    target.check_error = error
    target.free_bytes = free_bytes
    target.save(update_fields=fields)
    return error

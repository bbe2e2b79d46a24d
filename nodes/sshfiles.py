"""Files for libvirt's ssh transport (qemu+ssh://): the panel's key, pinned host keys, a wrapper.

libvirt runs the `ssh` program; the wrapper makes it use only the panel's key and only the
pinned host keys (StrictHostKeyChecking), so libvirt connections are held to the same pins as
paramiko's. The private key file is the decrypted copy ssh needs (mode 0600); the database
keeps it encrypted.
"""

import os
import shlex
import tempfile
import threading
from urllib.parse import quote
from pathlib import Path

from django.conf import settings

from panel.crypto import decrypt

_written_in_this_process = False
# Health checks run in threads, and worker, monitor and web run as processes: each write goes
# to its own temporary file and is renamed into place, so readers never see half a file.
_lock = threading.Lock()


def _write(path: Path, text: str, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def wrapper_path() -> Path:
    return settings.SSH_DIR / "ssh"


def write_client_files() -> Path:
    """(Re)write key, known_hosts, config and wrapper from the database; returns the wrapper."""
    with _lock:
        return _write_client_files()


def _write_client_files() -> Path:
    global _written_in_this_process
    from nodes.models import Node, PanelIdentity
    from nodes.ssh import panel_identity

    directory = settings.SSH_DIR
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    panel_identity()  # makes the key on first use
    identity = PanelIdentity.objects.order_by("id").first()
    _write(directory / "id_panel", decrypt(identity.private_key).rstrip("\n") + "\n", 0o600)
    lines = []
    for node in Node.objects.exclude(address=None).exclude(host_key=""):
        name = node.address if node.ssh_port == 22 else f"[{node.address}]:{node.ssh_port}"
        lines.append(f"{name} {node.host_key}\n")
    _write(directory / "known_hosts", "".join(lines), 0o600)
    config = "\n".join([
        "Host *",
        f"  IdentityFile {directory / 'id_panel'}",
        "  IdentitiesOnly yes",
        f"  UserKnownHostsFile {directory / 'known_hosts'}",
        "  GlobalKnownHostsFile /dev/null",
        "  StrictHostKeyChecking yes",
        "  BatchMode yes",
        "  ConnectTimeout 5",
        # A dead link ends the session (and libvirt's connection) within ~10 s.
        "  ServerAliveInterval 5",
        "  ServerAliveCountMax 2",
        "",
    ])
    _write(directory / "config", config, 0o600)
    _write(wrapper_path(), f"#!/bin/sh\nexec ssh -F {shlex.quote(str(directory / 'config'))} \"$@\"\n", 0o700)
    _written_in_this_process = True
    return wrapper_path()


def ensure_client_files() -> Path:
    if not _written_in_this_process or not wrapper_path().exists():
        return write_client_files()
    return wrapper_path()


def node_uri(address: str, port: int, user: str) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"qemu+ssh://{user}@{host}:{port}/system?command={quote(str(wrapper_path()), safe='/')}&no_tty=1"

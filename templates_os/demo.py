"""The demo OS: the tiny guest (deploy/build_demo_os.sh) laid out as the `tiny`
template on the share, so a fresh panel can install a first server without anyone
downloading a distribution."""

import filecmp
import logging
import os
import shutil
import subprocess
from pathlib import Path

from django.conf import settings

from templates_os.repository import CATALOG, share

log = logging.getLogger(__name__)


def _put(source: Path, dest: Path) -> None:
    """Copy unless identical; atomically, since a running install may be reading the old one."""
    if dest.exists() and filecmp.cmp(source, dest, shallow=False):
        return
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}")
    shutil.copyfile(source, tmp)
    tmp.chmod(0o644)
    tmp.replace(dest)


def ensure_demo_template() -> bool:
    """Lay out (or refresh) the tiny template when the tiny guest is built; True when it is there."""
    built = Path(settings.TINY_GUEST_DIR)
    if not ((built / "vmlinuz").is_file() and (built / "initrd.img").is_file()):
        return False
    folder = share() / "tiny"
    folder.mkdir(parents=True, exist_ok=True)
    # QEMU runs as its own user: it reads the kernel, initrd and base image through these folders.
    for path in (share(), folder):
        path.chmod(0o755)
    for name in ("template.toml", "user-data"):
        _put(CATALOG / "tiny" / name, folder / name)
    for name in ("vmlinuz", "initrd.img"):
        _put(built / name, folder / name)
    disk = folder / "disk.qcow2"
    if not disk.exists():
        # Blank: a new server's overlay on it reads "not installed" until its config writes the system.
        tmp = folder / f".disk.{os.getpid()}.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp), "1G"], check=True, timeout=60)
        tmp.chmod(0o644)
        tmp.replace(disk)
    return True


def prepare_catalog() -> None:
    """What `runpanel` does at start: shipped templates onto the share (never overwriting),
    shipped recipes into the database, the demo OS, a scan."""
    from recipes.catalog import load_catalog
    from templates_os.repository import install_catalog, scan

    install_catalog()
    load_catalog()
    try:
        ensure_demo_template()
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("the demo OS could not be laid out on the share: %s", exc)
    scan()

"""A private OpenSSH server on a loopback port for the SFTP backup tests: its own config, host
key, pid file and authorized_keys in a folder of its own, logging in as the current user.

    sshd = PrivateSshd(folder)   # started; sshd.port, sshd.user, sshd.host_key
    sshd.restart_with_new_key()  # same port, another host key
    sshd.stop()
"""

import getpass
import os
import socket
import subprocess
import time
from pathlib import Path

from tests.e2e.conftest import free_port

SSHD = "/usr/sbin/sshd"


class SshdError(RuntimeError):
    pass


class PrivateSshd:
    """An sshd (`-D`, a child of this process) on 127.0.0.1:`port` (a free one by default)."""

    def __init__(self, folder: Path, port: int | None = None):
        self.folder = Path(folder)
        self.port = port or free_port()
        self.user = getpass.getuser()
        self.authorized_keys = self.folder / "authorized_keys"
        self.host_key = ""  # "<type> <base64>", as a target pins it
        self._proc: subprocess.Popen | None = None
        self._generation = 0
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", exist_ok=True)  # privilege separation needs it (as tests/cluster.py does)
        self.authorized_keys.write_text("")
        self.start()

    def _new_host_key(self) -> Path:
        self._generation += 1
        path = self.folder / f"host_key{self._generation}"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
        self.host_key = " ".join(path.with_name(path.name + ".pub").read_text().split()[:2])
        return path

    def start(self) -> None:
        host_key = self._new_host_key()
        config = self.folder / "sshd_config"
        config.write_text(f"""
ListenAddress 127.0.0.1
Port {self.port}
HostKey {host_key}
PidFile {self.folder}/sshd.pid
AuthorizedKeysFile {self.authorized_keys}
PermitRootLogin yes
PasswordAuthentication yes
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
MaxAuthTries 10
Subsystem sftp internal-sftp
""")
        self.log = self.folder / "sshd.log"  # a file, not a pipe: a full pipe would block sshd
        with open(self.log, "ab") as log:
            self._proc = proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=log)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise SshdError(f"sshd did not start: {self.log.read_text(errors='replace')}")
                time.sleep(0.05)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def restart_with_new_key(self) -> None:
        """The same port, another host key (as a reinstalled or impostor host would offer)."""
        self.stop()
        self.start()

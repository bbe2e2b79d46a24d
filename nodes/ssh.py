"""SSH to nodes with paramiko: pinned host keys, the panel's own key, quoted commands.

The host key is recorded at first contact and checked on every later connection; a
different key refuses the connection (`HostKeyChanged`) and is kept on the node for an admin
to inspect and accept. Commands are argument lists, quoted with shlex.join, never strings
pasted together.
"""

import base64
import io
import shlex
import socket
from dataclasses import dataclass

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from nodes.hostkeys import fingerprint
from panel.crypto import decrypt, encrypt

CONNECT_TIMEOUT = 10


class SshError(Exception):
    """Talking to the node failed. `retryable`: the node may answer later (network, timeout)."""

    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


class HostKeyChanged(SshError):
    def __init__(self, expected: str, offered: str):
        super().__init__(
            f"the node's SSH host key changed: pinned {fingerprint(expected)}, offered {fingerprint(offered)}; "
            "connection refused until an admin accepts the new key"
        )
        self.offered = offered


def key_line(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.get_base64()}"


def panel_identity():
    """The panel's key pair (generated once): (paramiko key, "ssh-ed25519 … panel" line)."""
    from nodes.models import PanelIdentity

    identity = PanelIdentity.objects.order_by("id").first()
    if identity is None:
        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption()).decode()
        public = private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                   serialization.PublicFormat.OpenSSH).decode()
        identity = PanelIdentity.objects.create(private_key=encrypt(pem), public_key=f"{public} kvm-panel")
    return load_private_key(decrypt(identity.private_key)), identity.public_key


def load_private_key(text: str) -> paramiko.PKey:
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key(io.StringIO(text))
        except (paramiko.SSHException, ValueError):
            continue
    raise SshError("the private key is not an unencrypted OpenSSH/PEM ed25519, ECDSA or RSA key")


class _Pinning(paramiko.MissingHostKeyPolicy):
    """First contact: remember the offered key. Later: only the pinned key is accepted."""

    def __init__(self, pinned: str):
        self.pinned = pinned
        self.offered = ""

    def missing_host_key(self, client, hostname, key):
        self.offered = key_line(key)
        if self.pinned and self.offered != self.pinned:
            raise HostKeyChanged(self.pinned, self.offered)


@dataclass
class Result:
    code: int
    out: str
    err: str


class NodeShell:
    """One SSH session to a node. Use as a context manager.

    `host_key` is the pinned key ("" on first contact: then `.host_key` holds what was seen).
    Authenticates with `password` or `private_key`, else with the panel's own key.
    """

    def __init__(self, address: str, port: int, user: str, host_key: str, *, password: str = "",
                 private_key: paramiko.PKey | None = None):
        self.address, self.port, self.user = address, port, user
        self.host_key = host_key
        self._password, self._private_key = password, private_key
        self.client: paramiko.SSHClient | None = None

    def __enter__(self) -> "NodeShell":
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def connect(self) -> None:
        client = paramiko.SSHClient()
        policy = _Pinning(self.host_key)
        if self.host_key:
            name = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
            key_type, blob = self.host_key.split()[:2]
            client.get_host_keys().add(name, key_type, paramiko.PKey.from_type_string(key_type, base64.b64decode(blob)))
        client.set_missing_host_key_policy(policy)
        key = self._private_key
        if key is None and not self._password:
            key = panel_identity()[0]
        try:
            client.connect(self.address, port=self.port, username=self.user, password=self._password or None,
                           pkey=key, timeout=CONNECT_TIMEOUT, banner_timeout=CONNECT_TIMEOUT,
                           auth_timeout=CONNECT_TIMEOUT, allow_agent=False, look_for_keys=False)
        except HostKeyChanged:
            client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise HostKeyChanged(self.host_key, key_line(exc.key)) from exc
        except paramiko.AuthenticationException as exc:
            client.close()
            raise SshError(f"SSH login to {self.user}@{self.address}:{self.port} refused: wrong password or key") from exc
        except (OSError, socket.timeout, paramiko.SSHException, EOFError) as exc:
            client.close()
            raise SshError(f"cannot reach {self.address}:{self.port} over SSH: {exc or exc.__class__.__name__}",
                           retryable=True) from exc
        if not self.host_key:
            self.host_key = policy.offered
        self.client = client

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def run(self, argv: list[str], *, check: bool = True, timeout: float = 600, stdin: str | None = None) -> Result:
        """Run one command; every argument is quoted. Raises SshError on a non-zero exit if `check`."""
        command = shlex.join(argv)
        try:
            stdin_f, stdout_f, stderr_f = self.client.exec_command(command, timeout=timeout)
            if stdin is not None:
                stdin_f.write(stdin)
                stdin_f.channel.shutdown_write()
            out = stdout_f.read().decode(errors="replace")
            err = stderr_f.read().decode(errors="replace")
            code = stdout_f.channel.recv_exit_status()
        except (OSError, socket.timeout, paramiko.SSHException) as exc:
            raise SshError(f"{argv[0]} on {self.address}: {exc or exc.__class__.__name__}", retryable=True) from exc
        result = Result(code, out, err)
        if check and code != 0:
            detail = (err.strip() or out.strip()).splitlines()[-5:]
            raise SshError(f"`{command}` exited with {code}: {' / '.join(detail)}")
        return result

    def script(self, body: str, *args: str, check: bool = True, timeout: float = 600) -> Result:
        """Run a fixed shell script; variable values go in as positional parameters ($1 …)."""
        return self.run(["sh", "-c", body, "sh", *args], check=check, timeout=timeout)

"""A backup host over SSH: files stored with SFTP (paramiko), the host key pinned like a node's.

The connection is a `NodeShell` (pinned host key, password or the panel's own key); files go
through its SFTP channel, the free space comes from the statvfs@openssh.com extension or `df`.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import paramiko
from paramiko.sftp import CMD_EXTENDED, CMD_EXTENDED_REPLY

from backup.targets import Readable, Target, TargetError, Writable, _folder_of, check_name
from nodes.hostkeys import fingerprint
from nodes.ssh import HostKeyChanged, NodeShell, SshError

# Per SFTP request: a hung server must not stall a backup forever.
SFTP_TIMEOUT_SECONDS = 120
# Outstanding read requests while prefetching (32 KiB each): enough to fill a long fat link.
PREFETCH_REQUESTS = 128
_FULL_WORDS = ("no space", "quota", "disk full")


class _Upload:
    """What SftpTarget.writer yields: converts the file's errors to TargetError."""

    def __init__(self, file: paramiko.SFTPFile, on_error):
        self._file, self._on_error = file, on_error

    def write(self, data: bytes) -> int:
        try:
            self._file.write(data)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._on_error(exc) from None
        return len(data)


class _Download:
    """What SftpTarget.reader yields: converts the file's errors to TargetError."""

    def __init__(self, file: paramiko.SFTPFile, on_error):
        self._file, self._on_error = file, on_error
        self.eof = False

    def read(self, n: int = -1) -> bytes:
        try:
            data = self._file.read(None if n is None or n < 0 else n)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._on_error(exc) from None
        # BufferedFile.read fills n bytes unless the file ends first.
        self.eof = self.eof or n is None or n < 0 or len(data) < n
        return data


class SftpTarget(Target):
    """A folder on an SSH server. `host_key` is the pinned key ("" on first contact: then
    `.host_key` holds the key seen, for the caller to save)."""

    def __init__(self, host: str, port: int | None, username: str, password: str, path: str, host_key: str):
        self.host, self.port, self.username = host, port or 22, username
        self._password = password
        self.path = path
        self.host_key = host_key
        self._shell: NodeShell | None = None
        self._sftp: paramiko.SFTPClient | None = None

    def __repr__(self) -> str:
        return f"SftpTarget({self.username!r}@{self.host!r}:{self.port}, path={self.path!r})"  # no password

    # -- connection and errors

    def _clean(self, text: str) -> str:
        # The password is never sent back by SSH servers, but a message must not be the place to check.
        return text.replace(self._password, "***") if self._password else text

    def _connect(self) -> paramiko.SFTPClient:
        if self._sftp is not None:
            return self._sftp
        shell = NodeShell(self.host, self.port, self.username, self.host_key, password=self._password)
        where = f"{self.username}@{self.host}:{self.port}"
        try:
            shell.connect()
        except HostKeyChanged as exc:
            raise TargetError(f"the SSH host key of {self.host}:{self.port} changed: pinned "
                              f"{fingerprint(self.host_key)}, offered {fingerprint(exc.offered)}; "
                              "clear the pinned key to accept the new one", permanent=True) from None
        except SshError as exc:
            raise TargetError(self._clean(str(exc)), permanent=not exc.retryable) from None
        self.host_key = shell.host_key
        try:
            sftp = shell.client.open_sftp()
            sftp.get_channel().settimeout(SFTP_TIMEOUT_SECONDS)
            if self.path:
                try:
                    sftp.chdir(self.path)  # relative names resolve below it from here on
                except (OSError, paramiko.SFTPError) as exc:
                    raise TargetError(f"folder {self.path} does not exist on {where}: {exc}", permanent=True) from None
        except TargetError:
            shell.close()
            raise
        except (OSError, EOFError, paramiko.SSHException) as exc:
            shell.close()
            raise TargetError(f"cannot open SFTP on {where}: {self._clean(str(exc) or type(exc).__name__)}") from None
        self._shell, self._sftp = shell, sftp
        return sftp

    def _alive(self) -> bool:
        transport = self._shell.client.get_transport() if self._shell and self._shell.client else None
        return transport is not None and transport.is_active()

    def _error(self, exc: BaseException, action: str) -> TargetError:
        """Convert a paramiko/socket error raised while doing `action` to a TargetError."""
        if isinstance(exc, TargetError):
            return exc
        detail = self._clean(str(exc).strip() or type(exc).__name__)
        if isinstance(exc, (socket.timeout, EOFError, paramiko.SSHException)) or not self._alive():
            self.close()  # the connection state is unknown now: start over next time
            return TargetError(f"SFTP connection to {self.host}:{self.port} lost: {action}: {detail}")
        if any(word in detail.lower() for word in _FULL_WORDS):
            return TargetError(f"the target is full: {action}: {detail}", permanent=True)
        if getattr(exc, "errno", None) == errno.EACCES:
            return TargetError(f"permission denied: {action}: {detail}", permanent=True)
        # The server answered no (missing file, unsupported, a generic failure): it will again.
        return TargetError(f"{action}: {detail}", permanent=True)

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._error(exc, action) from None

    def close(self) -> None:
        if self._shell is not None:
            self._shell.close()
        self._shell = self._sftp = None

    # -- the interface

    def free_bytes(self) -> int | None:
        with self._errors("cannot read the free space"):
            sftp = self._connect()
            try:
                # OpenSSH's extension (paramiko has no public call for it); works on sftp-only logins.
                kind, msg = sftp._request(CMD_EXTENDED, "statvfs@openssh.com", self.path or ".")
                if kind == CMD_EXTENDED_REPLY:
                    _bsize, frsize, _blocks, _bfree, bavail = (msg.get_int64() for _ in range(5))
                    return bavail * frsize
            except (OSError, paramiko.SFTPError):
                pass  # not supported: try df
            try:
                # stdin="" closes it: a login forced to internal-sftp would otherwise wait for input.
                result = self._shell.run(["df", "-PB1", "--", self.path or "."], check=False, timeout=30, stdin="")
                return int(result.out.splitlines()[1].split()[3]) if result.code == 0 else None
            except (SshError, IndexError, ValueError):
                return None

    @contextmanager
    def writer(self, name: str) -> Iterator[Writable]:
        check_name(name)
        part, action = name + ".part", f"cannot store {name}"
        with self._errors(action):
            sftp = self._connect()
            if folder := _folder_of(name):
                try:
                    sftp.mkdir(folder)
                except OSError:
                    pass  # usually "exists"; a real refusal shows up on open
            file = sftp.open(part, "wb")
            file.set_pipelined(True)  # don't wait for each write's answer
        try:
            yield _Upload(file, lambda exc: self._error(exc, action))
            with self._errors(action):
                file.close()  # collects the answers of the pipelined writes
                sftp.posix_rename(part, name)  # replaces an existing file, atomically
        except BaseException:
            self._discard(file, part)
            raise

    def _discard(self, file: paramiko.SFTPFile, part: str) -> None:
        try:
            file.close()
        except (OSError, EOFError, paramiko.SSHException):
            pass
        # Another connection if this one broke: a .part must not stay behind.
        for _ in range(2):
            try:
                self._delete_file(part)
                return
            except TargetError:
                self.close()

    @contextmanager
    def reader(self, name: str) -> Iterator[Readable]:
        check_name(name)
        action = f"cannot read {name}"
        with self._errors(action):
            try:
                file = self._connect().open(name, "rb")
            except FileNotFoundError:
                raise TargetError(f"{name} is missing on the target {self.host}:{self.port}", permanent=True) from None
            file.prefetch(max_concurrent_requests=PREFETCH_REQUESTS)
        download = _Download(file, lambda exc: self._error(exc, action))
        try:
            yield download
        finally:
            if download.eof:
                file.close()
            else:
                self.close()  # stopped early: the prefetched answers would keep coming

    def size(self, name: str) -> int | None:
        check_name(name)
        with self._errors(f"cannot read the size of {name}"):
            try:
                return self._connect().stat(name).st_size
            except FileNotFoundError:
                return None

    def _delete_file(self, name: str) -> None:
        with self._errors(f"cannot delete {name}"):
            try:
                self._connect().remove(name)
            except FileNotFoundError:
                pass

    def _delete_folder_if_empty(self, folder: str, name: str) -> None:
        with self._errors(f"cannot delete {name}"):
            try:
                self._connect().rmdir(folder)
            except OSError:
                pass  # not empty (or gone): fine

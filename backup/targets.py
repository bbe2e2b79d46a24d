"""Where backup files are stored: a folder on the panel's host, a backup host over SSH (SFTP,
in backup.sftp) or an FTP/FTPS server.

One small interface (`Target`) with an implementation per kind. Every failure surfaces as a
`TargetError` that says whether retrying can help: a refused login, a missing folder, a denied
permission or a full target are permanent; an unreachable server, a timeout or a dropped
connection are worth another try. Files are written to "<name>.part" and renamed only once
complete, so a name on the target always holds a whole file. `backup.connect` makes a
BackupTarget row into the Target of its kind.
"""

from __future__ import annotations

import base64
import errno
import ftplib
import os
import secrets
import socket
import ssl
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Protocol

from nodes.hostkeys import fingerprint

FTP_TIMEOUT_SECONDS = 30
PROBE_BYTES = b"panel backup target check\n"
# errno values that mean "no room left": a full disk or an exhausted quota.
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_DENIED_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}


class TargetError(Exception):
    """A target failed. `permanent` means retrying will not help (login refused, no such
    folder, permission denied, target full); otherwise the failure may pass (unreachable,
    timeout, connection dropped)."""

    def __init__(self, message: str, permanent: bool = False):
        super().__init__(message)
        self.message = message
        self.permanent = permanent

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class CheckResult:
    """The outcome of a successful `Target.check()`."""

    free_bytes: int | None  # None when the target cannot tell (most FTP servers)


class Writable(Protocol):
    """What `Target.writer()` yields."""

    def write(self, data: bytes) -> int: ...


class Readable(Protocol):
    """What `Target.reader()` yields."""

    def read(self, n: int = -1) -> bytes: ...


def check_name(name: str) -> str:
    """Return `name` if it is a safe relative file name with at most one folder, else raise
    ValueError. Names come from the panel, but a bad one must never escape the target or
    inject a second FTP command."""
    if not name or not isinstance(name, str):
        raise ValueError("a backup file name cannot be empty")
    if any(c in name for c in "\0\r\n\\"):
        raise ValueError(f"invalid character in backup file name {name!r}")
    if name.startswith("/"):
        raise ValueError(f"backup file name {name!r} must be relative")
    parts = name.split("/")
    if len(parts) > 2 or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"invalid backup file name {name!r}")
    return name


def _folder_of(name: str) -> str:
    return name.rpartition("/")[0]


class Target:
    """A place to store backup files. Names are relative paths like
    "3f2a.../000012-full.qcow2.zst" (at most one level of folders, made on demand).
    Every method raises TargetError."""

    def check(self) -> CheckResult:
        """Write, read back and delete a small probe file; report the free space if known."""
        name = f".panel-check-{secrets.token_hex(6)}"
        # A failed write cleans up after itself; from here on the probe is ours to delete.
        with self.writer(name) as out:
            out.write(PROBE_BYTES)
        try:
            with self.reader(name) as src:
                data = src.read(len(PROBE_BYTES) + 1)
            if data != PROBE_BYTES:
                raise TargetError("the target returned different data than was written to it")
        finally:
            try:
                self.delete(name)
            except TargetError:
                pass  # the first error is the interesting one
        return CheckResult(free_bytes=self.free_bytes())

    def free_bytes(self) -> int | None:
        """The free space on the target, or None when it cannot tell."""
        return None

    def writer(self, name: str) -> AbstractContextManager[Writable]:
        """A context manager yielding an object with write(bytes). The data goes to
        "<name>.part", renamed to `name` only when the block exits without an error; on an
        error the partial file is removed and the error propagates."""
        raise NotImplementedError

    def reader(self, name: str) -> AbstractContextManager[Readable]:
        """A context manager yielding an object with read(n) -> bytes (b"" at the end)."""
        raise NotImplementedError

    def size(self, name: str) -> int | None:
        """The size of `name` in bytes, or None when it does not exist."""
        raise NotImplementedError

    def delete(self, name: str) -> None:
        """Delete `name`; a missing file is fine. Its folder is removed once empty."""
        check_name(name)
        self._delete_file(name)
        if folder := _folder_of(name):
            self._delete_folder_if_empty(folder, name)

    def _delete_file(self, name: str) -> None:
        """Delete one file; a missing one is fine."""
        raise NotImplementedError

    def _delete_folder_if_empty(self, folder: str, name: str) -> None:
        """Remove `folder` (where `name` was) if nothing is left in it; a folder still in use stays."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections; the target can still be used afterwards (it reconnects)."""

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --- a folder on the panel's host


def _dir_error(exc: OSError, action: str) -> TargetError:
    detail = exc.strerror or str(exc)
    if exc.errno in _FULL_ERRNOS:
        return TargetError(f"the target is full: {action}: {detail}", permanent=True)
    if exc.errno in _DENIED_ERRNOS:
        return TargetError(f"permission denied: {action}: {detail}", permanent=True)
    if exc.errno == errno.ENOENT:
        return TargetError(f"{action}: {detail}", permanent=True)
    # EIO, ESTALE and friends on a mounted share can pass.
    return TargetError(f"{action}: {detail}")


class _DirUpload:
    """The object a DirTarget writer yields: converts the file's OSErrors to TargetError."""

    def __init__(self, file: BinaryIO, name: str):
        self._file = file
        self._name = name

    def write(self, data: bytes) -> int:
        try:
            return self._file.write(data)
        except OSError as exc:
            raise _dir_error(exc, f"cannot write {self._name}") from exc


class _DirDownload:
    """The object a DirTarget reader yields: converts the file's OSErrors to TargetError."""

    def __init__(self, file: BinaryIO, name: str):
        self._file = file
        self._name = name

    def read(self, n: int = -1) -> bytes:
        try:
            return self._file.read(n)
        except OSError as exc:
            raise _dir_error(exc, f"cannot read {self._name}") from exc


class DirTarget(Target):
    """A folder on the panel's host (a mounted backup disk or share)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.root = Path(path)

    def __repr__(self) -> str:
        return f"DirTarget({str(self.root)!r})"

    def _path(self, name: str) -> Path:
        check_name(name)
        if not self.root.is_dir():
            raise TargetError(f"folder {self.root} does not exist", permanent=True)
        return self.root / name

    def free_bytes(self) -> int | None:
        try:
            stat = os.statvfs(self.root)
        except OSError as exc:
            raise _dir_error(exc, f"cannot read the free space of {self.root}") from exc
        # f_bavail: what an unprivileged writer may use, not the root reserve.
        return stat.f_bavail * stat.f_frsize

    @contextmanager
    def writer(self, name: str) -> Iterator[Writable]:
        final = self._path(name)
        part = final.with_name(final.name + ".part")
        try:
            final.parent.mkdir(exist_ok=True)
            file = open(part, "wb")
        except OSError as exc:
            raise _dir_error(exc, f"cannot create {name}") from exc
        try:
            try:
                yield _DirUpload(file, name)
                file.flush()  # buffered bytes can still hit a full disk here
                os.fsync(file.fileno())
            finally:
                file.close()
            os.replace(part, final)
            self._fsync_dir(final.parent)
        except BaseException as exc:
            part.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise _dir_error(exc, f"cannot write {name}") from exc
            raise

    @staticmethod
    def _fsync_dir(folder: Path) -> None:
        # The rename is only durable once the folder's entry is on disk.
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @contextmanager
    def reader(self, name: str) -> Iterator[Readable]:
        path = self._path(name)
        try:
            file = open(path, "rb")
        except FileNotFoundError as exc:
            raise TargetError(f"{name} is missing on the target {self.root}", permanent=True) from exc
        except OSError as exc:
            raise _dir_error(exc, f"cannot read {name}") from exc
        with file:
            yield _DirDownload(file, name)

    def size(self, name: str) -> int | None:
        path = self._path(name)
        try:
            return path.stat().st_size
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _dir_error(exc, f"cannot read the size of {name}") from exc

    def _delete_file(self, name: str) -> None:
        try:
            self._path(name).unlink(missing_ok=True)
        except OSError as exc:
            raise _dir_error(exc, f"cannot delete {name}") from exc

    def _delete_folder_if_empty(self, folder: str, name: str) -> None:
        try:
            (self.root / folder).rmdir()
        except OSError:
            pass  # not empty (or gone): fine either way


# --- an FTP or FTPS server


def _reply_code(exc: BaseException) -> str:
    return str(exc)[:3]


def _is_full_reply(exc: BaseException) -> bool:
    text = str(exc).lower()
    # 552/452 are the standard codes; many servers (pyftpdlib, vsftpd) send a 426 or 451 with
    # the OS error text instead.
    return _reply_code(exc) in ("452", "552") or "no space" in text or "quota" in text or "disk full" in text


class _FtpUpload:
    """The object an FtpTarget writer yields: sends to the STOR data connection."""

    def __init__(self, sock: socket.socket, on_error: Callable[[OSError], TargetError]):
        self.sock = sock
        self._on_error = on_error
        self.aborted = False

    def write(self, data: bytes) -> int:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            # Usually the server closed the data connection (e.g. its disk is full): the
            # reason is on the control connection.
            self.aborted = True
            raise self._on_error(exc) from None
        return len(data)


class _FtpDownload:
    """The object an FtpTarget reader yields: reads from the RETR data connection."""

    def __init__(self, sock: socket.socket, on_error: Callable[[OSError], TargetError]):
        self.sock = sock
        self._on_error = on_error
        self.eof = False

    def _recv(self, n: int) -> bytes:
        try:
            chunk = self.sock.recv(n)
        except OSError as exc:
            raise self._on_error(exc) from None
        if not chunk:
            self.eof = True
        return chunk

    def read(self, n: int = -1) -> bytes:
        if self.eof:
            return b""
        if n is None or n < 0:
            chunks = []
            while chunk := self._recv(1 << 16):
                chunks.append(chunk)
            return b"".join(chunks)
        # Fill up to n bytes like a file would, so callers can rely on short reads meaning EOF.
        buf = bytearray()
        while len(buf) < n and (chunk := self._recv(n - len(buf))):
            buf += chunk
        return bytes(buf)


def certificate_pin(der: bytes) -> str:
    """How an FTPS server's certificate is pinned: "x509 <base64 of the DER>", the shape of an
    SSH host key line, so `nodes.ssh.fingerprint` gives its SHA256 fingerprint."""
    return "x509 " + base64.b64encode(der).decode()


class FtpTarget(Target):
    """An FTP server, or with `tls` an explicit FTPS server (AUTH TLS, protected data).
    Passive mode, binary transfers. The server cannot report free space.

    FTPS pins the server's certificate like SFTP pins a host key: `host_key` is the pin
    (`certificate_pin`; "" on first contact: then `.host_key` holds the certificate seen, for
    the caller to save)."""

    def __init__(self, host: str, port: int | None, username: str, password: str, path: str = "", tls: bool = False,
                 host_key: str = ""):
        self.host = host
        self.port = port or 21
        self.username = username
        self._password = password
        self.path = path
        self.tls = tls
        self.host_key = host_key if tls else ""
        self._conn: ftplib.FTP | None = None

    def __repr__(self) -> str:
        # No credentials: this can end up in logs.
        return f"FtpTarget({self.host!r}, {self.port}, path={self.path!r}, tls={self.tls})"

    # -- errors

    def _clean(self, text: str) -> str:
        # Servers may echo what they were sent; never let the password reach a message.
        if self._password:
            text = text.replace(self._password, "***")
        return text

    def _error(self, exc: BaseException, action: str) -> TargetError:
        """Convert an ftplib/socket error raised while doing `action` to a TargetError."""
        detail = self._clean(str(exc).strip() or type(exc).__name__)
        if isinstance(exc, TargetError):
            return exc
        if isinstance(exc, (ftplib.error_perm, ftplib.error_temp)):
            if _is_full_reply(exc):
                return TargetError(f"the target is full: {action}: {detail}", permanent=True)
            if _reply_code(exc) == "530":
                return TargetError(f"FTP login refused by {self.host}:{self.port}: {detail}", permanent=True)
            # 5xx: the server said no (missing file, permission); 4xx: try later.
            return TargetError(f"{action}: {detail}", permanent=isinstance(exc, ftplib.error_perm))
        if isinstance(exc, (OSError, EOFError, ftplib.Error)):
            return TargetError(f"FTP connection to {self.host}:{self.port} lost: {action}: {detail}")
        return TargetError(f"{action}: {detail}")

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except (ftplib.Error, OSError, EOFError) as exc:
            if not isinstance(exc, ftplib.error_perm):
                self._drop()  # the connection state is unknown now
            raise self._error(exc, action) from None

    # -- connection

    def _check_certificate(self, sock: socket.socket) -> None:
        """Pin the server's certificate at first contact; refuse any other one afterwards."""
        der = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
        if not der:
            raise TargetError(f"the FTPS server {self.host}:{self.port} presented no certificate", permanent=True)
        seen = certificate_pin(der)
        if not self.host_key:
            self.host_key = seen
        elif seen != self.host_key:
            raise TargetError(f"the TLS certificate of {self.host}:{self.port} changed: pinned "
                              f"{fingerprint(self.host_key)}, offered {fingerprint(seen)}; "
                              "clear the pinned certificate to accept the new one", permanent=True)

    def _connect(self) -> ftplib.FTP:
        if self._conn is not None:
            return self._conn
        # ftplib's FTPS does not verify the certificate against CAs: backup boxes commonly use
        # self-signed ones. Instead the certificate is pinned at the first check and every
        # connection (control and data) must present that same one; the control connection's is
        # compared after AUTH TLS and before USER/PASS, so the password never reaches an impostor.
        conn = ftplib.FTP_TLS(timeout=FTP_TIMEOUT_SECONDS) if self.tls else ftplib.FTP(timeout=FTP_TIMEOUT_SECONDS)
        try:
            conn.connect(self.host, self.port)
        except (OSError, EOFError, ftplib.Error) as exc:
            conn.close()
            detail = str(exc) or type(exc).__name__
            raise TargetError(f"cannot reach FTP server {self.host}:{self.port}: {detail}") from None
        try:
            if self.tls:
                conn.auth()  # login() would send the password right after the handshake
                self._check_certificate(conn.sock)
            conn.login(self.username, self._password)  # FTP_TLS skips AUTH TLS when done already
            if self.tls:
                conn.prot_p()  # protect the data connections too, not just the login
            conn.set_pasv(True)
            if self.path:
                try:
                    conn.cwd(self.path)
                except ftplib.error_perm as exc:
                    raise TargetError(
                        f"folder {self.path} does not exist on the FTP server: {self._clean(str(exc))}", permanent=True
                    ) from None
        except TargetError:
            conn.close()
            raise
        except ssl.SSLError as exc:
            conn.close()
            # A TLS handshake that fails once (protocol or cipher mismatch) fails every time;
            # later on, an SSLError is just a dropped connection.
            raise TargetError(f"TLS with {self.host}:{self.port} failed: {exc}", permanent=True) from None
        except (OSError, EOFError, ftplib.Error) as exc:
            conn.close()
            raise self._error(exc, f"cannot log in to {self.host}:{self.port}") from None
        self._conn = conn
        return conn

    def _check_data_certificate(self, sock: socket.socket, abort: Callable[[], object]) -> None:
        """A data connection must present the pinned certificate too, or the files themselves
        could go to an impostor; `abort` ends the transfer when it does not."""
        if not self.tls:
            return
        try:
            self._check_certificate(sock)
        except TargetError:
            abort()
            raise

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                pass
            self._conn = None

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.quit()
            except (OSError, EOFError, ftplib.Error):
                pass
        self._drop()

    @staticmethod
    def _close_data(sock: socket.socket, clean: bool) -> None:
        # On TLS a clean end needs the close_notify, like ftplib's own storbinary does.
        if clean and isinstance(sock, ssl.SSLSocket):
            sock.unwrap()
        sock.close()

    def _mkd(self, folder: str) -> None:
        conn = self._connect()
        try:
            conn.mkd(folder)
        except ftplib.error_perm:
            pass  # usually "exists"; a real refusal shows up on STOR with a clear reply

    # -- the interface

    @contextmanager
    def writer(self, name: str) -> Iterator[Writable]:
        check_name(name)
        part = name + ".part"
        action = f"cannot store {name}"
        with self._errors(action):
            conn = self._connect()
            if folder := _folder_of(name):
                self._mkd(folder)
            conn.voidcmd("TYPE I")
            sock = conn.transfercmd(f"STOR {part}")
        self._check_data_certificate(sock, lambda: self._abort_upload(sock, part, None))
        upload = _FtpUpload(sock, lambda exc: self._abort_upload(sock, part, exc))
        try:
            yield upload
        except BaseException:
            if not upload.aborted:
                self._abort_upload(sock, part, None)
            raise
        try:
            with self._errors(action):
                self._close_data(sock, clean=True)
                conn.voidresp()
                self._rename(conn, part, name)
        except TargetError:
            self._abort_upload(None, part, None)
            raise

    def _abort_upload(self, sock: socket.socket | None, part: str, failure: OSError | None) -> TargetError:
        """Close the data connection, read the server's verdict and remove the partial file.
        Returns the TargetError for `failure` (the error that stopped the upload), preferring
        the server's own reason (e.g. its disk is full)."""
        action = f"cannot store {part.removesuffix('.part')}"
        error = self._error(failure, action) if failure is not None else None
        if sock is not None:
            try:
                sock.close()
                if self._conn is not None:
                    self._conn.voidresp()  # 226 (we stopped) or the reason the server stopped
            except (ftplib.Error, OSError, EOFError) as exc:
                error = self._error(exc, action)
                if not isinstance(exc, ftplib.error_perm):
                    self._drop()
        # Another connection if this one broke: a .part must not stay behind.
        for _ in range(2):
            try:
                self._delete_file(part)
                break
            except TargetError:
                self._drop()
        return error or TargetError(action)

    def _rename(self, conn: ftplib.FTP, source: str, name: str) -> None:
        try:
            conn.rename(source, name)
        except ftplib.error_perm:
            # Some servers refuse to rename over an existing file.
            self._delete_file(name)
            conn.rename(source, name)

    @contextmanager
    def reader(self, name: str) -> Iterator[Readable]:
        check_name(name)
        action = f"cannot read {name}"
        with self._errors(action):
            conn = self._connect()
            conn.voidcmd("TYPE I")
            try:
                sock = conn.transfercmd(f"RETR {name}")
            except ftplib.error_perm as exc:
                if _reply_code(exc) == "550":
                    where = f"{self.host}:{self.port}"
                    reply = self._clean(str(exc))
                    raise TargetError(f"{name} is missing on the target {where}: {reply}", permanent=True) from None
                raise
        self._check_data_certificate(sock, lambda: self._abort_download(sock))
        download = _FtpDownload(sock, lambda exc: self._error(exc, action))
        try:
            yield download
        except BaseException:
            self._abort_download(sock)
            raise
        if not download.eof:
            # The caller stopped early: the server's reply to the dropped connection varies.
            self._abort_download(sock)
            return
        with self._errors(action):
            self._close_data(sock, clean=True)
            conn.voidresp()

    def _abort_download(self, sock: socket.socket) -> None:
        try:
            sock.close()
            if self._conn is not None:
                self._conn.getresp()  # 426 or 226 - either way the control connection is in step
        except (ftplib.Error, OSError, EOFError):
            self._drop()  # out of step: start over next time

    def size(self, name: str) -> int | None:
        check_name(name)
        with self._errors(f"cannot read the size of {name}"):
            conn = self._connect()
            conn.voidcmd("TYPE I")  # SIZE in ASCII mode is refused or wrong
            try:
                return conn.size(name)
            except ftplib.error_perm as exc:
                if _reply_code(exc) == "550":
                    return None
                raise

    def _delete_file(self, name: str) -> None:
        with self._errors(f"cannot delete {name}"):
            conn = self._connect()
            try:
                conn.delete(name)
            except ftplib.error_perm as exc:
                if _reply_code(exc) != "550":  # 550: already gone
                    raise

    def _delete_folder_if_empty(self, folder: str, name: str) -> None:
        with self._errors(f"cannot delete {name}"):
            try:
                self._connect().rmd(folder)
            except ftplib.error_perm:
                pass  # not empty: fine

"""A real FTP(S) server on loopback for the backup tests: pyftpdlib in a thread of the test
process, one user ("backup") with a home folder, explicit FTPS with a self-signed certificate
when asked.

    server, stop = serve_ftp(home)                                  # plain FTP
    server, stop = serve_ftp(home, certfile=self_signed_cert(tmp))  # FTPS, TLS required
    pin_of(certfile)                                                # what a target pins for it
"""

import logging
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.exceptions import _FileReadWriteError
from pyftpdlib.filesystems import AbstractedFS
from pyftpdlib.handlers import DTPHandler, FTPHandler
from pyftpdlib.ioloop import IOLoop
from pyftpdlib.servers import ThreadedFTPServer

from backup.targets import FtpTarget, certificate_pin


@dataclass
class Ftpd:
    host: str
    port: int
    user: str
    password: str
    home: Path
    received: list[str] = field(default_factory=list)  # every command line the server got

    def target(self, **overrides) -> FtpTarget:
        args = dict(host=self.host, port=self.port, username=self.user, password=self.password, path="", tls=False)
        args.update(overrides)
        return FtpTarget(**args)


class UnbufferedFS(AbstractedFS):
    """pyftpdlib writes uploads through a buffered file: on a full disk the final flush raises
    inside its close() and it never answers the STOR (real servers send 452/552/426). Writing
    unbuffered makes it fail on write() and answer "426 No space left on device"."""

    def open(self, filename, mode):
        if "w" in mode or "a" in mode:
            return open(filename, mode, buffering=0)
        return super().open(filename, mode)


class ErrnoDTPHandler(DTPHandler):
    """pyftpdlib loses the errno of a failed file write and answers "426 None; transfer
    aborted."; answer with the OS error's text instead, as it means to (and proftpd does)."""

    def handle_error(self):
        exc = sys.exc_info()[1]
        cause = getattr(exc, "__cause__", None)
        if isinstance(exc, _FileReadWriteError) and isinstance(cause, OSError) and cause.errno:
            self._resp = (f"426 {os.strerror(cause.errno)}; transfer aborted.", logging.getLogger("pyftpdlib").warning)
            self.close()
        else:
            super().handle_error()


def serve_ftp(home: Path, certfile: Path | None = None, data_certfile: Path | None = None, port: int = 0):
    """Start pyftpdlib on a loopback port (a free one by default) serving `home` (explicit FTPS
    only when given a certificate; `data_certfile`: the data connections present another one);
    returns (Ftpd, stop)."""
    authorizer = DummyAuthorizer()
    authorizer.add_user("backup", "s3cret-Pa55word", str(home), perm="elradfmwMT")
    received: list[str] = []

    def pre_process_command(self, line, cmd, arg):
        received.append(line)
        return base.pre_process_command(self, line, cmd, arg)

    # A subclass per server: pyftpdlib keeps the authorizer on the handler class.
    # auth_failed_timeout: pyftpdlib waits 3 s after a wrong password; the test needs no pause.
    settings = {"authorizer": authorizer, "banner": "test ftpd", "abstracted_fs": UnbufferedFS,
                "pre_process_command": pre_process_command}
    settings["auth_failed_timeout"] = 0.1
    if certfile:
        from pyftpdlib.handlers import TLS_DTPHandler, TLS_FTPHandler

        base = TLS_FTPHandler
        settings.update(certfile=str(certfile), ssl_context=None, tls_control_required=True, tls_data_required=True)
        if data_certfile:
            other = type("Other", (TLS_FTPHandler,), {"certfile": str(data_certfile), "ssl_context": None})
            context = other.get_ssl_context()
            settings["dtp_handler"] = type("OtherCertDTP", (TLS_DTPHandler,), {
                "secure_connection": lambda self, _context: TLS_DTPHandler.secure_connection(self, context)})
    else:
        base = FTPHandler
        settings["dtp_handler"] = ErrnoDTPHandler
    handler = type("Handler", (base,), settings)
    # Its own IOLoop: on pyftpdlib's shared one, two servers at once would run (and close) each other's sockets.
    server = ThreadedFTPServer(("127.0.0.1", port), handler, ioloop=IOLoop())
    stop = threading.Event()

    def run():
        while not stop.is_set():
            server.serve_forever(timeout=0.05, blocking=False, handle_exit=False)
        server.close_all()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def shutdown():
        stop.set()
        thread.join(10)

    host, port = server.address
    return Ftpd(host, port, "backup", "s3cret-Pa55word", home, received), shutdown


def self_signed_cert(folder: Path, filename: str = "ftpd.pem") -> Path:
    """A PEM file with a self-signed certificate for 127.0.0.1 and its key."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    path = folder / filename
    path.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path


def pin_of(certfile: Path) -> str:
    """What a target pins for the server using `certfile`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(certfile.read_bytes())
    return certificate_pin(cert.public_bytes(serialization.Encoding.DER))

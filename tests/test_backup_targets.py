"""Backup targets: a folder on the panel's host and a real FTP server (pyftpdlib on loopback).

Both kinds must keep partial files out of sight, clean up after a failed write, report a full
disk as a permanent error and never leak the FTP password into a message.
"""

import ftplib
import os
import socket
import subprocess
from pathlib import Path

import pytest

from backup.connect import check_target, target_for
from backup.targets import CheckResult, DirTarget, FtpTarget, TargetError
from tests.ftpd_fixture import Ftpd, pin_of, self_signed_cert, serve_ftp

MIB = 1024 * 1024
NAME = "3f2a0c5e/000012-incremental.qcow2.zst"


@pytest.fixture
def ftpd(tmp_path):
    home = tmp_path / "ftp-home"
    home.mkdir()
    server, shutdown = serve_ftp(home)
    yield server
    shutdown()


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs: a target that fills up."""
    mountpoint = tmp_path / "small-disk"
    mountpoint.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mountpoint)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill up (needs root): {result.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False)


@pytest.fixture(params=["dir", "ftp"])
def target(request, tmp_path):
    """Each kind of target, empty."""
    if request.param == "dir":
        folder = tmp_path / "backups"
        folder.mkdir()
        store = DirTarget(folder)
        yield store
    else:
        store = request.getfixturevalue("ftpd").target()
        yield store
    store.close()


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_in_chunks(store, name: str, data: bytes, chunk: int = 64 * 1024) -> None:
    with store.writer(name) as out:
        for start in range(0, len(data), chunk):
            out.write(data[start : start + chunk])


def read_all(store, name: str) -> bytes:
    chunks = []
    with store.reader(name) as src:
        while chunk := src.read(100_000):
            chunks.append(chunk)
    return b"".join(chunks)


# --- both kinds


def test_it_stores_and_reads_back_a_file(target):
    data = os.urandom(3 * MIB)
    with target.writer(NAME) as out:
        for start in range(0, len(data), 256 * 1024):
            out.write(data[start : start + 256 * 1024])
            # Mid-write, only the .part exists: the final name never holds half a file.
            assert target.size(NAME) is None
        assert target.size(NAME + ".part") is not None
    assert target.size(NAME) == len(data)
    assert target.size(NAME + ".part") is None
    assert read_all(target, NAME) == data


def test_it_replaces_an_existing_file(target):
    write_in_chunks(target, NAME, b"old contents")
    write_in_chunks(target, NAME, b"new")
    assert read_all(target, NAME) == b"new"


def test_an_error_inside_the_writer_leaves_no_file_and_no_part(target):
    with pytest.raises(RuntimeError, match="source disk failed"):
        with target.writer(NAME) as out:
            out.write(os.urandom(MIB))
            raise RuntimeError("source disk failed")
    assert target.size(NAME) is None
    assert target.size(NAME + ".part") is None
    # The target still works afterwards (FTP: the control connection stayed in step).
    write_in_chunks(target, NAME, b"after")
    assert read_all(target, NAME) == b"after"


def test_delete_is_idempotent_and_removes_the_emptied_folder(target):
    write_in_chunks(target, NAME, b"data")
    target.delete(NAME)
    assert target.size(NAME) is None
    target.delete(NAME)
    target.delete("never/existed")


def test_size_of_a_missing_file_is_none(target):
    assert target.size("nothing-here.qcow2") is None
    assert target.size("no-folder/nothing-here.qcow2") is None


def test_reading_a_missing_file_is_a_permanent_error(target):
    with pytest.raises(TargetError, match="missing on the target") as info:
        with target.reader("nothing-here.qcow2"):
            pass
    assert info.value.permanent


def test_a_reader_stopped_early_leaves_the_target_usable(target):
    data = os.urandom(2 * MIB)
    write_in_chunks(target, NAME, data)
    with target.reader(NAME) as src:
        assert src.read(1000) == data[:1000]
    assert read_all(target, NAME) == data
    assert target.size(NAME) == len(data)


@pytest.mark.parametrize("name", ["../escape", "a/../../b", "/etc/passwd", "a/b/c", "", "bad\0name", "x\r\nDELE y"])
def test_both_kinds_refuse_names_that_escape_or_inject(target, name):
    with pytest.raises(ValueError):
        target.size(name)
    with pytest.raises(ValueError):
        with target.writer(name):
            pass


# --- a folder on the panel's host


@pytest.fixture
def folder(tmp_path):
    """An empty folder of its own (the shared conftest puts a template share in tmp_path)."""
    path = tmp_path / "backups"
    path.mkdir()
    return path


def test_dir_check_reports_free_space_and_leaves_no_probe(folder):
    result = DirTarget(folder).check()
    assert isinstance(result, CheckResult)
    assert result.free_bytes > 0
    assert list(folder.iterdir()) == []


def test_dir_refuses_names_with_dot_dot_or_absolute_names(folder):
    store = DirTarget(folder)
    for name in ("..", "../x", "a/..", "/tmp/x"):
        with pytest.raises(ValueError):
            store.size(name)
        with pytest.raises(ValueError):
            store.delete(name)


def test_dir_with_a_missing_folder_is_a_permanent_error(tmp_path):
    store = DirTarget(tmp_path / "not-mounted")
    with pytest.raises(TargetError, match="does not exist") as info:
        store.check()
    assert info.value.permanent
    assert not (tmp_path / "not-mounted").exists()


def test_dir_writes_the_final_file_only_at_the_end(folder):
    store = DirTarget(folder)
    with store.writer(NAME) as out:
        out.write(b"x" * 1000)
        assert files_under(folder) == [NAME + ".part"]
    assert files_under(folder) == [NAME]
    store.delete(NAME)
    assert list(folder.iterdir()) == []  # the emptied server folder went too


def test_a_full_dir_is_a_permanent_error_and_leaves_nothing(small_tmpfs):
    store = DirTarget(small_tmpfs)
    with pytest.raises(TargetError, match="the target is full") as info:
        write_in_chunks(store, NAME, os.urandom(2 * MIB))
    assert info.value.permanent
    assert files_under(small_tmpfs) == []


# --- an FTP server


def test_ftp_check_reports_no_free_space_and_leaves_no_probe(ftpd):
    with ftpd.target() as store:
        assert store.check() == CheckResult(free_bytes=None)
    assert list(ftpd.home.iterdir()) == []


def test_ftp_check_in_a_subfolder(ftpd):
    (ftpd.home / "backups").mkdir()
    with ftpd.target(path="/backups") as store:
        assert store.check().free_bytes is None
        write_in_chunks(store, NAME, b"data")
    assert files_under(ftpd.home) == ["backups/" + NAME]


def test_ftp_with_a_missing_folder_is_a_permanent_error(ftpd):
    with pytest.raises(TargetError, match="does not exist") as info:
        ftpd.target(path="/nowhere").check()
    assert info.value.permanent


def test_it_stores_and_reads_back_a_file_over_ftps(tmp_path):
    pytest.importorskip("OpenSSL", reason="pyftpdlib's FTPS server needs pyOpenSSL")
    home = tmp_path / "ftps-home"
    home.mkdir()
    server, shutdown = serve_ftp(home, certfile=self_signed_cert(tmp_path))
    try:
        data = os.urandom(MIB + 123)
        with server.target(tls=True) as store:
            assert store.check().free_bytes is None
            write_in_chunks(store, NAME, data)
            assert store.size(NAME) == len(data)
            assert read_all(store, NAME) == data
            with store.reader(NAME) as src:  # stopping early over TLS
                assert src.read(10) == data[:10]
            store.delete(NAME)
        assert files_under(home) == []
        # The server insists on TLS: a plain FTP login is refused.
        with pytest.raises(TargetError) as info:
            server.target(tls=False).check()
        assert info.value.permanent
    finally:
        shutdown()


@pytest.fixture
def ftps_servers(tmp_path):
    """Two FTPS servers with the same login, each with its own self-signed certificate: the
    real one and an impostor. Yields ((Ftpd, certfile), (Ftpd, certfile))."""
    pytest.importorskip("OpenSSL", reason="pyftpdlib's FTPS server needs pyOpenSSL")
    servers, stops = [], []
    for name in ("real", "impostor"):
        home = tmp_path / name
        home.mkdir()
        certfile = self_signed_cert(tmp_path, f"{name}.pem")
        server, stop = serve_ftp(home, certfile=certfile)
        servers.append((server, certfile))
        stops.append(stop)
    yield servers
    for stop in stops:
        stop()


def logins(server: Ftpd) -> list[str]:
    """The command lines that would carry the login to `server`."""
    return [line for line in server.received
            if line.split(" ")[0].upper() in ("USER", "PASS") or server.password in line]


def test_the_first_ftps_connection_pins_the_certificate_and_another_is_refused_before_the_password(ftps_servers):
    from nodes.hostkeys import fingerprint

    (real, real_cert), (impostor, impostor_cert) = ftps_servers
    with real.target(tls=True) as store:
        store.check()
    assert store.host_key == pin_of(real_cert)
    with real.target(tls=True, host_key=pin_of(real_cert)) as again:  # the pinned one: fine
        again.check()

    store = impostor.target(tls=True, host_key=pin_of(real_cert))
    with pytest.raises(TargetError, match="TLS certificate of 127.0.0.1:.* changed") as info:
        store.check()
    message = str(info.value)
    assert info.value.permanent
    assert fingerprint(pin_of(real_cert)) in message and fingerprint(pin_of(impostor_cert)) in message
    assert fingerprint(pin_of(real_cert)) != fingerprint(pin_of(impostor_cert))
    assert "clear the pinned certificate" in message
    assert store.host_key == pin_of(real_cert)  # never re-pinned by itself
    # The impostor got as far as AUTH TLS, never the user name or the password.
    assert [line.upper() for line in impostor.received] == ["AUTH TLS"]
    assert logins(impostor) == []


def test_an_ftps_data_connection_with_another_certificate_is_refused(tmp_path):
    pytest.importorskip("OpenSSL", reason="pyftpdlib's FTPS server needs pyOpenSSL")
    home = tmp_path / "ftps-home"
    home.mkdir()
    certfile = self_signed_cert(tmp_path)
    (home / "old.bin").write_bytes(b"an old backup")
    server, shutdown = serve_ftp(home, certfile=certfile, data_certfile=self_signed_cert(tmp_path, "data.pem"))
    try:
        with server.target(tls=True, host_key=pin_of(certfile)) as store:
            with pytest.raises(TargetError, match="certificate .* changed") as info:
                write_in_chunks(store, NAME, b"secret backup data")
            assert info.value.permanent
            with pytest.raises(TargetError, match="certificate .* changed"):
                read_all(store, "old.bin")
            assert store.size("old.bin") == 13  # the control connection is still fine
        assert files_under(home) == ["old.bin"]  # no file, no .part left behind
    finally:
        shutdown()


def ftps_row(server: Ftpd, **fields):
    from backup.models import BackupTarget
    from panel.crypto import encrypt

    values = dict(name="offsite", kind=BackupTarget.Kind.FTPS, host=server.host, port=server.port,
                  username=server.user, password=encrypt(server.password))
    return BackupTarget.objects.create(**{**values, **fields})


@pytest.mark.django_db
def test_check_target_pins_the_ftps_certificate_and_refuses_an_impostor_on_the_same_target(ftps_servers):
    from nodes.hostkeys import fingerprint

    (real, real_cert), (impostor, impostor_cert) = ftps_servers
    row = ftps_row(real)
    assert check_target(row) == ""
    row.refresh_from_db()
    assert row.host_key == pin_of(real_cert) and row.check_error == ""
    store = target_for(row)
    assert store.host_key == pin_of(real_cert)  # backups, restores and retention compare it too

    row.port = impostor.port  # the same target, answered by someone else
    row.save(update_fields=["port"])
    error = check_target(row)
    assert "certificate" in error and fingerprint(pin_of(real_cert)) in error
    assert fingerprint(pin_of(impostor_cert)) in error
    row.refresh_from_db()
    assert row.host_key == pin_of(real_cert) and row.check_error == error
    assert logins(impostor) == []


@pytest.mark.django_db
def test_an_ssh_host_key_left_from_an_sftp_target_is_no_pin_for_ftps(ftps_servers):
    (real, real_cert), _impostor = ftps_servers
    row = ftps_row(real)
    row.host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBmBHJ+ksd3jMdwV5eZp0h8H0k9+4cdqE2J0nSwQ0fXz"  # it was SFTP
    row.save(update_fields=["host_key"])
    assert check_target(row) == ""
    row.refresh_from_db()
    assert row.host_key == pin_of(real_cert)


@pytest.mark.django_db
def test_the_api_shows_the_ftps_certificate_and_clearing_it_pins_the_new_one(world, ftps_servers):
    from backup.models import BackupTarget
    from nodes.hostkeys import fingerprint

    (real, real_cert), (impostor, impostor_cert) = ftps_servers
    admin = world.client(world.admin_key)
    r = admin.post("/api/v1/backup-targets/", {"name": "offsite", "kind": "ftps", "host": real.host,
                                               "port": real.port, "username": real.user,
                                               "password": real.password}, format="json")
    assert r.status_code == 201, r.json()
    body = r.json()
    assert body["host_key_fingerprint"] == fingerprint(pin_of(real_cert)) and body["check_error"] == ""

    # Moving the target to a server with another certificate fails its check and is not saved...
    r = admin.patch(f"/api/v1/backup-targets/{body['id']}/", {"port": impostor.port}, format="json")
    assert r.status_code == 400 and r.json()["code"] == "target_check_failed"
    assert fingerprint(pin_of(impostor_cert)) in r.json()["detail"]
    row = BackupTarget.objects.get(pk=body["id"])
    assert row.port == real.port and row.host_key == pin_of(real_cert)
    assert logins(impostor) == []
    # ...unless the admin clears the pin: the next check pins the new certificate.
    r = admin.patch(f"/api/v1/backup-targets/{body['id']}/", {"port": impostor.port, "host_key": ""}, format="json")
    assert r.status_code == 200, r.json()
    assert r.json()["host_key_fingerprint"] == fingerprint(pin_of(impostor_cert))
    assert BackupTarget.objects.get(pk=body["id"]).host_key == pin_of(impostor_cert)
    assert logins(impostor)  # now it may log in


def test_a_refused_ftp_login_is_permanent_and_hides_the_password(ftpd):
    store = ftpd.target(password="wrong-Pa55word-123")
    with pytest.raises(TargetError, match="FTP login refused") as info:
        store.check()
    assert info.value.permanent
    assert "wrong-Pa55word-123" not in str(info.value)
    assert "wrong-Pa55word-123" not in repr(store)


def test_an_unreachable_ftp_server_is_a_retryable_error():
    store = FtpTarget("127.0.0.1", closed_port(), "backup", "s3cret-Pa55word", "", tls=False)
    with pytest.raises(TargetError, match="cannot reach FTP server 127.0.0.1") as info:
        store.check()
    assert not info.value.permanent
    assert "s3cret-Pa55word" not in str(info.value)


def test_a_full_ftp_server_is_a_permanent_error_and_leaves_nothing(small_tmpfs):
    server, shutdown = serve_ftp(small_tmpfs)
    try:
        with server.target() as store:
            with pytest.raises(TargetError, match="the target is full") as info:
                write_in_chunks(store, NAME, os.urandom(2 * MIB))
            assert info.value.permanent
            assert "s3cret-Pa55word" not in str(info.value)
        assert files_under(small_tmpfs) == []
    finally:
        shutdown()


def test_the_ftp_writer_reconnects_after_the_server_dropped_it(ftpd):
    store = ftpd.target()
    write_in_chunks(store, "a.bin", b"first")
    store._conn.sock.shutdown(socket.SHUT_RDWR)  # the connection died between two backups
    with pytest.raises(TargetError) as info:
        store.size("a.bin")
    assert not info.value.permanent
    assert store.size("a.bin") == 5
    store.close()


@pytest.mark.parametrize(
    "reply",
    [ftplib.error_perm("552 Quota exceeded"), ftplib.error_temp("452 Insufficient storage"),
     ftplib.error_temp("426 No space left on device; transfer aborted.")],
)
def test_ftp_replies_that_mean_full_are_permanent(reply):
    error = FtpTarget("ftp.example.com", 21, "u", "p", "")._error(reply, "cannot store x")
    assert error.permanent
    assert str(error).startswith("the target is full: ")


def test_other_ftp_replies_are_classified_by_their_code():
    store = FtpTarget("ftp.example.com", 21, "u", "pw-secret", "")
    assert store._error(ftplib.error_perm("550 Permission denied"), "cannot store x").permanent
    assert not store._error(ftplib.error_temp("421 Too many connections"), "cannot store x").permanent
    assert not store._error(ConnectionResetError(104, "Connection reset by peer"), "cannot store x").permanent
    assert "pw-secret" not in str(store._error(ftplib.error_perm("530 bad login pw-secret"), "login"))


# --- from the database


@pytest.mark.django_db
def test_check_target_stores_the_error_of_an_unreachable_ftp_server():
    from backup.models import BackupTarget
    from panel.crypto import encrypt

    row = BackupTarget.objects.create(
        name="offsite",
        kind=BackupTarget.Kind.FTP,
        host="127.0.0.1",
        port=closed_port(),
        username="backup",
        password=encrypt("s3cret-Pa55word"),
        free_bytes=123,
    )
    error = check_target(row)
    row.refresh_from_db()
    assert error.startswith("cannot reach FTP server")
    assert row.check_error == error
    assert row.checked_at is not None
    assert row.free_bytes is None
    assert "s3cret-Pa55word" not in error


@pytest.mark.django_db
def test_check_target_clears_the_error_of_a_good_folder(folder):
    from backup.models import BackupTarget

    row = BackupTarget.objects.create(name="local", kind=BackupTarget.Kind.DIR, path=str(folder), check_error="old")
    assert check_target(row) == ""
    row.refresh_from_db()
    assert row.check_error == ""
    assert row.free_bytes > 0
    assert row.checked_at is not None


@pytest.mark.django_db
def test_target_for_decrypts_the_stored_password(ftpd):
    from backup.models import BackupTarget
    from panel.crypto import encrypt

    row = BackupTarget.objects.create(
        name="ftp",
        kind=BackupTarget.Kind.FTP,
        host=ftpd.host,
        port=ftpd.port,
        username=ftpd.user,
        password=encrypt(ftpd.password),
    )
    assert row.password != ftpd.password
    store = target_for(row)
    assert isinstance(store, FtpTarget) and not store.tls
    assert check_target(row) == ""
    row.refresh_from_db()
    assert row.check_error == "" and row.free_bytes is None
    assert row.host_key == ""  # plain FTP has no certificate to pin


def test_plain_ftp_ignores_a_pin(ftpd):
    with ftpd.target(host_key="x509 AAAA") as store:  # e.g. left over from the target's FTPS days
        assert store.check().free_bytes is None
    assert store.host_key == ""


def test_target_for_builds_the_right_kind(tmp_path):
    from backup.models import BackupTarget

    assert isinstance(target_for(BackupTarget(kind=BackupTarget.Kind.DIR, path=str(tmp_path))), DirTarget)
    ftps = target_for(BackupTarget(kind=BackupTarget.Kind.FTPS, host="ftp.example.com", port=None))
    assert isinstance(ftps, FtpTarget) and ftps.tls and ftps.port == 21

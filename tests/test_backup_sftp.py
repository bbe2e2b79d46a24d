"""The SFTP backup target against a real OpenSSH server: a private sshd on a loopback port with
a temporary host key, logging in as the current user with the panel's own key.

Like the other targets it must keep partial files out of sight, clean up after a failed write,
tell permanent from passing failures and never leak the password; it also pins the host key.
"""

import os
import shutil

import paramiko
import pytest

import backup.sftp
from backup.models import BackupTarget
from backup.sftp import SftpTarget
from backup.connect import check_target, target_for
from backup.targets import TargetError
from nodes.hostkeys import fingerprint
from nodes.ssh import key_line, panel_identity
from tests.sshd_fixture import SSHD, PrivateSshd, SshdError, free_port

MIB = 1024 * 1024
NAME = "3f2a0c5e/000012-full.qcow2.zst"

pytestmark = [pytest.mark.django_db,
              pytest.mark.skipif(not os.path.exists(SSHD), reason=f"{SSHD} is missing (openssh-server)")]


class Sshd(PrivateSshd):
    def target(self, path, **overrides) -> SftpTarget:
        args = dict(host="127.0.0.1", port=self.port, username=self.user, password="", path=str(path), host_key="")
        return SftpTarget(**{**args, **overrides})


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A private sshd (its own config, host key and authorized_keys) on a free loopback port."""
    try:
        server = Sshd(tmp_path_factory.mktemp("sshd"))
    except SshdError as exc:
        pytest.fail(str(exc))
    yield server
    server.stop()


@pytest.fixture
def server(sshd, db):
    """The sshd, letting this test's panel key (a new one per test database) log in."""
    sshd.authorized_keys.write_text(panel_identity()[1] + "\n")
    return sshd


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / "backups"
    path.mkdir()
    return path


def other_host_key() -> str:
    return key_line(paramiko.ECDSAKey.generate())


# --- the file operations


def test_a_5_mib_file_round_trips_through_a_subfolder(server, folder):
    data = os.urandom(5 * MIB)
    with server.target(folder) as store:
        with store.writer(NAME) as out:
            for i in range(0, len(data), 300_000):  # odd chunks: not aligned to SFTP requests
                out.write(data[i:i + 300_000])
        assert (folder / NAME).read_bytes() == data
        assert store.size(NAME) == len(data)
        with store.reader(NAME) as src:
            chunks = []
            while chunk := src.read(1 << 20):
                chunks.append(chunk)
        assert b"".join(chunks) == data
        store.delete(NAME)
        assert store.size(NAME) is None
        assert not (folder / NAME).parent.exists()  # the emptied folder goes too
        store.delete(NAME)  # missing: fine


def test_the_file_appears_only_when_the_writer_exits_cleanly(server, folder):
    final = folder / NAME
    part = final.with_name(final.name + ".part")
    with server.target(folder) as store:
        with store.writer(NAME) as out:
            out.write(b"x" * 100_000)
            assert part.exists() and not final.exists()
        assert final.read_bytes() == b"x" * 100_000 and not part.exists()
        with store.writer(NAME) as out:  # an existing file is replaced
            out.write(b"new")
        assert final.read_bytes() == b"new"


def test_an_error_inside_the_writer_leaves_no_file(server, folder):
    with server.target(folder) as store:
        with pytest.raises(RuntimeError):
            with store.writer(NAME) as out:
                out.write(b"y" * MIB)
                raise RuntimeError("the disk read failed")
        assert store.size(NAME) is None
        assert list((folder / "3f2a0c5e").iterdir()) == []


def test_a_missing_file_reads_as_a_permanent_error(server, folder):
    with server.target(folder) as store:
        with pytest.raises(TargetError) as caught:
            with store.reader("nothing-here"):
                pass
        assert caught.value.permanent and "missing" in str(caught.value)


def test_free_space_comes_from_statvfs_or_else_from_df(server, folder, monkeypatch):
    expected = shutil.disk_usage(folder).free
    with server.target(folder) as store:
        free = store.free_bytes()
        assert free is not None and abs(free - expected) < 64 * MIB
        monkeypatch.setattr(backup.sftp, "CMD_EXTENDED_REPLY", -1)  # as if the extension answered nothing usable
        calls = []
        real_run = store._shell.run
        monkeypatch.setattr(store._shell, "run", lambda argv, **kw: calls.append(argv) or real_run(argv, **kw))
        free = store.free_bytes()
        assert calls and calls[0][:3] == ["df", "-PB1", "--"]
        assert free is not None and abs(free - expected) < 64 * MIB


# --- the host key


def test_the_first_connection_pins_the_host_key_and_another_key_is_refused(server, folder):
    store = server.target(folder)
    assert store.check().free_bytes
    store.close()
    assert store.host_key == server.host_key

    with server.target(folder, host_key=server.host_key) as again:  # the pinned key: fine
        assert again.size("nothing") is None

    pinned = other_host_key()
    with pytest.raises(TargetError) as caught:
        with server.target(folder, host_key=pinned) as impostor:
            impostor.size("nothing")
    assert caught.value.permanent
    assert fingerprint(pinned) in str(caught.value) and fingerprint(server.host_key) in str(caught.value)


# --- failures


def test_a_wrong_password_is_permanent_and_not_in_the_message(server, folder):
    password = "Wr0ng-Pa55word-xyz"
    with pytest.raises(TargetError) as caught:
        server.target(folder, password=password).check()
    assert caught.value.permanent
    assert "refused" in str(caught.value) and password not in str(caught.value)
    assert password not in repr(server.target(folder, password=password))


def test_an_unreachable_port_is_worth_a_retry(server, folder):
    with pytest.raises(TargetError) as caught:
        server.target(folder, port=free_port()).check()
    assert not caught.value.permanent


def test_a_missing_folder_is_permanent(server, folder):
    with pytest.raises(TargetError) as caught:
        server.target(folder / "nope").check()
    assert caught.value.permanent and "does not exist" in str(caught.value)


def test_a_dropped_connection_is_worth_a_retry_and_the_next_call_reconnects(server, folder):
    with server.target(folder) as store:
        assert store.size("nothing") is None
        store._shell.client.get_transport().close()  # the server went away mid-session
        with pytest.raises(TargetError) as caught:
            store.size("nothing")
        assert not caught.value.permanent
        assert store.size("nothing") is None  # reconnected


def test_bad_names_are_refused_before_any_connection(sshd, folder):
    store = sshd.target(folder, port=free_port())
    for name in ("../escape", "/abs", "a/b/c"):
        with pytest.raises(ValueError):
            store.size(name)


# --- from the database and the API


def row(server, folder, **fields) -> BackupTarget:
    values = dict(name="backup-box", kind="sftp", host="127.0.0.1", port=server.port, username=server.user,
                  path=str(folder))
    return BackupTarget.objects.create(**{**values, **fields})


def test_check_target_saves_the_pinned_host_key(server, folder):
    target = row(server, folder)
    assert isinstance(target_for(target), SftpTarget)
    assert check_target(target) == ""
    target.refresh_from_db()
    assert target.host_key == server.host_key and target.checked_at and target.free_bytes

    BackupTarget.objects.filter(pk=target.pk).update(host_key=other_host_key())
    target.refresh_from_db()
    error = check_target(target)
    assert "host key" in error and fingerprint(server.host_key) in error
    target.refresh_from_db()
    assert target.host_key != server.host_key  # a changed key is never pinned by itself


def test_the_api_creates_an_sftp_target_and_shows_its_fingerprint(world, server, folder):
    admin = world.client(world.admin_key)
    r = admin.post("/api/v1/backup-targets/", {"name": "box", "kind": "sftp", "host": "127.0.0.1", "port": server.port,
                                               "username": server.user, "path": str(folder)}, format="json")
    assert r.status_code == 201, r.json()
    body = r.json()
    assert body["host_key"] == server.host_key and body["check_error"] == ""
    assert body["host_key_fingerprint"] == fingerprint(server.host_key)
    assert "password" not in body

    r = admin.patch(f"/api/v1/backup-targets/{body['id']}/", {"host_key": "ssh-ed25519 AAAA"}, format="json")
    assert r.status_code == 400 and BackupTarget.objects.get(pk=body["id"]).host_key == server.host_key
    BackupTarget.objects.filter(pk=body["id"]).update(host_key=other_host_key())
    r = admin.patch(f"/api/v1/backup-targets/{body['id']}/", {"host_key": ""}, format="json")  # accept the new key
    assert r.status_code == 200, r.json()
    assert r.json()["host_key_fingerprint"] == fingerprint(server.host_key)


def test_the_targets_page_shows_the_pinned_fingerprint(world, server, folder, client):
    target = row(server, folder, host_key=server.host_key)
    client.force_login(world.admin)
    page = client.get("/admin/backups/")
    assert page.status_code == 200
    assert fingerprint(target.host_key) in page.content.decode()

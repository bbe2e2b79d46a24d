"""The panel's own backup (backup/panel_state.py) and `manage.py backup_panel` / `restore_panel`."""

import io
import json
import stat
import tarfile
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from backup import panel_state
from panel import crypto
from panel.accounts.models import ApiKey, Customer
from panel.vps.models import VirtualServer

KEY = "the-admins-backup-key"


@pytest.fixture(autouse=True)
def _own_data_dir(settings, tmp_path, monkeypatch):
    """Each test's data folder is its own, and the keys come from there, never from the environment."""
    settings.DATA_DIR = tmp_path / "data"
    if hasattr(settings, "PANEL_BACKUP_KEY"):
        settings.PANEL_BACKUP_KEY = ""
    for var in ("CREDENTIALS_KEY", "SECRET_KEY", "PANEL_INSTANCE_ID", "PANEL_BACKUP_KEY"):
        monkeypatch.delenv(var, raising=False)
    settings.CREDENTIALS_KEY = "old-credentials-key"
    settings.SECRET_KEY = "old-secret-key-" + "x" * 40
    settings.PANEL_INSTANCE_ID = "oldid1"
    crypto._fernet.cache_clear()
    yield
    # restore() sets the key in-process; the settings fixture undoes that, this the cache.
    crypto._fernet.cache_clear()


@pytest.fixture
def alice_server(world):
    """A server of Alice's, made directly: the backup is about rows, not how they came to be."""
    from templates_os.models import OsTemplate

    return VirtualServer.objects.create(customer=world.alice_customer, plan=world.plan, node=world.node,
                                        hostname="alice-web", state="running", vcpus=1, ram_mib=256, disk_gib=1,
                                        os_template=OsTemplate.objects.filter(slug="tiny").first())


def write_backup(path: Path, key: str = KEY) -> dict:
    with open(path, "wb") as out:
        return panel_state.dump(out, key)


def table_snapshot() -> dict:
    return {"customers": sorted(Customer.objects.values_list("name", flat=True)),
            "servers": sorted(VirtualServer.objects.values_list("hostname", flat=True)),
            "keys": ApiKey.objects.count()}


def fresh_install(settings, tmp_path) -> None:
    """What a new machine looks like: an empty (migrated) database, other keys, another data folder."""
    call_command("flush", interactive=False, verbosity=0)
    settings.DATA_DIR = tmp_path / "new-data"
    settings.CREDENTIALS_KEY = "a-different-credentials-key"
    settings.SECRET_KEY = "a-different-secret-key-" + "y" * 40
    settings.PANEL_INSTANCE_ID = "newid2"
    crypto._fernet.cache_clear()


@pytest.mark.django_db(transaction=True)
def test_restore_brings_a_fresh_install_back(world, alice_server, settings, tmp_path):
    from backup.models import BackupTarget
    from nodes.ssh import panel_identity

    _private, public_line = panel_identity()
    target = BackupTarget.objects.create(name="ftp", kind="ftp", host="ftp.example.net", username="u",
                                         password=crypto.encrypt("ftp-secret"))
    before = {"customers": sorted(Customer.objects.values_list("name", "external_id")),
              "server": (str(alice_server.uuid), alice_server.hostname, alice_server.customer_id)}
    backup = tmp_path / "panel.bak"
    manifest = write_backup(backup)
    assert manifest["counts"]["accounts.customer"] == 2 and manifest["counts"]["vps.virtualserver"] == 1

    fresh_install(settings, tmp_path)
    assert not Customer.objects.exists()
    Customer.objects.create(name="Made on the new install")  # must not survive the restore
    out = io.StringIO()
    call_command("restore_panel", str(backup), "--key", KEY, "--yes", stdout=out)

    text = out.getvalue()
    assert "customers: 2" in text and "servers: 1" in text and "nodes: 1" in text and "API keys: 4" in text
    assert "Restart the panel" in text and "old-credentials-key" not in text
    assert sorted(Customer.objects.values_list("name", "external_id")) == before["customers"]
    server = VirtualServer.objects.get()
    assert (str(server.uuid), server.hostname, server.customer_id) == before["server"]
    assert server.customer.name == "Alice Ltd"

    # API keys are stored hashed: the raw keys the billing system holds still work.
    listed = world.client(world.alice_key).get("/api/v1/servers/")
    assert listed.status_code == 200, listed.content
    assert [s["uuid"] for s in listed.json()["results"]] == [before["server"][0]]
    assert world.client(world.bob_key).get("/api/v1/servers/").json()["results"] == []

    # The credentials encrypted under the old key decrypt in this process at once...
    assert settings.CREDENTIALS_KEY == "old-credentials-key"
    assert panel_identity()[1] == public_line
    assert crypto.decrypt(BackupTarget.objects.get(pk=target.pk).password) == "ftp-secret"
    # ...and after a restart, from the key files the restore wrote.
    data = tmp_path / "new-data"
    expected = {"credentials_key": "old-credentials-key", "secret_key": "old-secret-key-" + "x" * 40,
                "instance_id": "oldid1", "backup_key": KEY}
    for name, value in expected.items():
        assert (data / name).read_text() == value, name
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name

    # New rows get fresh ids after a restore with explicit primary keys.
    newcomer = Customer.objects.create(name="After restore")
    assert newcomer.pk > max(Customer.objects.exclude(pk=newcomer.pk).values_list("pk", flat=True))


@pytest.mark.django_db(transaction=True)
def test_an_environment_key_is_not_overwritten_but_warned_about(world, settings, tmp_path, monkeypatch):
    backup = tmp_path / "panel.bak"
    write_backup(backup)
    fresh_install(settings, tmp_path)
    monkeypatch.setenv("CREDENTIALS_KEY", "env-credentials-key")
    with open(backup, "rb") as inp:
        result = panel_state.restore(inp, KEY)
    assert result["counts"]["accounts.customer"] == 2
    [warning] = result["warnings"]
    assert "CREDENTIALS_KEY" in warning and "old-credentials-key" not in warning
    data = tmp_path / "new-data"
    assert not (data / "credentials_key").exists()
    assert (data / "secret_key").read_text() == "old-secret-key-" + "x" * 40


def marker_world(world) -> dict:
    Customer.objects.create(name="Marker")
    return table_snapshot()


@pytest.mark.django_db
def test_a_wrong_key_changes_nothing(world, tmp_path):
    backup = tmp_path / "panel.bak"
    write_backup(backup)
    before = marker_world(world)
    with pytest.raises(CommandError, match="wrong backup key"):
        call_command("restore_panel", str(backup), "--key", "not-the-key", "--yes")
    assert table_snapshot() == before and "Marker" in before["customers"]
    assert not (tmp_path / "data" / "credentials_key").exists()


@pytest.mark.django_db
def test_a_damaged_file_changes_nothing(world, tmp_path):
    backup = tmp_path / "panel.bak"
    write_backup(backup)
    raw = bytearray(backup.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    backup.write_bytes(bytes(raw))
    before = marker_world(world)
    with pytest.raises(CommandError, match="damaged"):
        call_command("restore_panel", str(backup), "--key", KEY, "--yes")
    assert table_snapshot() == before


@pytest.mark.django_db
@pytest.mark.parametrize("content", [b"", b"hello, world\n", b"PANELBACKUP2\n" + b"x" * 100])
def test_a_file_that_is_no_panel_backup_is_refused(world, tmp_path, content):
    bogus = tmp_path / "bogus.bak"
    bogus.write_bytes(content)
    before = table_snapshot()
    with pytest.raises(CommandError, match="not a panel backup"):
        call_command("restore_panel", str(bogus), "--key", KEY, "--yes")
    assert table_snapshot() == before


@pytest.mark.django_db
def test_a_missing_file_is_a_clear_error(db, tmp_path):
    with pytest.raises(CommandError, match="cannot read"):
        call_command("restore_panel", str(tmp_path / "nope.bak"), "--key", KEY, "--yes")


@pytest.mark.django_db
def test_without_any_key_it_says_how_to_give_one(db, tmp_path):
    backup = tmp_path / "panel.bak"
    backup.write_bytes(panel_state.MAGIC)
    with pytest.raises(CommandError, match="--key"):
        call_command("restore_panel", str(backup), "--yes")
    assert not (tmp_path / "data" / "backup_key").exists()  # no key invented on restore


@pytest.mark.django_db
def test_a_backup_of_a_newer_panel_is_refused(world, tmp_path):
    with io.BytesIO() as buffer:
        panel_state.dump(buffer, KEY)
        buffer.seek(0)
        manifest, db_json, keys = panel_state.read(buffer, KEY)
    manifest["django_migrations"]["vps"] = "9999_from_the_future"
    newer = tmp_path / "newer.bak"
    newer.write_bytes(panel_state.pack(manifest, db_json, keys, KEY))
    before = marker_world(world)
    with pytest.raises(CommandError, match="newer panel version; upgrade first"):
        call_command("restore_panel", str(newer), "--key", KEY, "--yes")
    with open(newer, "rb") as inp, pytest.raises(panel_state.PanelBackupError, match="newer panel version"):
        panel_state.restore(inp, KEY)
    assert table_snapshot() == before


@pytest.mark.django_db
def test_data_that_does_not_load_is_rolled_back(world, tmp_path):
    buffer = io.BytesIO()
    panel_state.dump(buffer, KEY)
    manifest, db_json, keys = panel_state.read(io.BytesIO(buffer.getvalue()), KEY)
    rows = json.loads(db_json)
    server = {"model": "vps.virtualserver", "pk": 999, "fields": {
        "uuid": "6f1c3c1e-0000-4000-8000-00000000abcd", "customer": 987654, "plan": world.plan.pk,
        "hostname": "orphan", "state": "running", "vnc_password": "", "vcpus": 1, "ram_mib": 1, "disk_gib": 1,
        "created_at": "2024-01-01T00:00:00Z", "updated_at": "2024-01-01T00:00:00Z"}}
    broken = panel_state.pack(manifest, json.dumps(rows + [server]).encode(), keys, KEY)
    before = marker_world(world)
    with pytest.raises(panel_state.PanelBackupError, match="does not load"):
        panel_state.restore(io.BytesIO(broken), KEY)
    assert table_snapshot() == before
    assert not (tmp_path / "data" / "credentials_key").exists()


@pytest.mark.django_db
def test_the_archive_holds_the_data_keys_and_manifest_but_no_transient_tables(world, alice_server, settings):
    buffer = io.BytesIO()
    manifest = panel_state.dump(buffer, KEY)
    raw = buffer.getvalue()
    assert raw.startswith(panel_state.MAGIC) and b"Alice" not in raw  # encrypted

    token = raw[len(panel_state.MAGIC):]
    with tarfile.open(fileobj=io.BytesIO(panel_state._fernet(KEY).decrypt(token)), mode="r:gz") as tar:
        names = set(tar.getnames())
        rows = json.loads(tar.extractfile("db.json").read())
    assert names == {"manifest.json", "db.json", "keys/credentials_key", "keys/secret_key", "keys/instance_id"}
    models = {row["model"] for row in rows}
    assert {"accounts.customer", "accounts.user", "accounts.apikey", "vps.virtualserver", "nodes.node"} <= models
    assert not {m for m in models if m.split(".")[0] in ("contenttypes", "sessions", "django_q")}
    assert "auth.permission" not in models

    assert manifest["format"] == 1 and manifest["created_at"]
    assert manifest["django_migrations"]["vps"] and "django_q" in manifest["django_migrations"]
    assert sum(manifest["counts"].values()) == len(rows)
    parsed, db_json, keys = panel_state.read(io.BytesIO(raw), KEY)
    assert parsed == manifest and json.loads(db_json) == rows
    assert keys == {"credentials_key": "old-credentials-key", "secret_key": settings.SECRET_KEY,
                    "instance_id": "oldid1"}


@pytest.mark.django_db
def test_backup_panel_writes_a_private_file_with_the_generated_key(world, tmp_path):
    target = tmp_path / "by-hand.bak"
    out = io.StringIO()
    call_command("backup_panel", str(target), stdout=out)
    assert "accounts.customer: 2" in out.getvalue() and "keep a copy" in out.getvalue()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    key = (tmp_path / "data" / "backup_key").read_text()
    with open(target, "rb") as inp:
        manifest, _db, _keys = panel_state.read(inp, key)
    assert manifest["counts"]["accounts.customer"] == 2
    assert not list(tmp_path.glob(".*partial"))

    call_command("backup_panel", str(target), "--key", KEY, stdout=io.StringIO())
    with open(target, "rb") as inp:
        assert panel_state.read(inp, KEY)[0]["counts"]["accounts.apikey"] == 4


def test_the_backup_key_is_generated_once_private_and_reused(settings, tmp_path):
    path = tmp_path / "data" / "backup_key"
    assert panel_state.backup_key(create=False) == "" and not path.exists()
    first = panel_state.backup_key()
    assert len(first) >= 40 and path.read_text() == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert panel_state.backup_key() == first == panel_state.backup_key(create=False)
    settings.PANEL_BACKUP_KEY = "from-settings"
    assert panel_state.backup_key() == "from-settings"
    assert path.read_text() == first


@pytest.mark.django_db
def test_without_yes_it_asks_and_anything_but_restore_stops_it(world, tmp_path, monkeypatch):
    backup = tmp_path / "panel.bak"
    write_backup(backup)
    before = marker_world(world)
    monkeypatch.setattr("sys.stdin", io.StringIO("yes\n"))
    out = io.StringIO()
    with pytest.raises(CommandError, match="not restored"):
        call_command("restore_panel", str(backup), "--key", KEY, stdout=out)
    assert "This replaces everything in the database at" in out.getvalue() and "Type 'restore'" in out.getvalue()
    assert table_snapshot() == before

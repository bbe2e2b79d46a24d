"""The ISO library and boot media (panel/images/isos.py) on MariaDB and the fake driver: uploads
streamed to the share and refused when they are not ISOs, over quota or truncated (nothing left
behind); attach, rescue and back, with the domain definition restored exactly. The real boots
are tests/e2e/test_isos.py."""

import hashlib

import pytest

from nodes.connection import driver_for
from panel.images.isos import Iso, ServerMedia, iso_dir
from panel.vps.models import Operation

pytestmark = pytest.mark.django_db


def iso_bytes(size: int = 0x9000, fill: bytes = b"x") -> bytes:
    """Enough of an ISO 9660 image for the panel: the primary volume descriptor's signature."""
    head = b"\0" * 0x8000 + b"\x01CD001\x01"
    return head + fill * (size - len(head))


def upload(world, key, body: bytes, query: str = "name=tools.iso", **extra):
    return world.client(key).put(f"/api/v1/isos/upload/?{query}", data=body,
                                 content_type="application/octet-stream", **extra)


def share_files():
    return sorted(p.name for p in iso_dir().iterdir()) if iso_dir().exists() else []


def spec_of(server):
    return driver_for(server.node.uri).host.domains[server.domain_name]["spec"]


def act(world, key, server, name, body=None):
    return world.client(key).post(f"/api/v1/servers/{server.id}/{name}/", body or {}, format="json")


def stop(world, server):
    r = act(world, world.alice_key, server, "stop")
    assert r.status_code == 202, r.json()
    server.refresh_from_db()
    assert server.state == "stopped"


# --- upload -----------------------------------------------------------------------------------

def test_an_upload_is_stored_on_the_share_with_its_checksum(world):
    body = iso_bytes()
    r = upload(world, world.alice_key, body)
    assert r.status_code == 201, r.json()
    iso = Iso.objects.get(pk=r.json()["id"])
    assert r.json()["sha256"] == hashlib.sha256(body).hexdigest() == iso.sha256
    assert iso.customer == world.alice_customer and not iso.public and iso.size_bytes == len(body)
    assert iso.path.read_bytes() == body and share_files() == [iso.file_name]


def test_a_file_that_is_not_an_iso_is_refused_and_nothing_is_left(world):
    r = upload(world, world.alice_key, b"MZ" + b"\0" * 0x9000)
    assert r.status_code == 400 and r.json()["code"] == "invalid" and "not an ISO" in r.json()["detail"]
    assert not Iso.objects.exists() and share_files() == []


def test_an_upload_over_the_quota_is_refused_before_writing_beyond_it(world, settings, monkeypatch):
    from panel.images import isos

    settings.LIMIT_ISO_GIB_PER_CUSTOMER = 1
    monkeypatch.setattr(isos, "GIB", 0x9000)  # a quota of one small ISO
    assert upload(world, world.alice_key, iso_bytes()).status_code == 201
    written = []

    def chunks():  # more than the quota: the refusal must come at the first chunk beyond it
        for _ in range(64):  # bounded, so a missing check fails the test instead of filling a disk
            written.append(1)
            yield b"y" * 4096

    with pytest.raises(isos.Refused) as refused:
        isos.store_upload(isos.Actor(user=None, api_key=None, customer_id=world.alice_customer.pk, is_admin=False),
                          chunks(), "more.iso")
    assert refused.value.code == "limit_reached" and len(written) == 1
    r = upload(world, world.alice_key, iso_bytes(), query="name=second.iso")
    assert r.status_code == 409 and r.json()["code"] == "limit_reached"
    assert Iso.objects.count() == 1 and len(share_files()) == 1
    # The provider's own ISOs have no quota.
    assert upload(world, world.admin_key, iso_bytes(), query="name=big.iso&public=1").status_code == 201


def test_a_truncated_upload_is_refused_and_nothing_is_left(world):
    """The body ends before its Content-Length (the view passes it as `length`); a real
    client's dropped connection is in tests/e2e/test_isos.py."""
    from panel.images import isos

    body = iso_bytes()
    alice = isos.Actor(user=None, api_key=None, customer_id=world.alice_customer.pk, is_admin=False)
    with pytest.raises(isos.Refused, match="truncated"):
        isos.store_upload(alice, iter([body]), "tools.iso", length=len(body) + 1000)
    assert not Iso.objects.exists() and share_files() == []


def test_a_bad_name_or_an_unknown_parameter_is_refused(world):
    r = upload(world, world.alice_key, iso_bytes(), query="name=../x")
    assert r.status_code == 400 and r.json()["code"] == "invalid"
    r = upload(world, world.alice_key, iso_bytes(), query="name=a.iso&nmae=b")
    assert r.status_code == 400 and r.json()["code"] == "unknown_filter"
    r = upload(world, world.alice_key, iso_bytes(), query=f"name=a.iso&customer={world.bob_customer.pk}")
    assert r.status_code == 403
    assert not Iso.objects.exists() and share_files() == []


def test_customers_list_their_own_and_public_isos_only(world):
    mine = upload(world, world.alice_key, iso_bytes()).json()["id"]
    bobs = upload(world, world.bob_key, iso_bytes()).json()["id"]
    public = upload(world, world.admin_key, iso_bytes(), query="name=rescue.iso&public=1").json()["id"]
    private = upload(world, world.admin_key, iso_bytes(), query="name=internal.iso").json()["id"]
    listed = {row["id"] for row in world.client(world.alice_key).get("/api/v1/isos/").json()["results"]}
    assert listed == {mine, public}
    assert world.client(world.alice_key).get(f"/api/v1/isos/{bobs}/").status_code == 404
    assert world.client(world.alice_key).delete(f"/api/v1/isos/{bobs}/").status_code == 404
    assert world.client(world.alice_key).delete(f"/api/v1/isos/{private}/").status_code == 404
    assert Iso.objects.count() == 4


def test_deleting_an_iso_removes_its_file(world):
    iso = Iso.objects.get(pk=upload(world, world.alice_key, iso_bytes()).json()["id"])
    assert world.client(world.alice_key).delete(f"/api/v1/isos/{iso.id}/").status_code == 204
    assert not Iso.objects.exists() and not iso.path.exists()


# --- boot media ---------------------------------------------------------------------------------

def test_attach_boots_the_stopped_server_from_the_iso_and_detach_restores_the_definition(world, alice_server):
    normal = spec_of(alice_server).to_xml()
    stop(world, alice_server)
    iso = upload(world, world.alice_key, iso_bytes()).json()["id"]
    r = act(world, world.alice_key, alice_server, "attach-iso", {"iso": iso})
    assert r.status_code == 202, r.json()
    op = Operation.objects.get(pk=r.json()["id"])
    assert op.kind == "start" and op.status == "succeeded", op.log
    spec = spec_of(alice_server)
    assert spec.kernel_boot is None and spec.boot_order == ("cdrom", "hd")
    assert [d.device for d in spec.disks] == ["disk", "cdrom"] and spec.disks[1].path == str(Iso.objects.get().path)
    alice_server.refresh_from_db()
    assert alice_server.state == "running"
    # Attached: the ISO stays.
    assert world.client(world.alice_key).delete(f"/api/v1/isos/{iso}/").status_code == 409
    stop(world, alice_server)
    assert act(world, world.alice_key, alice_server, "detach-iso").status_code == 202
    assert spec_of(alice_server).to_xml() == normal


def test_rescue_boots_the_rescue_image_with_the_servers_disk_and_unrescue_restores_it(world, alice_server):
    normal = spec_of(alice_server).to_xml()
    disk = spec_of(alice_server).disks[0].path
    stop(world, alice_server)
    assert act(world, world.alice_key, alice_server, "rescue").status_code == 202
    spec = spec_of(alice_server)
    assert "panel.rescue=1" in spec.kernel_boot.cmdline and spec.kernel_boot.kernel.endswith("tiny/vmlinuz")
    assert [d.path for d in spec.disks] == [disk]
    assert ServerMedia.objects.get(server=alice_server).boot == "rescue"
    stop(world, alice_server)
    assert act(world, world.alice_key, alice_server, "unrescue").status_code == 202
    assert spec_of(alice_server).to_xml() == normal
    alice_server.refresh_from_db()
    assert alice_server.state == "running"


def test_boot_media_change_only_on_a_stopped_server_and_only_from_the_right_mode(world, alice_server):
    r = act(world, world.alice_key, alice_server, "rescue")
    assert r.status_code == 409 and r.json()["code"] == "invalid_state" and "stop the server" in r.json()["detail"]
    stop(world, alice_server)
    r = act(world, world.alice_key, alice_server, "unrescue")
    assert r.status_code == 409 and r.json()["code"] == "invalid_state"
    r = act(world, world.alice_key, alice_server, "detach-iso")
    assert r.status_code == 409
    assert not ServerMedia.objects.exists() and not Operation.objects.filter(params__define=True).exists()


def test_another_customers_iso_cannot_be_attached(world, alice_server):
    stop(world, alice_server)
    bobs = upload(world, world.bob_key, iso_bytes()).json()["id"]
    private = upload(world, world.admin_key, iso_bytes(), query="name=internal.iso").json()["id"]
    for key in (world.alice_key, world.admin_key):
        for iso in (bobs, private, 999999, "x"):
            r = act(world, key, alice_server, "attach-iso", {"iso": iso})
            assert r.status_code == 400 and "iso" in str(r.json()), (key, iso, r.json())
    assert not ServerMedia.objects.exists()
    alice_server.refresh_from_db()
    assert alice_server.state == "stopped"


def test_bob_cannot_rescue_alices_server(world, alice_server):
    stop(world, alice_server)
    assert act(world, world.bob_key, alice_server, "rescue").status_code == 404
    assert not ServerMedia.objects.exists()


# --- UI -----------------------------------------------------------------------------------------

def logged_in(user):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    client.get("/isos/")  # the CSRF cookie
    return client


def ui_upload(client, body: bytes, file_name: str = "tools.iso", **fields):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return client.post("/isos/upload/", {"csrfmiddlewaretoken": client.cookies["csrftoken"].value, **fields,
                                         "file": SimpleUploadedFile(file_name, body)}, follow=True)


def page_messages(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_the_ui_streams_an_upload_to_the_share_and_refuses_what_is_not_an_iso(world, settings, tmp_path):
    settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path / "no-temp")  # Django's own handlers would write here
    client = logged_in(world.alice)
    body = iso_bytes(3 * 1024 * 1024)  # above FILE_UPLOAD_MAX_MEMORY_SIZE: still never a temp file
    r = ui_upload(client, body, file_name="my tools.iso")
    iso = Iso.objects.get()
    assert iso.name == "my tools.iso" and iso.customer == world.alice_customer and iso.path.read_bytes() == body
    assert iso.sha256 == hashlib.sha256(body).hexdigest() and not (tmp_path / "no-temp").exists()
    assert "my tools.iso" in r.content.decode()
    r = ui_upload(client, b"\0" * 0x9000, file_name="fake.iso")
    assert any("not an ISO" in m for m in page_messages(r))
    assert Iso.objects.count() == 1 and share_files() == [iso.file_name]
    # Without the CSRF token nothing is written.
    from django.core.files.uploadedfile import SimpleUploadedFile
    r = client.post("/isos/upload/", {"file": SimpleUploadedFile("x.iso", iso_bytes())})
    assert r.status_code == 403 and Iso.objects.count() == 1 and share_files() == [iso.file_name]


def test_the_ui_takes_the_name_field_and_only_admins_make_public_isos(world):
    ui_upload(logged_in(world.alice), iso_bytes(), file_name="a.iso", public="1")
    ui_upload(logged_in(world.admin), iso_bytes(), file_name="b.iso", public="1")
    ui_upload(logged_in(world.alice), iso_bytes(), file_name="c.iso", name="Rescue CD")
    assert sorted(Iso.objects.values_list("name", "public")) == [("Rescue CD", False), ("a.iso", False),
                                                                 ("b.iso", True)]


def test_the_server_page_card_boots_rescue_and_back(world, alice_server):
    client = logged_in(world.alice)
    page = client.get(f"/servers/{alice_server.id}/").content.decode()
    assert 'id="boot-media"' in page and "Stop the server to change how it boots." in page
    stop(world, alice_server)
    token = client.cookies["csrftoken"].value
    r = client.post(f"/servers/{alice_server.id}/boot/rescue/", {"csrfmiddlewaretoken": token}, follow=True)
    assert "Rescue boot requested." in page_messages(r) and "Rescue mode" in r.content.decode()
    assert "panel.rescue=1" in spec_of(alice_server).kernel_boot.cmdline
    # Bob's session: Alice's server does not exist.
    bob = logged_in(world.bob)
    r = bob.post(f"/servers/{alice_server.id}/boot/unrescue/", {"csrfmiddlewaretoken": bob.cookies["csrftoken"].value})
    assert r.status_code == 404

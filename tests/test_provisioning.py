"""Provisioning on the fake driver: the template share, install requests, the one-time config
URL and call-back, the install paths (image with seed ISO, network installer, the tiny OS),
reinstall, and bad input that must change nothing. The real guest does the same in
tests/e2e/test_provisioning.py.
"""

import shutil
import subprocess

import pytest
from django.test import Client

from nodes.connection import driver_for
from nodes.fake import FakeDriver
from nodes.models import Network
from panel.ipam.models import IpAddress, IpPool
from panel.vps.models import Operation, VirtualServer
from recipes.catalog import load_catalog
from recipes.models import Recipe
from recipes.runner import runner_script
from templates_os import provisioning
from templates_os.models import Installation, OsTemplate
from templates_os.repository import scan
from templates_os.seed import read_seed
from tests import fake_guest

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHZ0ZXN0a2V5 alice@laptop"


@pytest.fixture
def share(settings):
    from pathlib import Path

    return Path(settings.TEMPLATE_SHARE)


@pytest.fixture
def public(world):
    """A public network with a pool on the fake cluster: servers get 10.77.60.x."""
    network = Network.objects.create(cluster=world.node.cluster, name="public", kind="bridged", bridge="br-pub",
                                     interface="eth1")
    IpPool.objects.create(name="pub", network=network, cidr="10.77.60.0/24", gateway="10.77.60.1",
                          dns="10.77.60.53", quarantine_minutes=0)
    return network


@pytest.fixture
def recipes(world):
    load_catalog()
    return Recipe.objects.get(slug="marker")


def create(world, key=None, **body):
    body = {"customer": world.alice_customer.id, "plan": world.plan.id, "hostname": "web1", "os_template": "tiny",
            **body}
    return world.client(key or world.billing_key).post("/api/v1/servers/", body, format="json")


def add_template(share, slug: str, toml: str, files: dict[str, str]) -> None:
    folder = share / slug
    folder.mkdir()
    (folder / "template.toml").write_text(toml)
    for name, text in files.items():
        (folder / name).write_text(text)


def nothing_made(world):
    world.node.refresh_from_db()
    return (not VirtualServer.objects.exists() and not Installation.objects.exists()
            and not Operation.objects.filter(kind="create").exists() and world.node.alloc_ram_mib == 0
            and not IpAddress.objects.filter(server__isnull=False).exists()
            and not any(driver_for(world.node.uri).host.pools.values()))


# -- a create, end to end on the fake driver ------------------------------------------------------
def test_it_installs_with_a_recipe_and_keeps_its_output(world, public, recipes):
    r = create(world, recipe="marker", recipe_params={"text": "hello"}, ssh_keys=[KEY])
    assert r.status_code == 202, r.json()
    password = r.json()["password"]
    assert len(password) == 16
    server = VirtualServer.objects.get()
    assert server.state == "running" and server.os_template.slug == "tiny"
    installation = server.installations.get()
    assert installation.status == "done" and installation.recipe == recipes
    assert installation.recipe_params == {"text": "hello"} and installation.recipe_exit_code == 0
    assert installation.config_served_to == server.ip_addresses.get().address
    assert provisioning.decrypt(installation.password_hash).startswith("$6$")
    detail = world.client(world.alice_key).get(f"/api/v1/servers/{server.id}/").json()
    assert detail["install"]["recipe"] == "marker" and detail["install"]["recipe_output"] == "recipe ran\n"
    # The installed system boots the template's own command line: no config URL any more.
    spec = driver_for(world.node.uri).host.domains[server.domain_name]["spec"]
    assert "panel.config=" not in spec.kernel_boot.cmdline and "panel.ip=eth0,10.77.60." in spec.kernel_boot.cmdline
    from panel.api.models import Event

    assert {"server.created", "server.active"} <= set(Event.objects.values_list("event", flat=True))


def test_the_password_is_stored_only_as_an_encrypted_hash(world, public):
    r = create(world, password="correct horse battery")
    assert r.status_code == 202 and r.json()["password"] == "correct horse battery"
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT password_hash FROM templates_os_installation")
        stored = cursor.fetchone()[0]
    assert "correct horse" not in stored and "$6$" not in stored
    assert provisioning.sha512_crypt.verify("correct horse battery", provisioning.decrypt(stored))


# -- the one-time URLs ----------------------------------------------------------------------------
def reinstall_waiting(server) -> str:
    """A fresh install of `server` whose guest has not called yet; returns the config token."""
    installation = provisioning.new_installation(server, server.os_template, None, {}, "pw-12345678", [])
    return provisioning.begin(installation)


def test_the_config_answers_once_and_only_to_the_servers_address(world, public):
    assert create(world).status_code == 202
    server = VirtualServer.objects.get()
    address = server.ip_addresses.get().address
    token = reinstall_waiting(server)
    url = f"/provision/{token}/"
    assert Client(REMOTE_ADDR="10.77.60.250").get(url).status_code == 404  # another address
    assert Client(REMOTE_ADDR="127.0.0.1").get(url).status_code == 404
    assert Client(REMOTE_ADDR=address).get("/provision/not-a-token/").status_code == 404
    r = Client(REMOTE_ADDR=address).get(url)
    assert r.status_code == 200 and r["Cache-Control"] == "no-store"
    assert "host='web1'" in r.content.decode() or "host=web1" in r.content.decode()
    assert Client(REMOTE_ADDR=address).get(url).status_code == 404  # once
    callback = f"/provision/{provisioning._callback_token(token)}/done?exit=3"
    assert Client(REMOTE_ADDR="10.77.60.250").post(callback, b"x", content_type="text/plain").status_code == 404
    assert Client(REMOTE_ADDR=address).post(callback, b"out\n", content_type="text/plain").status_code == 200
    assert Client(REMOTE_ADDR=address).post(callback, b"again", content_type="text/plain").status_code == 404
    installation = server.installations.first()
    assert installation.status == "done" and installation.recipe_exit_code == 3 and installation.recipe_output == "out\n"
    assert installation.config_token is None and installation.callback_token is None


def test_a_server_behind_nat_calls_from_its_nodes_address(world):
    world.node.address = "10.77.0.11"
    world.node.save()
    network = Network.objects.create(cluster=world.node.cluster, name="lan", kind="nat", bridge="br-lan",
                                     nat_cidr="10.77.61.0/24")
    IpPool.objects.create(name="lan", network=network, cidr="10.77.61.0/24", gateway="10.77.61.1", quarantine_minutes=0)
    assert create(world).status_code == 202
    token = reinstall_waiting(VirtualServer.objects.get())
    assert Client(REMOTE_ADDR="10.77.0.12").get(f"/provision/{token}/").status_code == 404
    assert Client(REMOTE_ADDR="10.77.0.11").get(f"/provision/{token}/").status_code == 200


# -- bad input: a clear 4xx, and nothing made -----------------------------------------------------
def test_bad_installs_are_refused_and_nothing_is_made(world, public, recipes, share):
    Recipe.objects.create(slug="debian-only", name="Debian only", os_families=["debian"], script="true")
    tiny = (share / "tiny" / "template.toml").read_text()
    big = share / "tiny-big"
    shutil.copytree(share / "tiny", big)
    (big / "template.toml").write_text(tiny.replace("min_disk_gib = 1", "min_disk_gib = 5"))
    add_template(share, "broken", 'name = "Broken"\nconfig = "user-data"\n', {"user-data": "#!/bin/sh\n"})
    scan()
    assert OsTemplate.objects.get(slug="broken").invalid_reason == "template.toml: installer is missing"
    cases = [
        ({"recipe": "marker"}, "recipe_params", "text: This parameter is required."),
        ({"recipe": "marker", "recipe_params": {"text": "x", "evil": "y"}}, "recipe_params", "evil: Unknown parameter"),
        ({"recipe_params": {"text": "x"}}, "recipe_params", "without a recipe"),
        ({"recipe": "nope"}, "recipe", "Unknown recipe"),
        ({"recipe": "debian-only"}, "recipe", "does not fit"),
        ({"os_template": "broken"}, "os_template", "Unknown or unavailable"),
        ({"os_template": "windows-xp"}, "os_template", "Unknown or unavailable"),
        ({"os_template": "tiny-big"}, "os_template", "at least 5 GiB"),
        ({"ssh_keys": ["ssh-ed25519 AAAA\nrm -rf /"]}, "ssh_keys", "Not an OpenSSH public key"),
        ({"ssh_keys": ["ssh-ed25519 AAAAC3Nz comment\u2028second line"]}, "ssh_keys", "Not an OpenSSH public key"),
        ({"password": "short"}, "password", "8 to 128"),
    ]
    for body, field, message in cases:
        r = create(world, **body)
        assert r.status_code == 400, (body, r.json())
        assert r.json()["fields"] == {field: [r.json()["detail"]]} or field in r.json()["fields"], r.json()
        assert message in r.json()["detail"], (body, r.json())
        assert nothing_made(world), body
    OsTemplate.objects.filter(slug="tiny").update(enabled=False)
    assert create(world).status_code == 400 and nothing_made(world)


def test_an_installer_that_never_calls_back_leaves_a_visible_error(world, public, monkeypatch):
    OsTemplate.objects.filter(slug="tiny").update(install_timeout=1)
    monkeypatch.setattr(fake_guest, "install", lambda spec, uploads: None)  # a guest that never calls
    assert create(world).status_code == 202
    server = VirtualServer.objects.get()
    op = server.operations.get(kind="create")
    assert op.status == "failed" and "no call-back from the installer within 1 s" in op.error
    assert "never fetched its config" in op.error and "booting the Tiny Linux, demo installer" in op.log
    assert server.state == "error" and server.installations.get().status == "failed"
    assert driver_for(world.node.uri).state(server.domain_name) == "shutoff"  # the installer is powered off
    assert server.ip_addresses.count() == 1  # kept for a reinstall


# -- the install paths -----------------------------------------------------------------------------
CLOUD = """name = "Cloudy"
family = "ubuntu"
installer = "cloud-init"
config = "user-data"
seed = "iso"
[boot]
image = "base.qcow2"
"""
NETWORK_CONFIG = """version: 2
ethernets:
  eth0:
    match: {macaddress: {{ net.ipv4.mac|yaml }}}
    addresses: [{{ (net.ipv4.address ~ '/' ~ net.ipv4.prefix)|yaml }}]
"""


def test_an_image_install_gets_a_seed_iso_that_includes_the_one_time_url(world, public, share, monkeypatch):
    add_template(share, "cloudy", CLOUD, {"user-data": "#cloud-config\nhostname: {{ hostname|yaml }}\n",
                                          "network-config": NETWORK_CONFIG, "base.qcow2": ""})
    scan()
    defined = []
    original = FakeDriver.define
    monkeypatch.setattr(FakeDriver, "define", lambda self, spec: (defined.append(spec), original(self, spec)))
    assert create(world, os_template="cloudy").status_code == 202
    server = VirtualServer.objects.get()
    assert server.state == "running", server.error
    host = driver_for(world.node.uri).host
    seed = read_seed(host.uploads[server.seed_volume])
    assert seed["user-data"].startswith("#include\nhttp://panel.test/provision/")
    assert 'local-hostname: "web1"' in seed["meta-data"] and str(server.uuid) in seed["meta-data"]
    address = server.ip_addresses.get().address
    assert f'addresses: ["{address}/24"]' in seed["network-config"] and server.nics.get().mac in seed["network-config"]
    assert host.backing[server.disk_volume].endswith("/cloudy/base.qcow2")  # a thin overlay
    install, installed = defined[0], defined[-1]
    assert [d.device for d in install.disks] == ["disk", "cdrom"] and install.kernel_boot is None
    assert [d.device for d in installed.disks] == ["disk"] and installed.kernel_boot is None


KICKSTART = """name = "EL"
family = "rhel"
installer = "kickstart"
config = "ks.cfg"
[boot]
kernel = "vmlinuz"
initrd = "initrd.img"
install_cmdline = "inst.ks={{ config_url }} ip={{ net.ipv4.address }}::{{ net.ipv4.gateway }}:{{ net.ipv4.netmask }}"
"""


def test_a_network_install_boots_the_installer_then_the_disk(world, public, share, monkeypatch):
    add_template(share, "el", KICKSTART, {"ks.cfg": "rootpw --iscrypted {{ root_password_hash }}\n",
                                          "vmlinuz": "", "initrd.img": ""})
    scan()
    defined = []
    original = FakeDriver.define
    monkeypatch.setattr(FakeDriver, "define", lambda self, spec: (defined.append(spec), original(self, spec)))
    assert create(world, os_template="el").status_code == 202
    server = VirtualServer.objects.get()
    assert server.state == "running", server.error
    cmdline = defined[0].kernel_boot.cmdline
    assert "inst.ks=http://panel.test/provision/" in cmdline and "::10.77.60.1:255.255.255.0" in cmdline
    assert defined[-1].kernel_boot is None  # after the call-back: boot from the disk
    assert driver_for(world.node.uri).host.domains[server.domain_name]["state"] == "running"
    assert server.disk_volume not in driver_for(world.node.uri).host.backing  # an empty disk


# -- reinstall ------------------------------------------------------------------------------------
def test_the_owner_reinstalls_with_a_new_password_and_the_same_addresses(world, public, recipes):
    assert create(world).status_code == 202
    server = VirtualServer.objects.get()
    addresses = list(server.ip_addresses.values_list("address", flat=True))
    alice, bob = world.client(world.alice_key), world.client(world.bob_key)
    assert bob.post(f"/api/v1/servers/{server.id}/reinstall/", {}, format="json").status_code == 404
    r = alice.post(f"/api/v1/servers/{server.id}/reinstall/", {"recipe": "marker", "recipe_params": {"text": "2"}},
                   format="json")
    assert r.status_code == 202 and r.json()["kind"] == "reinstall" and r.json()["status"] == "succeeded"
    server.refresh_from_db()
    assert server.state == "running" and list(server.ip_addresses.values_list("address", flat=True)) == addresses
    latest = server.installations.first()
    assert latest.recipe == recipes and latest.status == "done" and server.installations.count() == 2
    # Suspended: refused with the reason, nothing started.
    world.client(world.billing_key).post(f"/api/v1/servers/{server.id}/suspend/", {"reason": "unpaid"}, format="json")
    r = alice.post(f"/api/v1/servers/{server.id}/reinstall/", {}, format="json")
    assert r.status_code == 409 and "unpaid" in r.json()["detail"] and server.installations.count() == 2


# -- the template share and its checks --------------------------------------------------------------
def test_the_scan_says_why_a_template_is_not_offered(world, share):
    add_template(share, "nofiles", KICKSTART, {"ks.cfg": "text\n"})
    add_template(share, "unquoted", KICKSTART, {"ks.cfg": "network --hostname {{ ssh_keys }}\n", "vmlinuz": "",
                                                "initrd.img": ""})
    add_template(share, "unset", KICKSTART + "[settings]\nrepo = \"\"\n", {"ks.cfg": "", "vmlinuz": "", "initrd.img": ""})
    add_template(share, "badtoml", "name = \n", {})
    add_template(share, "escape", KICKSTART.replace('kernel = "vmlinuz"', 'kernel = "../tiny/vmlinuz"'), {"ks.cfg": ""})
    scan()
    reasons = dict(OsTemplate.objects.values_list("slug", "invalid_reason"))
    assert reasons["tiny"] == ""
    assert reasons["nofiles"] == "missing on the share: vmlinuz, initrd.img"
    assert "printed without a quoting filter" in reasons["unquoted"]
    assert reasons["unset"] == "set repo in [settings] of template.toml"
    assert reasons["badtoml"].startswith("template.toml:")
    assert reasons["escape"] == "kernel must be a file name inside the template's folder"
    shutil.rmtree(share / "nofiles")
    scan()
    assert OsTemplate.objects.get(slug="nofiles").invalid_reason == "not on the share any more"


def test_customers_see_only_offered_templates_and_admins_manage_them(world, share):
    add_template(share, "nofiles", KICKSTART, {"ks.cfg": ""})
    scan()
    alice, admin = world.client(world.alice_key), world.client(world.admin_key)
    assert [t["slug"] for t in alice.get("/api/v1/os-templates/").json()["results"]] == ["tiny"]
    assert "invalid_reason" not in alice.get("/api/v1/os-templates/").json()["results"][0]
    listed = {t["slug"]: t for t in admin.get("/api/v1/os-templates/").json()["results"]}
    assert listed["nofiles"]["valid"] is False and "vmlinuz" in listed["nofiles"]["invalid_reason"]
    tiny = listed["tiny"]["id"]
    assert alice.patch(f"/api/v1/os-templates/{tiny}/", {"enabled": False}, format="json").status_code == 403
    assert alice.post("/api/v1/os-templates/rescan/").status_code == 403
    assert admin.patch(f"/api/v1/os-templates/{tiny}/", {"enabled": False, "min_disk_gib": 99},
                       format="json").status_code == 200
    assert OsTemplate.objects.get(pk=tiny).min_disk_gib == 1  # read from the share, not writable
    assert alice.get("/api/v1/os-templates/").json()["count"] == 0
    assert admin.post("/api/v1/os-templates/rescan/").status_code == 200


def test_recipes_are_listed_without_their_scripts_and_checked_on_save(world, recipes):
    alice, admin = world.client(world.alice_key), world.client(world.admin_key)
    listed = alice.get("/api/v1/recipes/").json()["results"]
    assert {r["slug"] for r in listed} == {"nginx", "docker", "lamp", "marker"}
    assert all("script" not in r for r in listed)
    assert alice.post("/api/v1/recipes/", {"slug": "x", "name": "x", "os_families": ["tiny"], "script": "true"},
                      format="json").status_code == 403
    bad = {"slug": "x", "name": "X", "os_families": ["tiny"], "script": "true",
           "parameters": [{"name": "PATH"}]}
    r = admin.post("/api/v1/recipes/", bad, format="json")
    assert r.status_code == 400 and "parameters" in r.json()["fields"] and not Recipe.objects.filter(slug="x").exists()
    r = admin.post("/api/v1/recipes/", {**bad, "parameters": [{"name": "site", "required": True}]}, format="json")
    assert r.status_code == 201 and r.json()["parameters"] == [
        {"name": "site", "label": "site", "required": True, "default": "", "secret": False}]


# -- what runs in the guest -----------------------------------------------------------------------
def test_a_hostile_parameter_reaches_the_recipe_as_one_exact_value(tmp_path):
    hostile = "'; touch /tmp/pwned; echo '$(reboot)`id`\nsecond line"
    recipe = Recipe(slug="echo", name="echo", os_families=["tiny"],
                    script=f'#!/bin/sh\nprintf "%s" "$TEXT" > {tmp_path}/out\n')
    script = runner_script(recipe, {"text": hostile}).replace("/var/log/", f"{tmp_path}/").replace(
        "/root", str(tmp_path))
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out").read_text() == hostile
    assert (tmp_path / "panel-recipe.exit").read_text().strip() == "0"

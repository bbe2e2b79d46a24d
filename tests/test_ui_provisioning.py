"""The web UI of provisioning: the admin's OS templates and recipes pages, the install choices of
the new-server form, the root password shown once, the server page's install section and the
reinstall by the owner."""

import functools
import re

import pytest
from django.conf import settings
from django.contrib.sessions.models import Session
from passlib.hash import sha512_crypt

from panel.accounts.models import AuditEntry
from panel.crypto import decrypt
from panel.vps.models import Operation, VirtualServer
from recipes.models import Recipe
from templates_os.models import Installation, OsTemplate
from tests.test_ui_isolation import ui_inline, ui_world  # noqa: F401  (fixtures)
from tests.test_ui_views import messages_of, ui_russian_catalog  # noqa: F401  (fixture)

pytestmark = pytest.mark.django_db

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx0ZXN0a2V5Zm9ydGhldWl0ZXN0c29ubHkxMjM0NTY3OA== alice@laptop"
PASSWORD_BOX = re.compile(r'id="root-password-value">([^<]+)<')


@pytest.fixture
def marker(ui_world):
    """A recipe that fits the tiny demo OS, with a required parameter."""
    return Recipe.objects.create(slug="marker", name="Marker file", os_families=["tiny", "debian"], script="#!/bin/sh\n",
                                 parameters=[{"name": "text", "label": "Text", "required": True, "default": ""}])


def broken_template(name: str = "broken") -> None:
    """A folder on the share whose template.toml lacks the installer."""
    folder = settings.TEMPLATE_SHARE / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "template.toml").write_text('name = "Broken OS"\nconfig = "user-data"\n')


def create_data(w, **changes) -> dict:
    return {"customer": w.alice_customer.pk, "plan": w.plan.pk, "hostname": "alice-new", "os_template": "tiny",
            **changes}


def reinstall_data(**changes) -> dict:
    return {f"reinstall-{name}": value for name, value in {"os_template": "tiny", "confirm": "alice-web",
                                                           **changes}.items()}


def session_values(client) -> str:
    return repr(Session.objects.get(session_key=client.session.session_key).get_decoded())


def page_of(client, server) -> str:
    return client.get(f"/servers/{server.pk}/").content.decode()


# --- OS templates ----------------------------------------------------------------------------

def test_template_page_shows_an_invalid_template_with_its_reason_and_the_share(ui_world):
    admin = ui_world.client(ui_world.admin)
    broken_template()
    r = admin.post("/admin/os-templates/rescan/")
    assert r.status_code == 302 and r["Location"] == "/admin/os-templates/"
    entry = AuditEntry.objects.get(action="os_template.rescan")
    assert entry.detail["invalid"] == 1 and entry.user == ui_world.admin
    page = admin.get("/admin/os-templates/").content.decode()
    row = page[page.index('data-template="broken"'):]
    row = row[:row.index("</tr>")]
    assert "template.toml: installer is missing" in row and 'data-tone="bad"' in row
    tiny = page[page.index('data-template="tiny"'):]
    assert "Tiny Linux, demo" in tiny and "cloud-init" in tiny and 'data-tone="ok"' in tiny[:tiny.index("</tr>")]
    assert str(settings.TEMPLATE_SHARE) in page and "README.md" in page
    assert 'href="/admin/os-templates/"' in page  # the nav link
    # Never offered.
    assert 'value="broken"' not in admin.get("/admin/servers/new/").content.decode()


def test_disabling_a_template_hides_it_from_the_create_form_and_positions_it(ui_world):
    admin = ui_world.client(ui_world.admin)
    tiny = OsTemplate.objects.get(slug="tiny")
    assert 'value="tiny"' in admin.get("/admin/servers/new/").content.decode()
    r = admin.post(f"/admin/os-templates/{tiny.pk}/", {"enabled": "false"})
    assert r.status_code == 302
    tiny.refresh_from_db()
    assert not tiny.enabled and tiny.position == 100
    entry = AuditEntry.objects.get(action="os_template.update")
    assert entry.detail["enabled"] == "False" and entry.object_id == str(tiny.pk)
    assert 'value="tiny"' not in admin.get("/admin/servers/new/").content.decode()
    row = admin.get("/admin/os-templates/").content.decode()
    assert 'id="enable-tiny"' in row
    # A create naming it anyway is refused on the field.
    r = admin.post("/admin/servers/new/", create_data(ui_world))
    assert r.status_code == 200 and not VirtualServer.objects.filter(hostname="alice-new").exists()
    assert r.context["form"].errors["os_template"]
    # The position form leaves `enabled` alone; a bad position changes nothing.
    admin.post(f"/admin/os-templates/{tiny.pk}/", {"position": "7"})
    tiny.refresh_from_db()
    assert tiny.position == 7 and not tiny.enabled
    r = admin.post(f"/admin/os-templates/{tiny.pk}/", {"position": "-3"}, follow=True)
    tiny.refresh_from_db()
    assert tiny.position == 7 and any("Tiny Linux" in m for m in messages_of(r))
    admin.post(f"/admin/os-templates/{tiny.pk}/", {"enabled": "true"})
    tiny.refresh_from_db()
    assert tiny.enabled
    assert 'value="tiny"' in admin.get("/admin/servers/new/").content.decode()


# --- Recipes ---------------------------------------------------------------------------------

RECIPE = {"name": "Hello", "slug": "hello", "description": "Says hello", "os_families": "tiny, debian",
          "parameters": "greeting | The greeting | yes | hi\nshout | Upper case | no |", "script": "#!/bin/sh\necho hi\n",
          "enabled": "on"}


def test_recipe_with_a_bad_parameter_line_shows_the_error_and_creates_nothing(ui_world):
    admin = ui_world.client(ui_world.admin)
    for parameters, error in [("greeting | G | yes |\nBad Name | Label | no |", "Line 2"),
                              ("path | Path | no |", "Line 1"),
                              ("greeting | G | maybe |", "required is yes or no"),
                              ("greeting | G | yes |\ngreeting | again | no |", "Line 2")]:
        r = admin.post("/admin/recipes/new/", {**RECIPE, "parameters": parameters})
        assert r.status_code == 200
        errors = " ".join(r.context["form"].errors["parameters"])
        assert error in errors, (parameters, errors)
        assert error in r.content.decode()
    r = admin.post("/admin/recipes/new/", {**RECIPE, "os_families": " , "})
    assert r.context["form"].errors["os_families"]
    r = admin.post("/admin/recipes/new/", {**RECIPE, "script": "   "})
    assert r.context["form"].errors["script"]
    assert not Recipe.objects.exists() and not AuditEntry.objects.filter(action__startswith="recipe.").exists()


def test_admin_creates_edits_and_deletes_a_recipe(ui_world):
    admin = ui_world.client(ui_world.admin)
    r = admin.post("/admin/recipes/new/", RECIPE)
    assert r.status_code == 302 and r["Location"] == "/admin/recipes/"
    recipe = Recipe.objects.get(slug="hello")
    assert recipe.os_families == ["tiny", "debian"] and recipe.enabled
    assert recipe.parameters == [
        {"name": "greeting", "label": "The greeting", "required": True, "default": "hi", "secret": False},
        {"name": "shout", "label": "Upper case", "required": False, "default": "", "secret": False}]
    assert AuditEntry.objects.filter(action="recipe.create", object_id=str(recipe.pk)).exists()
    assert "hello" in admin.get("/admin/recipes/").content.decode()
    form = admin.get(f"/admin/recipes/{recipe.pk}/edit/").content.decode()
    assert "greeting | The greeting | yes | hi" in form and 'value="tiny, debian"' in form
    r = admin.post(f"/admin/recipes/{recipe.pk}/edit/", {**RECIPE, "script": "#!/bin/sh\necho bye\n", "enabled": ""})
    assert r.status_code == 302
    recipe.refresh_from_db()
    assert not recipe.enabled and "bye" in recipe.script
    entry = AuditEntry.objects.get(action="recipe.update")
    assert entry.detail["script"] == "(changed)" and entry.detail["enabled"] == "False"
    # A duplicate slug is a form error.
    r = admin.post("/admin/recipes/new/", RECIPE)
    assert r.status_code == 200 and r.context["form"].errors["slug"]
    assert admin.post(f"/admin/recipes/{recipe.pk}/delete/").status_code == 302
    assert not Recipe.objects.filter(pk=recipe.pk).exists()
    assert AuditEntry.objects.filter(action="recipe.delete", object_id=str(recipe.pk)).exists()


def test_customers_get_404_on_the_template_and_recipe_pages(ui_world, marker):
    tiny = OsTemplate.objects.get(slug="tiny")
    client = ui_world.client(ui_world.alice)
    for url in ["/admin/os-templates/", "/admin/recipes/", "/admin/recipes/new/", f"/admin/recipes/{marker.pk}/edit/"]:
        assert client.get(url).status_code == 404, url
    assert client.post("/admin/os-templates/rescan/").status_code == 404
    assert client.post(f"/admin/os-templates/{tiny.pk}/", {"enabled": "false"}).status_code == 404
    assert client.post("/admin/recipes/new/", RECIPE).status_code == 404
    assert client.post(f"/admin/recipes/{marker.pk}/edit/", {**RECIPE, "slug": "marker"}).status_code == 404
    assert client.post(f"/admin/recipes/{marker.pk}/delete/").status_code == 404
    tiny.refresh_from_db()
    marker.refresh_from_db()
    assert tiny.enabled and marker.name == "Marker file" and not Recipe.objects.filter(slug="hello").exists()
    assert not AuditEntry.objects.filter(action__startswith="os_template.").exists()
    assert "/admin/os-templates/" not in client.get("/servers/").content.decode()


# --- Create with a recipe: the password once, the install section -------------------------------

def test_admin_creates_a_server_with_a_recipe_and_sees_the_password_once(ui_world, marker):
    admin = ui_world.client(ui_world.admin)
    form = admin.get("/admin/servers/new/").content.decode()
    assert "Marker file (tiny, debian)" in form and 'name="recipe_params"' in form and 'name="ssh_keys"' in form
    r = admin.post("/admin/servers/new/", create_data(ui_world, recipe=marker.pk, recipe_params="text=hello world",
                                                      ssh_keys=f"{KEY}\n\n"))
    server = VirtualServer.objects.get(hostname="alice-new")
    assert r.status_code == 302 and r["Location"] == f"/servers/{server.pk}/"
    # Waiting in the session, encrypted; nowhere in the URL.
    assert "root-password" in session_values(admin)
    page = page_of(admin, server)
    password = PASSWORD_BOX.search(page).group(1)
    assert "shown only now" in page and len(password) == 16
    install = Installation.objects.get(server=server)
    assert sha512_crypt.verify(password, decrypt(install.password_hash))
    assert install.ssh_keys == [KEY] and install.recipe == marker and install.recipe_params == {"text": "hello world"}
    assert password not in r["Location"] and password not in session_values(admin)
    assert not any(password in str(entry.detail) for entry in AuditEntry.objects.all())
    # The second load does not show it.
    again = page_of(admin, server)
    assert 'id="root-password"' not in again and password not in again
    # The install section: template, recipe with its parameters, status, exit code and output.
    assert 'id="installation"' in again and 'data-install-status="done"' in again
    assert re.search(r'id="recipe-exit-code" data-tone="ok">0<', again)
    assert re.search(r'id="recipe-output">recipe ran\n</pre>', again)
    assert "Marker file" in again and "text=hello world" in again
    assert 'id="server-os">Tiny Linux, demo<' in again


def test_a_given_password_and_refusals_land_on_the_create_forms_fields(ui_world, marker):
    admin = ui_world.client(ui_world.admin)
    cases = [({"recipe": marker.pk}, "recipe_params", "text: This parameter is required."),
             ({"recipe_params": "text=x"}, "recipe_params", "Parameters without a recipe."),
             ({"recipe": marker.pk, "recipe_params": "text"}, "recipe_params", "Line 1"),
             ({"password": "short"}, "password", "8 to 128 characters"),
             ({"ssh_keys": "not a key"}, "ssh_keys", "Not an OpenSSH public key")]
    for changes, field, message in cases:
        r = admin.post("/admin/servers/new/", create_data(ui_world, **changes))
        assert r.status_code == 200, changes
        assert message in " ".join(r.context["form"].errors.get(field, [])), (changes, r.context["form"].errors)
    assert not VirtualServer.objects.filter(hostname="alice-new").exists()
    r = admin.post("/admin/servers/new/", create_data(ui_world, password="my own pass 1"))
    server = VirtualServer.objects.get(hostname="alice-new")
    page = page_of(admin, server)
    assert PASSWORD_BOX.search(page).group(1) == "my own pass 1"
    assert "—" in page[page.index('id="install-recipe"'):][:200]


def test_the_recipe_output_is_escaped(ui_world, marker, monkeypatch):
    from tests import fake_guest

    monkeypatch.setattr(fake_guest, "install", functools.partial(
        fake_guest.install, exit_code=3, output="<script>alert('owned')</script>\n<b>bold</b>"))
    admin = ui_world.client(ui_world.admin)
    admin.post("/admin/servers/new/", create_data(ui_world, recipe=marker.pk, recipe_params="text=<i>x</i>"))
    server = VirtualServer.objects.get(hostname="alice-new")
    page = page_of(ui_world.client(ui_world.alice), server)
    assert "<script>alert(" not in page and "<b>bold</b>" not in page and "<i>x</i>" not in page
    assert "&lt;script&gt;alert(&#x27;owned&#x27;)&lt;/script&gt;" in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    assert re.search(r'id="recipe-exit-code" data-tone="bad">3<', page)


# --- Reinstall by the owner ------------------------------------------------------------------

@pytest.fixture
def public_address(ui_world, monkeypatch):
    """Alice's server with an address of a public pool (given the real way): the fake guest
    fetches its config from it."""
    from nodes.models import Network
    from panel.accounts.tenancy import SYSTEM
    from panel.ipam import actions
    from panel.ipam.models import IpPool

    network = Network.objects.create(cluster=ui_world.node.cluster, name="public", kind="bridged", bridge="br-pub",
                                     interface="eth1")
    pool = IpPool.objects.create(name="pub4", network=network, cidr="203.0.113.0/28", gateway="203.0.113.1")
    return actions.add_address(SYSTEM, ui_world.alice_server.pk, pool)


def test_alice_reinstalls_her_server_with_the_right_confirmation(ui_world, marker, public_address):
    server, alice = ui_world.alice_server, ui_world.client(ui_world.alice)
    addresses = sorted(server.ip_addresses.values_list("address", flat=True))
    assert public_address.address in addresses
    installs = Installation.objects.filter(server=server).count()
    page = page_of(alice, server)
    assert 'id="reinstall"' in page and "This erases the disk" in page and "Marker file (tiny, debian)" in page
    assert 'value="tiny" selected' in page
    r = alice.post(f"/servers/{server.pk}/reinstall/",
                   reinstall_data(recipe=marker.pk, recipe_params="text=again", ssh_keys=KEY))
    assert r.status_code == 302 and r["Location"] == f"/servers/{server.pk}/"
    op = Operation.objects.get(server=server, kind="reinstall")
    assert op.requested_by and op.status == "succeeded", op.error
    page = page_of(alice, server)
    password = PASSWORD_BOX.search(page).group(1)
    assert password and password not in page_of(alice, server)
    server.refresh_from_db()
    assert server.state == "running"
    assert sorted(server.ip_addresses.values_list("address", flat=True)) == addresses
    assert Installation.objects.filter(server=server).count() == installs + 1
    latest = Installation.objects.filter(server=server).first()
    assert latest.recipe == marker and latest.operation == op
    assert latest.config_served_to == public_address.address and latest.status == "done"
    assert sha512_crypt.verify(password, decrypt(latest.password_hash))
    assert not any(password in str(entry.detail) for entry in AuditEntry.objects.all())
    assert AuditEntry.objects.filter(action="server.reinstall", user=ui_world.alice).exists()
    # The page follows the operation live, as for the power buttons.
    assert f'data-ws-path="/ws/servers/{server.pk}/"' in page and "Reinstall" in page
    assert f"by {public_address.address}" in page and "text=again" in page


def test_a_wrong_confirmation_reinstalls_nothing(ui_world):
    server, alice = ui_world.alice_server, ui_world.client(ui_world.alice)
    before = (Operation.objects.count(), Installation.objects.count())
    for confirm in ["", "alice-we", "bob-db", "ALICE-WEB"]:
        r = alice.post(f"/servers/{server.pk}/reinstall/", reinstall_data(confirm=confirm, password="another pass 1"))
        assert r.status_code == 400
        assert r.context["reinstall_form"].errors["confirm"]
        assert "alice-web" in " ".join(r.context["reinstall_form"].errors["confirm"]) or not confirm
    assert "another pass 1" not in r.content.decode()
    assert (Operation.objects.count(), Installation.objects.count()) == before
    server.refresh_from_db()
    assert server.state == "running"
    # A refusal by lifecycle lands on its field too.
    r = alice.post(f"/servers/{server.pk}/reinstall/", reinstall_data(password="short"))
    assert r.status_code == 400 and r.context["reinstall_form"].errors["password"]
    assert (Operation.objects.count(), Installation.objects.count()) == before


def test_bob_gets_404_on_alices_reinstall(ui_world):
    server, bob = ui_world.alice_server, ui_world.client(ui_world.bob)
    before = (Operation.objects.count(), Installation.objects.count())
    assert bob.post(f"/servers/{server.pk}/reinstall/", reinstall_data()).status_code == 404
    assert bob.get(f"/servers/{server.pk}/reinstall/").status_code == 404
    assert (Operation.objects.count(), Installation.objects.count()) == before
    assert ui_world.client(ui_world.alice).get(f"/servers/{server.pk}/reinstall/")["Location"] == \
        f"/servers/{server.pk}/#reinstall"


def test_admin_reinstalls_and_no_reinstall_while_suspended(ui_world):
    server, admin = ui_world.bob_server, ui_world.client(ui_world.admin)
    r = admin.post(f"/servers/{server.pk}/reinstall/", reinstall_data(confirm="bob-db"))
    assert r.status_code == 302 and Operation.objects.filter(server=server, kind="reinstall").exists()
    assert PASSWORD_BOX.search(page_of(admin, server))
    # Bob's page does not have the password that the admin's session holds.
    admin.post(f"/servers/{server.pk}/actions/suspend/", {"reason": "unpaid"})
    server.refresh_from_db()
    assert server.state == "suspended"
    bob = ui_world.client(ui_world.bob)
    assert 'id="reinstall"' not in page_of(bob, server)
    r = bob.post(f"/servers/{server.pk}/reinstall/", reinstall_data(confirm="bob-db"))
    assert r.status_code == 400 and "suspended" in " ".join(r.context["reinstall_form"].non_field_errors())
    assert Operation.objects.filter(server=server, kind="reinstall").count() == 1


def test_russian_pages(ui_world, ui_russian_catalog, marker):
    ui_world.admin.language = "ru"
    ui_world.admin.save()
    admin = ui_world.client(ui_world.admin)
    admin.post("/language/", {"language": "ru"})
    assert "Шаблоны ОС" in admin.get("/admin/os-templates/").content.decode()
    assert "Рецепты" in admin.get("/admin/recipes/").content.decode()
    page = page_of(admin, ui_world.alice_server)
    assert "Переустановить" in page and "Установка" in page

"""Issue 19, inputs and recipe secrets: a hostname that cannot leave its line of the cloud-init
meta-data, a trusted marker that no string method carries over, unknown query parameters
refused by name, recipe parameters declared secret kept encrypted and never shown.

On MariaDB through the real code paths (the fake driver stands in for a node); the seed is
written by the real writer (pycdlib ISO) and read back, and its meta-data parsed as YAML.
"""

import pytest
import yaml
from django.test import Client

from backup.models import Backup
from panel.vps.models import Operation, VirtualServer
from templates_os import provisioning
from templates_os.render import RenderError, Trusted, render
from templates_os.seed import read_seed, seed_iso

from tests.backup_fixtures import queued_server, target  # noqa: F401 (fixtures)

INJECTED = "evil\ninstance-id: pwned\nlocal-hostname: other"


# --- the trusted marker ---------------------------------------------------------------------

CONTEXT = {"hostname": INJECTED, "config_url": Trusted("http://panel.test/provision/{}/{x}/%s/"),
           "panel_args": Trusted("panel.ip=eth0,192.0.2.10/24,192.0.2.1")}


@pytest.mark.parametrize("expression", [
    '("{}"|yaml).format(hostname)',  # the sandbox's str.format kept the str subclass: printed unquoted
    '("{0}"|sh).format(hostname)',
    '("{x}"|yaml).format_map({"x": hostname})',
    "config_url.format(hostname, x=hostname)",
    "config_url.format_map({'x': hostname})",
    "config_url ~ hostname",
    "config_url + hostname",
    "config_url % hostname",
    '("%s"|sh) % hostname',
    "config_url|format(hostname)",
    "(config_url|string).replace('x', hostname)",
    "config_url|replace('x', hostname)",
    "config_url.text ~ hostname",
    "[config_url, hostname]|join",
    "config_url.upper()",
])
def test_nothing_made_from_a_trusted_value_is_trusted(expression):
    with pytest.raises(RenderError):
        render("{{ " + expression + " }}", CONTEXT)


def test_trusted_values_and_quoted_values_still_print():
    out = render("{{ config_url }} {{ panel_args }} {{ hostname|yaml }} {{ {'a': panel_args}|yaml }}"
                 "{% if config_url %} yes{% endif %}", CONTEXT)
    assert out == ('http://panel.test/provision/{}/{x}/%s/ panel.ip=eth0,192.0.2.10/24,192.0.2.1 '
                   '"evil\\ninstance-id: pwned\\nlocal-hostname: other" {"a": "panel.ip=eth0,192.0.2.10/24,192.0.2.1"}'
                   ' yes')


# --- the seed's meta-data -------------------------------------------------------------------

def _seed_of(server) -> dict[str, str]:
    installation = server.installations.first()
    files = provisioning.seed_files(server, installation, "http://panel.test/provision/TOKEN/")
    return read_seed(seed_iso(files))  # written and read back as the guest's cloud-init finds it


@pytest.mark.django_db
def test_the_meta_data_writer_quotes_a_hostname_with_line_breaks(alice_server):
    # A row that slipped past validation (as restore-as-new's hostname did).
    VirtualServer.objects.filter(pk=alice_server.pk).update(hostname=INJECTED)
    alice_server.refresh_from_db()
    meta = yaml.safe_load(_seed_of(alice_server)["meta-data"])
    installation = alice_server.installations.first()
    assert meta == {"instance-id": f"{alice_server.uuid}-{installation.pk}", "local-hostname": INJECTED}


@pytest.mark.django_db
def test_the_meta_data_of_an_ordinary_server(alice_server):
    seed = _seed_of(alice_server)
    installation = alice_server.installations.first()
    assert yaml.safe_load(seed["meta-data"]) == {"instance-id": f"{alice_server.uuid}-{installation.pk}",
                                                 "local-hostname": "alice-web"}
    assert seed["user-data"] == "#include\nhttp://panel.test/provision/TOKEN/\n"


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["http://panel.test/provision/T/\n#cloud-config", "http://panel .test/", "file:///x"])
def test_the_seed_takes_only_a_single_http_url(alice_server, url):
    with pytest.raises(ValueError):
        provisioning.seed_files(alice_server, alice_server.installations.first(), url)


# --- restore as a new server: its hostname ----------------------------------------------------

@pytest.fixture
def backup(queued_server, target):  # noqa: F811 (fixtures)
    server = queued_server
    return Backup.objects.create(
        server=server, server_uuid=server.uuid, hostname=server.hostname, customer_id=server.customer_id,
        target=target, kind="full", status="done",
        manifest={"server": {"plan_id": server.plan_id, "os_template": "tiny", "disk_gib": server.disk_gib}})


BAD_HOSTNAMES = [INJECTED, "a b", "x;reboot", "-lead", "é.example", "a" * 64]


@pytest.mark.django_db
@pytest.mark.parametrize("hostname", BAD_HOSTNAMES)
def test_restore_as_new_refuses_a_bad_hostname_through_the_api(world, backup, hostname):
    before = VirtualServer.objects.count()
    r = world.client(world.admin_key).post(f"/api/v1/backups/{backup.id}/restore-as-new/",
                                           {"hostname": hostname}, format="json")
    assert r.status_code == 400, r.json()
    assert r.json()["code"] == "invalid" and list(r.json()["fields"]) == ["hostname"]
    assert VirtualServer.objects.count() == before and not Operation.objects.filter(kind="restore").exists()


@pytest.mark.django_db
def test_restore_as_new_refuses_a_bad_hostname_in_the_domain_and_the_ui(world, backup):
    from backup import actions
    from panel.accounts.tenancy import Actor
    from panel.refusals import Refused

    admin = Actor(user=world.admin, api_key=None, customer_id=None, is_admin=True)
    before = VirtualServer.objects.count()
    with pytest.raises(Refused) as refused:
        actions.restore_as_new_server(admin, backup.id, hostname=INJECTED)
    assert (refused.value.status, refused.value.field) == (400, "hostname")
    # A backup recorded with a bad name, restored under its own name: refused too.
    Backup.objects.filter(pk=backup.pk).update(hostname=INJECTED)
    with pytest.raises(Refused):
        actions.restore_as_new_server(admin, backup.id)
    ui = Client()
    ui.force_login(world.admin)
    r = ui.post(f"/admin/backups/{backup.pk}/restore-as-new/", {"hostname": "x\ny"}, follow=True)
    assert any("RFC 1123" in str(m) for m in r.context["messages"])
    assert VirtualServer.objects.count() == before and not Operation.objects.filter(kind="restore").exists()


# --- recipe parameters declared secret ----------------------------------------------------------

SECRET = "hunter2-Secret-value"


@pytest.fixture
def licensed(world):
    """A recipe for the tiny template with a secret parameter whose name does not look secret."""
    from recipes.models import Recipe, normalize_parameters

    return Recipe.objects.create(slug="licensed", name="Licensed", os_families=["tiny"], script="#!/bin/sh\ntrue\n",
                                 parameters=normalize_parameters([{"name": "license_key", "secret": True},
                                                                  {"name": "edition", "default": "basic"}]))


def _create_with_secret(world, licensed):
    r = world.client(world.billing_key).post("/api/v1/servers/", {
        "customer": world.alice_customer.id, "plan": world.plan.id, "hostname": "licensed1", "os_template": "tiny",
        "recipe": "licensed", "recipe_params": {"license_key": SECRET}}, format="json")
    assert r.status_code == 202, r.json()
    assert SECRET not in r.content.decode()
    return VirtualServer.objects.get(hostname="licensed1")


@pytest.mark.django_db
def test_a_secret_parameter_is_stored_encrypted_and_reaches_only_the_recipe_run(world, licensed):
    from django.db import connection

    server = _create_with_secret(world, licensed)
    installation = server.installations.get()
    assert installation.status == "done"  # the fake guest fetched its config and called back
    with connection.cursor() as cursor:
        cursor.execute("SELECT recipe_params FROM templates_os_installation WHERE id = %s", [installation.id])
        stored = cursor.fetchone()[0]
    assert SECRET not in stored and "encrypted" in stored and '"basic"' in stored
    # The run gets the value: the runner script in the install config the guest fetches.
    import base64

    context = provisioning.context_for(installation, "http://panel.test/provision/T/", "T")
    runner = base64.b64decode(str(context["recipe_runner_b64"])).decode()
    assert f"LICENSE_KEY={SECRET}; export LICENSE_KEY" in runner and "EDITION=basic; export EDITION" in runner


@pytest.mark.django_db
def test_a_secret_parameter_is_never_shown_only_whether_it_is_set(world, licensed):
    server = _create_with_secret(world, licensed)
    for key in (world.admin_key, world.billing_key, world.alice_key):
        r = world.client(key).get(f"/api/v1/servers/{server.id}/")
        assert r.status_code == 200 and SECRET not in r.content.decode()
        install = r.json()["install"]
        assert install["recipe_params"] == {"edition": "basic"} and install["recipe_secrets"] == {"license_key": True}
    for user in (world.admin, world.alice):
        ui = Client()
        ui.force_login(user)
        page = ui.get(f"/servers/{server.id}/").content.decode()
        assert SECRET not in page and "license_key=(secret, set)" in page and "edition=basic" in page


@pytest.mark.django_db
def test_an_optional_secret_left_out_is_shown_as_not_set(world, licensed):
    r = world.client(world.billing_key).post("/api/v1/servers/", {
        "customer": world.alice_customer.id, "plan": world.plan.id, "hostname": "licensed2", "os_template": "tiny",
        "recipe": "licensed"}, format="json")
    assert r.status_code == 202, r.json()
    r = world.client(world.billing_key).get(f"/api/v1/servers/{r.json()['server']}/")
    assert r.json()["install"]["recipe_secrets"] == {"license_key": False}


def test_the_lamp_recipe_declares_its_password_secret():
    import tomllib
    from pathlib import Path

    from recipes.models import normalize_parameters

    lamp = tomllib.loads((Path(__file__).resolve().parent.parent / "recipes/catalog/lamp.toml").read_text())
    declared = {p["name"]: p["secret"] for p in normalize_parameters(lamp["parameters"])}
    assert declared == {"db_password": True, "db_name": False}


@pytest.mark.django_db
@pytest.mark.parametrize("param", [{"name": "token", "secret": True, "default": "abc"},
                                   {"name": "token", "secret": "yes"}])
def test_a_secret_parameter_cannot_have_a_default_or_a_vague_flag(world, param):
    from recipes.models import Recipe

    r = world.client(world.admin_key).post("/api/v1/recipes/", {"slug": "bad", "name": "Bad", "os_families": ["tiny"],
                                                                "script": "true", "parameters": [param]},
                                           format="json")
    assert r.status_code == 400 and "parameters" in r.json()["fields"], r.json()
    assert not Recipe.objects.filter(slug="bad").exists()


@pytest.mark.django_db
def test_the_migration_declares_secret_looking_parameters_and_seals_their_stored_values(world, alice_server):
    import importlib

    from django.apps import apps
    from recipes.models import Recipe
    from templates_os.models import Installation

    migration = importlib.import_module("recipes.migrations.0002_secret_parameters")
    # As a recipe and an install were before the migration: no `secret`, the password in clear.
    recipe = Recipe.objects.create(slug="old", name="Old", os_families=["tiny"], script="true", parameters=[
        {"name": "db_password", "label": "db_password", "required": True, "default": ""},
        {"name": "api_token", "label": "api_token", "required": False, "default": "public"},
        {"name": "db_name", "label": "db_name", "required": False, "default": "app"}])
    installation = Installation.objects.create(server=alice_server, template=alice_server.os_template, recipe=recipe,
                                               recipe_params={"db_password": SECRET, "db_name": "app"})
    migration.declare_and_seal(apps, None)
    recipe.refresh_from_db()
    installation.refresh_from_db()
    assert [p["secret"] for p in recipe.parameters] == [True, False, False]  # a default: cannot be secret
    assert SECRET not in str(installation.recipe_params)
    from recipes import sealing

    assert sealing.unseal(installation.recipe_params) == {"db_password": SECRET, "db_name": "app"}
    migration.declare_and_seal(apps, None)  # twice: nothing sealed twice
    installation.refresh_from_db()
    assert sealing.unseal(installation.recipe_params) == {"db_password": SECRET, "db_name": "app"}


# --- query parameters a list does not know ------------------------------------------------------

def _list_operations() -> dict[str, list[str]]:
    """Every list of the served schema without path parameters: path → its documented query parameters."""
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    return {path: [p["name"] for p in ops["get"].get("parameters", []) if p["in"] == "query"]
            for path, ops in schema["paths"].items()
            if "get" in ops and "{" not in path and ops["get"]["operationId"].endswith("_list")}


@pytest.mark.django_db
def test_an_unknown_filter_is_refused_by_name_and_lists_nothing(world):
    c = world.client(world.admin_key)
    r = c.get("/api/v1/nodes/?address=192.0.2.1")
    assert r.status_code == 400, r.json()
    body = r.json()
    assert body["code"] == "unknown_filter" and list(body["fields"]) == ["address"]
    assert "address" in body["detail"] and "cluster, name, state" in body["detail"] and "results" not in body
    r = world.client(world.billing_key).get("/api/v1/servers/?customer_external_id=A-1&state=running")
    assert r.status_code == 400 and list(r.json()["fields"]) == ["customer_external_id"]


@pytest.mark.django_db
def test_every_list_refuses_an_unknown_parameter_and_takes_what_its_schema_documents(world):
    c = world.client(world.admin_key)
    lists = _list_operations()
    assert len(lists) >= 15  # every router list, the admin ones too
    for path, documented in lists.items():
        assert {"page", "page_size"} <= set(documented), path
        r = c.get(f"{path}?no_such_filter=1")
        assert r.status_code == 400 and r.json()["code"] == "unknown_filter", (path, r.status_code, r.content[:200])
        assert list(r.json()["fields"]) == ["no_such_filter"], path
        # Every documented parameter is taken (empty: no filtering), with the format override.
        query = "&".join(f"{name}=" for name in documented) + "&format=json"
        r = c.get(f"{path}?{query}")
        assert r.status_code == 200, (path, query, r.content[:300])


@pytest.mark.django_db
def test_a_detail_and_a_list_action_refuse_unknown_parameters_too(world, alice_server):
    c = world.client(world.admin_key)
    assert c.get(f"/api/v1/servers/{alice_server.id}/").status_code == 200
    r = c.get(f"/api/v1/servers/{alice_server.id}/?verbose=1")
    assert r.status_code == 400 and list(r.json()["fields"]) == ["verbose"]
    assert c.get(f"/api/v1/servers/{alice_server.id}/backups/?page=1").status_code == 200
    r = c.get(f"/api/v1/servers/{alice_server.id}/backups/?kind=full")
    assert r.status_code == 400 and list(r.json()["fields"]) == ["kind"]


@pytest.mark.django_db
def test_the_integration_guides_list_calls_use_known_filters(world):
    import re
    from pathlib import Path

    guide = (Path(__file__).resolve().parent.parent / "docs/billing-integration.md").read_text()
    calls = re.findall(r"(?:api/v1|GET )(/[a-z-]+/)\?([a-z_]+)=", guide)  # lists, not /servers/{id}/usage/
    assert len(calls) >= 4
    c = world.client(world.billing_key)
    for path, name in calls:
        r = c.get(f"/api/v1{path}?{name}=")
        assert r.status_code == 200, (path, name, r.content[:200])


@pytest.mark.django_db
def test_the_recipe_form_declares_and_keeps_a_secret_parameter(world):
    from recipes.models import Recipe

    ui = Client()
    ui.force_login(world.admin)
    form = {"name": "Db", "slug": "db", "description": "", "os_families": "tiny", "script": "#!/bin/sh\ntrue\n",
            "enabled": "on", "parameters": "db_password | Password | yes | | secret\ndb_name | Name | no | app"}
    assert ui.post("/admin/recipes/new/", form).status_code == 302
    recipe = Recipe.objects.get(slug="db")
    assert recipe.secret_names == {"db_password"}
    page = ui.get(f"/admin/recipes/{recipe.pk}/edit/").content.decode()
    assert "db_password | Password | yes |  | secret" in page
    # Saved again as the edit form shows it: still secret.
    assert ui.post(f"/admin/recipes/{recipe.pk}/edit/", {**form, "parameters": "db_password | Password | yes |  | secret\n"
                                                                                "db_name | Name | no | app"}).status_code == 302
    recipe.refresh_from_db()
    assert recipe.secret_names == {"db_password"}
    r = ui.post("/admin/recipes/new/", {**form, "slug": "db2", "parameters": "db_password | P | yes | x | secret"})
    assert r.status_code == 200 and "no default" in " ".join(r.context["form"].errors["parameters"])
    assert not Recipe.objects.filter(slug="db2").exists()


@pytest.mark.django_db
def test_a_write_takes_only_the_query_parameters_its_action_reads(world, alice_server):
    c = world.client(world.admin_key)
    r = c.delete(f"/api/v1/servers/{alice_server.id}/?keep_backup=1")  # misspelt: the backups would go too
    assert r.status_code == 400 and r.json()["code"] == "unknown_filter" and list(r.json()["fields"]) == ["keep_backup"]
    r = c.post(f"/api/v1/servers/{alice_server.id}/stop/?force=1", {}, format="json")
    assert r.status_code == 400 and list(r.json()["fields"]) == ["force"]
    assert not Operation.objects.filter(kind__in=["delete", "stop"]).exists()
    r = c.delete(f"/api/v1/servers/{alice_server.id}/?keep_backups=1&format=json")
    assert r.status_code == 202, r.json()
    assert Operation.objects.get(kind="delete").params["keep_backups"] is True

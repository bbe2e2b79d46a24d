"""First run (issue 18): the dashboard's checklist, the quick start's starter plan, and the
provider's own internal customer for an admin's own servers."""

import io
import re

import pytest
from django.core.management import call_command
from django.test import Client

from nodes.models import Network, Node
from panel.accounts.models import AuditEntry, Customer, User
from panel.ipam.models import IpPool
from panel.vps.models import Plan, VirtualServer
from templates_os.models import OsTemplate
from tests.conftest import fake_node

pytestmark = pytest.mark.django_db

STEPS = ["node", "network", "plan", "template", "customer"]


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _checklist(client) -> tuple[dict[str, bool], dict[str, str], str]:
    """The dashboard's checklist: done per step, each step's link, and the <details> tag."""
    page = client.get("/admin/").content.decode()
    details = re.search(r'<details class="card checklist"[^>]*>', page).group(0)
    steps = re.findall(r'<li data-step="(\w+)" data-done="([01])">.*?<a [^>]*href="([^"]+)"', page, re.S)
    return ({key: done == "1" for key, done, _href in steps}, {key: href for key, _done, href in steps}, details)


@pytest.fixture
def admin():
    return User.objects.create_user("first-admin", password="admin-pass-123", role=User.Role.ADMIN)


def test_the_checklist_ticks_each_item_from_the_database(admin):
    from templates_os.repository import scan

    client = _client(admin)
    done, links, details = _checklist(client)
    assert list(done) == STEPS and not any(done.values())
    assert " open" in details and 'data-complete="0"' in details
    assert links == {"node": "/admin/nodes/new/", "network": "/admin/clusters/new/", "plan": "/admin/plans/new/",
                     "template": "/admin/os-templates/", "customer": "/admin/customers/new/"}

    # A node that is not online does not count; its cluster is where a network goes.
    node = fake_node("first", state=Node.State.OFFLINE)
    done, links, _ = _checklist(client)
    assert not done["node"] and links["node"] == "/admin/nodes/"
    assert links["network"] == f"/admin/clusters/{node.cluster_id}/networks/new/"
    Node.objects.filter(pk=node.pk).update(state=Node.State.ONLINE)
    done, _links, _ = _checklist(client)
    assert done == {"node": True, "network": False, "plan": False, "template": False, "customer": False}

    # A network without a pool is not enough: the link goes to a new pool of that network.
    network = Network.objects.create(cluster=node.cluster, name="public", kind="bridged", bridge="br-pub",
                                     interface="eth1")
    done, links, _ = _checklist(client)
    assert not done["network"] and links["network"] == f"/admin/ip-pools/new/?network={network.pk}"
    IpPool.objects.create(name="pub4", network=network, cidr="203.0.113.0/28", gateway="203.0.113.1")
    assert _checklist(client)[0]["network"]

    assert not _checklist(client)[0]["plan"]
    Plan.objects.create(name="small", vcpus=1, ram_mib=256, disk_gib=1)
    assert _checklist(client)[0]["plan"]

    # Templates: only an offered one (valid and enabled) counts.
    scan()  # the tiny demo template on the test share
    assert _checklist(client)[0]["template"]
    OsTemplate.objects.update(enabled=False)
    assert not _checklist(client)[0]["template"]
    OsTemplate.objects.update(enabled=True)

    # The internal customer is not a customer to sell to.
    Customer.internal_customer()
    done, _links, details = _checklist(client)
    assert not done["customer"] and " open" in details
    Customer.objects.create(name="Alice Ltd", email="alice@example.com")
    done, links, details = _checklist(client)
    assert all(done.values())
    assert links == {"node": "/admin/nodes/", "network": "/admin/ip-pools/", "plan": "/admin/plans/",
                     "template": "/admin/os-templates/", "customer": "/admin/customers/"}
    # All done: the checklist folds into one line.
    assert " open" not in details and 'data-complete="1"' in details
    assert "all done" in client.get("/admin/").content.decode()


def test_the_checklist_speaks_russian(admin):
    from django.conf import settings
    from django.utils.translation import trans_real

    po = settings.BASE_DIR / "locale" / "ru" / "LC_MESSAGES" / "django.po"
    mo = po.with_suffix(".mo")
    if not mo.exists() or mo.stat().st_mtime < po.stat().st_mtime:  # `make unit` compiles it first
        call_command("compilemessages", locale=["ru"], ignore_patterns=[".venv", ".cache", "data"], verbosity=0)
        trans_real._translations = {}
    User.objects.filter(pk=admin.pk).update(language="ru")
    client = _client(admin)
    page = client.get("/admin/", HTTP_ACCEPT_LANGUAGE="ru").content.decode()
    assert "Первые шаги" in page and "Узел в сети" in page


def test_the_starter_plan_is_created_once(db):
    out = io.StringIO()
    call_command("create_admin", stdout=out)
    lines = out.getvalue().strip().splitlines()
    assert lines[0].startswith("starter plan 'Starter'")
    assert lines[-1].startswith("admin login: admin / ")  # tests/e2e read the password from the last line
    plan = Plan.objects.get()
    assert (plan.name, plan.vcpus, plan.ram_mib, plan.disk_gib) == ("Starter", 1, 512, 2)
    assert plan.bandwidth_mbit == 0 and plan.traffic_gib == 0 and plan.ipv4_count == 1
    assert plan.disk_gib >= OsTemplate(min_disk_gib=1).min_disk_gib

    # Again (every `make run`): no second plan, and an admin's change to it stays.
    Plan.objects.filter(pk=plan.pk).update(ram_mib=1024)
    out = io.StringIO()
    call_command("create_admin", stdout=out)
    assert "starter plan" not in out.getvalue() and Plan.objects.get().ram_mib == 1024
    # A panel that has plans of its own gets none.
    Plan.objects.all().delete()
    Plan.objects.create(name="own", vcpus=2, ram_mib=2048, disk_gib=20)
    call_command("create_admin", stdout=io.StringIO())
    assert list(Plan.objects.values_list("name", flat=True)) == ["own"]
    Plan.objects.all().delete()
    call_command("create_admin", "--no-starter-plan", stdout=io.StringIO())
    assert not Plan.objects.exists()


def test_an_admin_creates_a_server_for_the_internal_customer(admin, settings, tmp_path):
    from templates_os.repository import scan

    plan = Plan.objects.create(name="small", vcpus=1, ram_mib=256, disk_gib=1)
    node = fake_node("own")
    scan()
    alice_customer = Customer.objects.create(name="Alice Ltd", email="alice@example.com")
    alice = User.objects.create_user("alice", password="alice-pass-123", customer=alice_customer)
    client = _client(admin)

    form = client.get("/admin/servers/new/").content.decode()
    assert "Our own (internal)" in form and "Alice Ltd" in form
    assert not Customer.objects.filter(internal=True).exists()  # made on first use, not by looking
    assert f'<option value="{plan.pk}" selected>' in form  # the only plan is chosen already

    r = client.post("/admin/servers/new/", {"customer": "", "plan": plan.pk, "hostname": "own-1", "os_template": "tiny"})
    server = VirtualServer.objects.get(hostname="own-1")
    assert r["Location"] == f"/servers/{server.pk}/"
    internal = Customer.objects.get(internal=True)
    assert server.customer == internal and server.node == node
    server.refresh_from_db()
    assert server.state == "running", server.error
    assert AuditEntry.objects.filter(action="customer.create", object_id=str(internal.pk)).exists()

    # A second one reuses the internal customer; the form never lists it twice.
    client.post("/admin/servers/new/", {"plan": plan.pk, "hostname": "own-2", "os_template": "tiny"})
    assert Customer.objects.filter(internal=True).count() == 1
    assert set(internal.servers.values_list("hostname", flat=True)) == {"own-1", "own-2"}
    assert client.get("/admin/servers/new/").content.decode().count(f">{internal.name}</option>") == 1

    # Tenancy: a customer's user sees none of it, in the UI or the API.
    alice_client = _client(alice)
    assert "own-1" not in alice_client.get("/servers/").content.decode()
    assert alice_client.get(f"/servers/{server.pk}/").status_code == 404
    from panel.accounts.models import ApiKey

    _key, raw = ApiKey.issue(name="alice", scope="customer", customer=alice_customer)
    api = Client(HTTP_AUTHORIZATION=f"Token {raw}")
    assert api.get(f"/api/v1/servers/{server.pk}/").status_code == 404
    assert "own-1" not in api.get("/api/v1/servers/").content.decode()
    # The admin sees it, under the internal customer.
    assert "own-1" in client.get(f"/admin/servers/?customer={internal.pk}").content.decode()


def test_a_refused_own_server_leaves_no_internal_customer(admin):
    from templates_os.repository import scan

    plan = Plan.objects.create(name="huge", vcpus=1, ram_mib=1024 * 1024, disk_gib=1)
    fake_node("small")
    scan()
    r = _client(admin).post("/admin/servers/new/", {"plan": plan.pk, "hostname": "too-big", "os_template": "tiny"})
    assert r.status_code == 200 and "No node can take this server" in r.content.decode()
    assert not Customer.objects.filter(internal=True).exists()
    assert not VirtualServer.objects.exists()


def test_the_api_still_requires_a_customer_from_an_admin(admin):
    from panel.accounts.models import ApiKey
    from templates_os.repository import scan

    plan = Plan.objects.create(name="small", vcpus=1, ram_mib=256, disk_gib=1)
    fake_node("api")
    scan()
    _key, raw = ApiKey.issue(name="admin", scope="admin")
    api = Client(HTTP_AUTHORIZATION=f"Token {raw}")
    r = api.post("/api/v1/servers/", {"plan": plan.pk, "hostname": "api-1", "os_template": "tiny"},
                 content_type="application/json")
    assert r.status_code == 400 and "customer" in r.content.decode()
    assert not Customer.objects.filter(internal=True).exists()

"""The web UI of networks, IP pools and addresses: the admin pages, the server page's addresses
card (reverse DNS by the owner), and the new-server form's private network card."""

import pytest

from nodes.connection import driver_for
from nodes.models import Network
from panel.accounts.models import AuditEntry
from panel.ipam.models import IpAddress, IpPool
from panel.vps.models import Operation, ServerNic, VirtualServer
from tests.test_ui_isolation import ui_inline, ui_world  # noqa: F401  (fixtures)
from tests.test_ui_views import messages_of, ui_russian_catalog  # noqa: F401  (fixture)

pytestmark = pytest.mark.django_db


@pytest.fixture
def public(ui_world):
    """A public network with a /28 pool in the servers' cluster (the servers predate it)."""
    network = Network.objects.create(cluster=ui_world.node.cluster, name="public", kind="bridged", bridge="br-pub",
                                     interface="eth1")
    pool = IpPool.objects.create(name="pub4", network=network, cidr="203.0.113.0/28", gateway="203.0.113.1",
                                 excluded="203.0.113.2", quarantine_minutes=60)
    return network, pool


@pytest.fixture
def addressed(ui_world, public, ui_inline):  # noqa: F811
    """Alice's and Bob's servers each with an address of the pool (given the real way)."""
    from panel.accounts.tenancy import SYSTEM
    from panel.ipam import actions

    _network, pool = public
    alice_ip = actions.add_address(SYSTEM, ui_world.alice_server.pk, pool)
    bob_ip = actions.add_address(SYSTEM, ui_world.bob_server.pk, pool)
    return alice_ip, bob_ip


def pool_data(network, **changes) -> dict:
    return {"name": "extra", "network": network.pk, "cidr": "198.51.100.0/24", "first": "", "last": "",
            "gateway": "198.51.100.1", "dns": "", "excluded": "", "assign": "address", "quarantine_minutes": 30,
            **changes}


def network_data(**changes) -> dict:
    return {"name": "private", "kind": "nat", "bridge": "br-nat", "interface": "", "vlan": "",
            "nat_cidr": "10.10.0.0/24", **changes}


def row_of(page: str, marker: str) -> str:
    start = page.index(marker)
    return page[start:page.index("</tr>", start)]


# --- Customers see none of the admin side -----------------------------------------------------

def test_customers_get_404_on_every_admin_ipam_page(ui_world, public, addressed):
    network, pool = public
    alice_ip, _bob_ip = addressed
    cluster = network.cluster
    gets = ["/admin/ip-pools/", "/admin/ip-pools/new/", f"/admin/ip-pools/{pool.pk}/",
            f"/admin/ip-pools/{pool.pk}/edit/", f"/admin/clusters/{cluster.pk}/networks/new/",
            f"/admin/networks/{network.pk}/edit/"]
    posts = {
        "/admin/ip-pools/new/": pool_data(network),
        f"/admin/ip-pools/{pool.pk}/edit/": pool_data(network, name="pub4", cidr="203.0.113.0/28"),
        f"/admin/ip-pools/{pool.pk}/delete/": {},
        f"/admin/ip-pools/{pool.pk}/addresses/new/": {"server": ui_world.alice_server.pk, "address": ""},
        f"/admin/ip-addresses/{alice_ip.pk}/move/": {"server": ui_world.bob_server.pk},
        f"/admin/ip-addresses/{alice_ip.pk}/release/": {},
        f"/admin/servers/{ui_world.alice_server.pk}/addresses/new/": {"pool": pool.pk, "address": ""},
        f"/admin/clusters/{cluster.pk}/networks/new/": network_data(),
        f"/admin/networks/{network.pk}/edit/": network_data(name="public", bridge="br-pub"),
        f"/admin/networks/{network.pk}/delete/": {},
    }
    audit_before, ops_before = AuditEntry.objects.count(), Operation.objects.count()
    for user in (ui_world.alice, ui_world.bob):
        client = ui_world.client(user)
        for url in gets:
            assert client.get(url).status_code == 404, url
        for url, data in posts.items():
            assert client.post(url, data).status_code == 404, url
        # Nor on the server page: no pool names, no admin forms, no nav entry.
        page = client.get(f"/servers/{ui_world.alice_server.pk if user == ui_world.alice else ui_world.bob_server.pk}/")
        text = page.content.decode()
        assert page.status_code == 200 and "pub4" not in text and "/admin/ip-pools/" not in text
        assert "/release/" not in text and 'id="server-address-add"' not in text
    alice_ip.refresh_from_db()
    assert alice_ip.server_id == ui_world.alice_server.pk and alice_ip.released_at is None
    assert IpPool.objects.count() == 1 and Network.objects.count() == 1
    assert network.name == Network.objects.get().name and IpPool.objects.get().cidr == "203.0.113.0/28"
    assert ui_world.alice_server.ip_addresses.count() == 1
    assert AuditEntry.objects.count() == audit_before and Operation.objects.count() == ops_before
    assert ui_world.client(None).get("/admin/ip-pools/").status_code == 302


# --- Reverse DNS on the server page -----------------------------------------------------------

def test_owner_edits_ptr_and_sees_errors(ui_world, addressed):
    alice_ip, _ = addressed
    server = ui_world.alice_server
    alice = ui_world.client(ui_world.alice)
    page = alice.get(f"/servers/{server.pk}/").content.decode()
    assert "203.0.113.3/28" in row_of(page, 'data-address="203.0.113.3"')
    url = f"/servers/{server.pk}/addresses/{alice_ip.pk}/ptr/"
    field = f"ip{alice_ip.pk}-ptr"

    r = alice.post(url, {field: "web.alice.example"})
    assert r.status_code == 302 and r["Location"] == f"/servers/{server.pk}/"
    alice_ip.refresh_from_db()
    assert alice_ip.ptr == "web.alice.example"
    assert AuditEntry.objects.filter(action="ip.ptr", object_id=str(alice_ip.pk)).exists()
    assert 'value="web.alice.example"' in alice.get(f"/servers/{server.pk}/").content.decode()

    r = alice.post(url, {field: "bad name!"})
    assert r.status_code == 400
    row = row_of(r.content.decode(), 'data-address="203.0.113.3"')
    assert "A hostname is letters, digits, hyphens and dots" in row and 'aria-invalid="true"' in row
    alice_ip.refresh_from_db()
    assert alice_ip.ptr == "web.alice.example"
    assert alice.get(url).status_code == 405


def test_other_customer_cannot_edit_ptr(ui_world, addressed):
    alice_ip, bob_ip = addressed
    bob = ui_world.client(ui_world.bob)
    field = f"ip{alice_ip.pk}-ptr"
    # Alice's server and address; Bob's server with Alice's address; an address id that does not exist.
    for url in [f"/servers/{ui_world.alice_server.pk}/addresses/{alice_ip.pk}/ptr/",
                f"/servers/{ui_world.bob_server.pk}/addresses/{alice_ip.pk}/ptr/",
                f"/servers/{ui_world.bob_server.pk}/addresses/999999/ptr/"]:
        assert bob.post(url, {field: "evil.example"}).status_code == 404, url
    alice_ip.refresh_from_db()
    assert alice_ip.ptr == ""
    # His own works; an admin may set any.
    assert bob.post(f"/servers/{ui_world.bob_server.pk}/addresses/{bob_ip.pk}/ptr/",
                    {f"ip{bob_ip.pk}-ptr": "db.bob.example"}).status_code == 302
    admin = ui_world.client(ui_world.admin)
    assert admin.post(f"/servers/{ui_world.alice_server.pk}/addresses/{alice_ip.pk}/ptr/",
                      {field: "set.by.admin"}).status_code == 302
    alice_ip.refresh_from_db()
    bob_ip.refresh_from_db()
    assert alice_ip.ptr == "set.by.admin" and bob_ip.ptr == "db.bob.example"


def test_released_address_ptr_is_nobodys(ui_world, addressed):
    alice_ip, _ = addressed
    IpAddress.objects.filter(pk=alice_ip.pk).update(server=None)
    alice = ui_world.client(ui_world.alice)
    r = alice.post(f"/servers/{ui_world.alice_server.pk}/addresses/{alice_ip.pk}/ptr/",
                   {f"ip{alice_ip.pk}-ptr": "x.example"})
    assert r.status_code == 404


# --- Pools --------------------------------------------------------------------------------

def test_pool_form_errors_and_create_edit(ui_world, public):
    network, _pool = public
    admin = ui_world.client(ui_world.admin)
    r = admin.post("/admin/ip-pools/new/", pool_data(network, cidr="203.0.113.8/29", gateway="203.0.113.9"))
    assert r.status_code == 200 and "Overlaps pool pub4" in " ".join(r.context["form"].errors["cidr"])
    r = admin.post("/admin/ip-pools/new/", pool_data(network, gateway="192.0.2.1"))
    assert r.status_code == 200 and "is outside 198.51.100.0/24" in " ".join(r.context["form"].errors["gateway"])
    r = admin.post("/admin/ip-pools/new/", pool_data(network, excluded="198.51.100.7\n10.0.0.1"))
    assert r.status_code == 200 and "10.0.0.1 is outside" in " ".join(r.context["form"].errors["excluded"])
    r = admin.post("/admin/ip-pools/new/", pool_data(network, cidr="198.51.100.1/24"))
    assert r.status_code == 200 and r.context["form"].errors["cidr"]
    r = admin.post("/admin/ip-pools/new/", pool_data(network, first="198.51.100.200", last="198.51.100.100"))
    assert r.status_code == 200 and r.context["form"].errors["last"]
    assert "Overlaps pool" not in r.content.decode()
    assert IpPool.objects.count() == 1

    r = admin.post("/admin/ip-pools/new/", pool_data(network))
    extra = IpPool.objects.get(name="extra")
    assert r["Location"] == f"/admin/ip-pools/{extra.pk}/" and extra.gateway == "198.51.100.1"
    assert AuditEntry.objects.filter(action="ip_pool.create", object_id=str(extra.pk)).exists()
    # Editing into the other pool's subnet is refused; a new gateway is fine.
    r = admin.post(f"/admin/ip-pools/{extra.pk}/edit/", pool_data(network, cidr="203.0.113.0/24",
                                                                   gateway="203.0.113.254"))
    assert r.status_code == 200 and r.context["form"].errors["cidr"]
    r = admin.post(f"/admin/ip-pools/{extra.pk}/edit/", pool_data(network, gateway="198.51.100.254"))
    extra.refresh_from_db()
    assert r.status_code == 302 and extra.gateway == "198.51.100.254" and extra.cidr == "198.51.100.0/24"
    # A NAT network's pool lies inside its private range.
    nat = Network.objects.create(cluster=network.cluster, name="private", kind="nat", bridge="br-nat",
                                 nat_cidr="10.10.0.0/24")
    r = admin.post("/admin/ip-pools/new/", pool_data(nat, name="nat4", cidr="10.20.0.0/24", gateway=""))
    assert r.status_code == 200 and "inside its private range" in " ".join(r.context["form"].errors["cidr"])


def test_pool_list_and_detail_show_usage(ui_world, public, addressed):
    _network, pool = public
    alice_ip, bob_ip = addressed
    from panel.accounts.tenancy import SYSTEM
    from panel.ipam import actions

    actions.remove_address(SYSTEM, bob_ip.pk)  # in quarantine now
    admin = ui_world.client(ui_world.admin)
    page = admin.get("/admin/ip-pools/").content.decode()
    assert 'href="/admin/ip-pools/"' in page  # the nav entry
    row = row_of(page, 'data-pool="pub4"')
    # /28: .1–.14 are hosts, .1 the gateway and .2 excluded → 12; Alice has one, Bob's is in quarantine.
    assert "203.0.113.0/28" in row and "203.0.113.1" in row and "c1/public" in row
    assert "1 used · 1 in quarantine · 10 free of 12" in row and "stack-used" in row
    detail = admin.get(f"/admin/ip-pools/{pool.pk}/").content.decode()
    assert "1 used · 1 in quarantine · 10 free of 12" in detail
    used = row_of(detail, f'data-address="{alice_ip.address}"')
    assert f'href="/servers/{ui_world.alice_server.pk}/"' in used and "alice-web" in used
    released = row_of(detail, f'data-address="{bob_ip.address}"')
    assert "in quarantine" in released and "released" in released and "bob-db" not in released
    only_used = admin.get(f"/admin/ip-pools/{pool.pk}/?show=used").content.decode()
    assert alice_ip.address in only_used and f'data-address="{bob_ip.address}"' not in only_used


def test_admin_adds_moves_and_releases_an_address(ui_world, public):
    _network, pool = public
    admin = ui_world.client(ui_world.admin)
    alice_server, bob_server = ui_world.alice_server, ui_world.bob_server

    # From the pool page: a specific address that is the gateway is refused, shown on the form.
    r = admin.post(f"/admin/ip-pools/{pool.pk}/addresses/new/", {"server": alice_server.pk, "address": "203.0.113.1"})
    assert r.status_code == 400 and r.context["add_form"].errors["address"]
    r = admin.post(f"/admin/ip-pools/{pool.pk}/addresses/new/", {"server": 999999, "address": ""})
    assert r.status_code == 400 and r.context["add_form"].errors["server"]
    assert not IpAddress.objects.exists()

    r = admin.post(f"/admin/ip-pools/{pool.pk}/addresses/new/", {"server": alice_server.pk, "address": "203.0.113.7"})
    assert r.status_code == 302 and r["Location"] == f"/admin/ip-pools/{pool.pk}/"
    row = IpAddress.objects.get(address="203.0.113.7")
    assert row.server_id == alice_server.pk
    op = Operation.objects.filter(server=alice_server, kind=Operation.Kind.NETWORK_UPDATE).get()
    assert op.status == Operation.Status.SUCCEEDED, op.error
    domain = driver_for(ui_world.node.uri).host.domains[alice_server.domain_name]
    assert any("203.0.113.7" in nic.ips for nic in domain["spec"].nics)
    assert AuditEntry.objects.filter(action="ip.add", object_id=str(row.pk)).exists()
    # Taken now: a second time is refused.
    r = admin.post(f"/admin/ip-pools/{pool.pk}/addresses/new/", {"server": bob_server.pk, "address": "203.0.113.7"})
    assert r.status_code == 400 and "in use or in quarantine" in " ".join(r.context["add_form"].errors["address"])

    # Move to Bob's server: both servers' NICs are updated.
    r = admin.post(f"/admin/ip-addresses/{row.pk}/move/", {"server": bob_server.pk})
    assert r.status_code == 302 and r["Location"] == f"/admin/ip-pools/{pool.pk}/"
    row.refresh_from_db()
    assert row.server_id == bob_server.pk
    assert Operation.objects.filter(server=bob_server, kind=Operation.Kind.NETWORK_UPDATE,
                                    status=Operation.Status.SUCCEEDED).exists()
    assert Operation.objects.filter(server=alice_server, kind=Operation.Kind.NETWORK_UPDATE).count() == 2
    r = admin.post(f"/admin/ip-addresses/{row.pk}/move/", {"server": "nope"}, follow=True)
    assert "No server with that number" in " ".join(messages_of(r))

    # From the server page: Bob's server shows it with a Release button; released → quarantine.
    page = admin.get(f"/servers/{bob_server.pk}/").content.decode()
    assert f'action="/admin/ip-addresses/{row.pk}/release/"' in page and 'id="server-address-add"' in page
    r = admin.post(f"/admin/ip-addresses/{row.pk}/release/", {"next": f"/servers/{bob_server.pk}/"})
    assert r.status_code == 302 and r["Location"] == f"/servers/{bob_server.pk}/"
    row.refresh_from_db()
    assert row.server_id is None and row.released_at is not None
    assert Operation.objects.filter(server=bob_server, kind=Operation.Kind.NETWORK_UPDATE).count() == 2
    assert 'data-address="203.0.113.7"' not in admin.get(f"/servers/{bob_server.pk}/").content.decode()
    # An external "next" is not followed.
    r = admin.post(f"/admin/ip-addresses/{row.pk}/release/", {"next": "https://evil.example/"})
    assert r["Location"] == f"/admin/ip-pools/{pool.pk}/"


def test_admin_adds_an_address_from_the_server_page(ui_world, public):
    network, pool = public
    admin = ui_world.client(ui_world.admin)
    server = ui_world.alice_server
    # A pool of another cluster's network is not offered (and refused if posted).
    from nodes.models import Cluster

    other = Network.objects.create(cluster=Cluster.objects.create(name="c2"), name="public", kind="bridged",
                                   bridge="br-pub", interface="eth1")
    far = IpPool.objects.create(name="far4", network=other, cidr="192.0.2.0/24")
    page = admin.get(f"/servers/{server.pk}/").content.decode()
    form = page[page.index('id="server-address-add"'):]
    assert f'<option value="{pool.pk}">' in form and "far4" not in form
    r = admin.post(f"/admin/servers/{server.pk}/addresses/new/", {"pool": far.pk, "address": ""})
    assert r.status_code == 400 and not server.ip_addresses.exists()

    r = admin.post(f"/admin/servers/{server.pk}/addresses/new/", {"pool": pool.pk, "address": ""})
    assert r.status_code == 302 and r["Location"] == f"/servers/{server.pk}/"
    row = server.ip_addresses.get()
    assert row.address == "203.0.113.3" and ServerNic.objects.filter(server=server, network=network).exists()
    assert Operation.objects.filter(server=server, kind=Operation.Kind.NETWORK_UPDATE,
                                    status=Operation.Status.SUCCEEDED).exists()
    r = admin.post(f"/admin/servers/{server.pk}/addresses/new/", {"pool": pool.pk, "address": "203.0.113.200"})
    assert r.status_code == 400 and "not in the range" in r.content.decode()
    page = admin.get(f"/servers/{server.pk}/").content.decode()
    assert "203.0.113.3/28" in page and f'href="/admin/ip-pools/{pool.pk}/"' in page


def test_pool_in_use_cannot_be_deleted(ui_world, public, addressed):
    _network, pool = public
    admin = ui_world.client(ui_world.admin)
    r = admin.post(f"/admin/ip-pools/{pool.pk}/delete/", follow=True)
    assert "Addresses of this pool are in use" in " ".join(messages_of(r)) and IpPool.objects.filter(pk=pool.pk).exists()
    IpAddress.objects.update(server=None)  # all released (in quarantine)
    r = admin.post(f"/admin/ip-pools/{pool.pk}/delete/")
    assert r["Location"] == "/admin/ip-pools/" and not IpPool.objects.exists() and not IpAddress.objects.exists()
    assert AuditEntry.objects.filter(action="ip_pool.delete").exists()


# --- Networks on the cluster page ---------------------------------------------------------

def test_network_create_edit_and_delete(ui_world, public):
    network, pool = public
    cluster = network.cluster
    admin = ui_world.client(ui_world.admin)
    page = admin.get(f"/admin/clusters/{cluster.pk}/").content.decode()
    row = row_of(page, 'data-network="public"')
    assert "br-pub" in row and "eth1" in row and "pub4" in row
    assert "re-install" in page.lower()

    url = f"/admin/clusters/{cluster.pk}/networks/new/"
    assert "(re-)installed" in admin.get(url).content.decode()
    r = admin.post(url, network_data(nat_cidr="8.8.8.0/24"))
    assert r.status_code == 200 and r.context["form"].errors["nat_cidr"]
    r = admin.post(url, network_data(kind="bridged", nat_cidr=""))
    assert r.status_code == 200 and r.context["form"].errors["interface"]
    r = admin.post(url, network_data(bridge="br-pub"))
    assert r.status_code == 200 and r.context["form"].errors["bridge"]
    r = admin.post(url, network_data(name="public"))
    assert r.status_code == 200 and r.context["form"].errors["name"]
    r = admin.post(url, network_data())
    nat = Network.objects.get(name="private")
    assert r["Location"] == f"/admin/clusters/{cluster.pk}/" and nat.nat_cidr == "10.10.0.0/24"
    assert AuditEntry.objects.filter(action="network.create", object_id=str(nat.pk)).exists()
    r = admin.post(f"/admin/networks/{nat.pk}/edit/", network_data(nat_cidr="10.10.1.0/23"))
    assert r.status_code == 200 and r.context["form"].errors["nat_cidr"]  # not a network address
    r = admin.post(f"/admin/networks/{nat.pk}/edit/", network_data(nat_cidr="10.10.0.0/16"))
    nat.refresh_from_db()
    assert r.status_code == 302 and nat.nat_cidr == "10.10.0.0/16"

    # A network with a pool (or NICs) stays; an unused one goes.
    r = admin.post(f"/admin/networks/{network.pk}/delete/", follow=True)
    assert "Servers or IP pools use this network" in " ".join(messages_of(r))
    assert Network.objects.filter(pk=network.pk).exists() and IpPool.objects.filter(pk=pool.pk).exists()
    r = admin.post(f"/admin/networks/{nat.pk}/delete/")
    assert r["Location"] == f"/admin/clusters/{cluster.pk}/" and not Network.objects.filter(pk=nat.pk).exists()
    assert AuditEntry.objects.filter(action="network.delete").exists()


def test_network_with_nics_but_no_pool_cannot_be_deleted(ui_world):
    network = Network.objects.create(cluster=ui_world.node.cluster, name="lan", kind="bridged", bridge="br-lan",
                                     interface="eth2")
    ServerNic.objects.create(server=ui_world.alice_server, network=network)
    admin = ui_world.client(ui_world.admin)
    r = admin.post(f"/admin/networks/{network.pk}/delete/", follow=True)
    assert "Servers or IP pools use this network" in " ".join(messages_of(r))
    assert Network.objects.filter(pk=network.pk).exists()


def test_cluster_with_pools_is_not_deleted(ui_world):
    from nodes.models import Cluster

    cluster = Cluster.objects.create(name="empty")
    network = Network.objects.create(cluster=cluster, name="public", kind="bridged", bridge="br0", interface="eth0")
    IpPool.objects.create(name="p", network=network, cidr="192.0.2.0/24")
    admin = ui_world.client(ui_world.admin)
    r = admin.post(f"/admin/clusters/{cluster.pk}/delete/", follow=True)
    assert r.status_code == 200 and "IP pools or servers use this cluster's networks" in " ".join(messages_of(r))
    assert Cluster.objects.filter(pk=cluster.pk).exists()


# --- The new-server form's private network card -------------------------------------------

def test_new_server_with_a_private_network_card(ui_world, public):
    network, _pool = public
    nat = Network.objects.create(cluster=network.cluster, name="private", kind="nat", bridge="br-nat",
                                 nat_cidr="10.10.0.0/24")
    IpPool.objects.create(name="nat4", network=nat, cidr="10.10.0.0/24", gateway="10.10.0.1")
    admin = ui_world.client(ui_world.admin)
    page = admin.get("/admin/servers/new/").content.decode()
    assert 'name="private_network"' in page and "Also a private network card (NAT)" in page
    data = {"customer": ui_world.alice_customer.pk, "plan": ui_world.plan.pk, "hostname": "with-lan",
            "os_template": "tiny", "node": "", "private_network": "on"}
    r = admin.post("/admin/servers/new/", data)
    server = VirtualServer.objects.get(hostname="with-lan")
    assert r.status_code == 302 and r["Location"] == f"/servers/{server.pk}/"
    assert set(server.nics.values_list("network__name", flat=True)) == {"public", "private"}
    private = server.ip_addresses.get(pool__network=nat)
    assert private.address == "10.10.0.2"
    # Without the box: no card on the NAT network.
    r = admin.post("/admin/servers/new/", {**data, "hostname": "no-lan", "private_network": ""})
    plain = VirtualServer.objects.get(hostname="no-lan")
    assert not plain.nics.filter(network=nat).exists()
    # The owner sees both addresses on the server page, without pool names.
    alice_page = ui_world.client(ui_world.alice).get(f"/servers/{server.pk}/").content.decode()
    assert "10.10.0.2/24" in alice_page and "nat4" not in alice_page and "Private, with NAT" in alice_page


def test_new_server_private_network_refused_without_a_nat_network(ui_world):
    admin = ui_world.client(ui_world.admin)
    data = {"customer": ui_world.alice_customer.pk, "plan": ui_world.plan.pk, "hostname": "no-nat",
            "os_template": "tiny", "node": "", "private_network": "on"}
    r = admin.post("/admin/servers/new/", data)
    assert r.status_code == 200 and "no private network" in " ".join(r.context["form"].errors["private_network"])
    assert not VirtualServer.objects.filter(hostname="no-nat").exists()


def test_ipam_pages_in_russian(ui_world, public, addressed, ui_russian_catalog):
    network, pool = public
    admin = ui_world.client(ui_world.admin)
    admin.post("/language/", {"language": "ru", "next": "/admin/ip-pools/"})
    page = admin.get("/admin/ip-pools/").content.decode()
    assert "IP-пулы" in page and "New IP pool" not in page and "used ·" not in page
    for url in ["/admin/ip-pools/new/", f"/admin/ip-pools/{pool.pk}/", f"/admin/ip-pools/{pool.pk}/edit/",
                f"/admin/clusters/{network.cluster_id}/", f"/admin/clusters/{network.cluster_id}/networks/new/",
                f"/admin/networks/{network.pk}/edit/", f"/servers/{ui_world.alice_server.pk}/", "/admin/servers/new/"]:
        r = admin.get(url)
        assert r.status_code == 200, url
    r = admin.post("/admin/ip-pools/new/", pool_data(network, cidr="203.0.113.8/29", gateway=""))
    assert "Пересекается" in " ".join(r.context["form"].errors["cidr"])

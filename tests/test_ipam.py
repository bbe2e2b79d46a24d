"""IP pools and addresses: validation, allocation, exhaustion, release with quarantine,
reverse DNS, tenancy — and 50 concurrent creates against 40 free addresses on MariaDB."""


import pytest
from django.db import connection

from nodes.models import Network
from panel.ipam.models import IpAddress, IpPool
from panel.vps.models import Operation, VirtualServer
from tests.conftest import create_concurrently, fake_node

pytestmark = pytest.mark.django_db


@pytest.fixture
def public(world):
    network = Network.objects.create(cluster=world.node.cluster, name="public", kind="bridged", bridge="br-pub",
                                     interface="eth1")
    pool = IpPool.objects.create(name="pub4", network=network, cidr="203.0.113.0/28", gateway="203.0.113.1",
                                 dns="203.0.113.53", excluded="203.0.113.2", quarantine_minutes=60)
    return network, pool


def create(world, key=None, **body):
    body = {"customer": world.alice_customer.id, "plan": world.plan.id, "hostname": "web", "os_template": "tiny", **body}
    return world.client(key or world.billing_key).post("/api/v1/servers/", body, format="json")


def test_a_server_gets_the_first_free_address_and_the_guest_is_told(world, public):
    _network, pool = public
    r = create(world)
    assert r.status_code == 202 and r.data["status"] == "succeeded", r.data
    server = r.data["server_state"]
    assert server["ipv4"] == ["203.0.113.3"]  # .1 is the gateway, .2 excluded
    from nodes.connection import driver_for

    spec = driver_for("fake://fake1").host.domains[VirtualServer.objects.get(pk=server["id"]).domain_name]["spec"]
    assert spec.nics[0].bridge == "br-pub" and spec.nics[0].ips == ("203.0.113.3",)
    assert "panel.ip=eth0,203.0.113.3/28,203.0.113.1" in spec.kernel_boot.cmdline
    assert "panel.dns=203.0.113.53" in spec.kernel_boot.cmdline


def test_bandwidth_of_the_plan_limits_the_nic(world, public):
    world.plan.bandwidth_mbit = 100
    world.plan.save()
    r = create(world)
    from nodes.connection import driver_for

    spec = driver_for("fake://fake1").host.domains[VirtualServer.objects.get(pk=r.data["server"]).domain_name]["spec"]
    assert spec.nics[0].average_kbytes == 12207  # 100 Mbit/s in KiB/s


def test_an_exhausted_pool_is_a_409_and_nothing_is_made(world, public):
    _network, pool = public
    pool.last = "203.0.113.4"  # room for .3 and .4
    pool.save()
    assert create(world, hostname="a").status_code == 202
    assert create(world, hostname="b").status_code == 202
    servers, ops = VirtualServer.objects.count(), Operation.objects.count()
    world.node.refresh_from_db()
    alloc = world.node.alloc_ram_mib
    r = create(world, hostname="c")
    assert r.status_code == 409 and r.data["code"] == "pool_exhausted" and "IPv4" in r.data["detail"]
    assert VirtualServer.objects.count() == servers and Operation.objects.count() == ops
    world.node.refresh_from_db()
    assert world.node.alloc_ram_mib == alloc  # the placement was undone too


def test_a_deleted_servers_address_waits_out_its_quarantine(world, public, settings):
    _network, pool = public
    first = create(world, hostname="a").data["server"]
    world.client(world.billing_key).delete(f"/api/v1/servers/{first}/")
    row = IpAddress.objects.get(address="203.0.113.3")
    assert row.server is None and row.released_at is not None
    # In quarantine: the next server gets .4, not .3.
    assert create(world, hostname="b").data["server_state"]["ipv4"] == ["203.0.113.4"]
    IpPool.objects.filter(pk=pool.pk).update(quarantine_minutes=0)
    assert create(world, hostname="c").data["server_state"]["ipv4"] == ["203.0.113.3"]
    usage = world.client(world.admin_key).get(f"/api/v1/ip-pools/{pool.id}/").data["usage"]
    assert usage == {"total": 12, "used": 2, "quarantined": 0, "free": 10}


@pytest.mark.parametrize("body, field", [
    ({"cidr": "203.0.113.8/29"}, "cidr"),  # overlaps pub4
    ({"cidr": "198.51.100.0/24", "gateway": "192.0.2.1"}, "gateway"),
    ({"cidr": "198.51.100.0/24", "first": "198.51.100.50", "last": "198.51.100.10"}, "last"),
    ({"cidr": "198.51.100.0/24", "excluded": "10.0.0.1"}, "excluded"),
    ({"cidr": "198.51.100.0/33"}, "cidr"),
    ({"cidr": "198.51.100.0/24", "dns": "not-an-ip"}, "dns"),
])
def test_bad_pools_are_refused_with_the_field_and_change_nothing(world, public, body, field):
    network, _pool = public
    r = world.client(world.admin_key).post("/api/v1/ip-pools/", {"name": "new", "network": network.id, **body},
                                           format="json")
    assert r.status_code == 400 and field in r.data["fields"], r.data
    assert IpPool.objects.count() == 1


def test_admins_add_move_and_remove_addresses_on_running_servers(world, public):
    _network, pool = public
    admin = world.client(world.admin_key)
    a = create(world, hostname="a").data["server"]
    b = create(world, hostname="b").data["server"]
    r = admin.post("/api/v1/ip-addresses/", {"server": a, "pool": pool.id, "address": "203.0.113.2"}, format="json")
    assert r.status_code == 409 and r.data["code"] == "address_excluded"
    r = admin.post("/api/v1/ip-addresses/", {"server": a, "pool": pool.id, "address": "203.0.113.4"}, format="json")
    assert r.status_code == 409 and r.data["code"] == "address_taken"  # b has it
    r = admin.post("/api/v1/ip-addresses/", {"server": a, "pool": pool.id, "address": "203.0.113.9"}, format="json")
    assert r.status_code == 201, r.data
    extra = r.data["id"]
    from nodes.connection import driver_for

    server_a = VirtualServer.objects.get(pk=a)
    live = driver_for("fake://fake1").host.domains[server_a.domain_name]["live_nics"]
    assert list(live.values())[0].ips == ("203.0.113.3", "203.0.113.9")  # the filter follows, live
    assert Operation.objects.filter(server=server_a, kind="network_update", status="succeeded").exists()
    r = admin.patch(f"/api/v1/ip-addresses/{extra}/", {"server": b}, format="json")
    assert r.status_code == 200 and r.data["server"] == b
    assert admin.get(f"/api/v1/servers/{b}/").data["ipv4"] == ["203.0.113.4", "203.0.113.9"]
    assert admin.delete(f"/api/v1/ip-addresses/{extra}/").status_code == 204
    assert admin.get(f"/api/v1/servers/{b}/").data["ipv4"] == ["203.0.113.4"]


def test_the_owner_sets_reverse_dns_and_nobody_else_sees_it(world, public):
    alice_server = create(world, hostname="a").data["server"]
    row = IpAddress.objects.get(server_id=alice_server)
    alice, bob = world.client(world.alice_key), world.client(world.bob_key)
    r = alice.patch(f"/api/v1/ip-addresses/{row.id}/", {"ptr": "mail.alice.example"}, format="json")
    assert r.status_code == 200 and r.data["ptr"] == "mail.alice.example"
    assert alice.patch(f"/api/v1/ip-addresses/{row.id}/", {"ptr": "x;rm"}, format="json").status_code == 400
    assert alice.patch(f"/api/v1/ip-addresses/{row.id}/", {"server": alice_server}, format="json").status_code == 403
    assert bob.get(f"/api/v1/ip-addresses/{row.id}/").status_code == 404
    assert bob.patch(f"/api/v1/ip-addresses/{row.id}/", {"ptr": "evil.example"}, format="json").status_code == 404
    assert bob.get("/api/v1/ip-addresses/").data["count"] == 0
    assert bob.get("/api/v1/ip-pools/").status_code == 403
    row.refresh_from_db()
    assert row.ptr == "mail.alice.example"


@pytest.mark.django_db(transaction=True)
def test_fifty_concurrent_creates_against_forty_free_addresses():
    from panel.accounts.models import Customer
    from panel.vps.models import Plan

    if connection.vendor == "sqlite":
        pytest.skip("needs a database with row locks and concurrent writers (make test runs MariaDB)")
    customer = Customer.objects.create(name="C", email="c@example.com")
    plan = Plan.objects.create(name="p", vcpus=1, ram_mib=64, disk_gib=1)
    node = fake_node("big", ram_mib=1024 * 1024, cpus=512)
    network = Network.objects.create(cluster=node.cluster, name="public", kind="bridged", bridge="br-pub",
                                     interface="eth1")
    IpPool.objects.create(name="forty", network=network, cidr="10.77.50.0/24", first="10.77.50.10",
                          last="10.77.50.49")
    results = create_concurrently(50, customer=customer, plan=plan)
    assert results.count("ok") == 40 and results.count("pool_exhausted") == 10, results
    addresses = list(IpAddress.objects.filter(server__isnull=False).values_list("address", flat=True))
    assert len(addresses) == len(set(addresses)) == 40
    assert VirtualServer.objects.count() == 40
    assert not VirtualServer.objects.filter(ip_addresses=None).exists()


def test_ipv6_single_addresses_and_64_delegations(world, public):
    network, _pool = public
    world.plan.ipv6_count = 1
    world.plan.save()
    v6 = IpPool.objects.create(name="pub6", network=network, cidr="2001:db8:77::/64", gateway="2001:db8:77::1")
    r = create(world, hostname="six")
    assert r.status_code == 202, r.data
    assert r.data["server_state"]["ipv6"] == ["2001:db8:77::2"]
    from nodes.connection import driver_for

    spec = driver_for("fake://fake1").host.domains[VirtualServer.objects.get(pk=r.data["server"]).domain_name]["spec"]
    assert "panel.ip=eth0,2001:db8:77::2/64,2001:db8:77::1" in spec.kernel_boot.cmdline
    assert spec.nics[0].ips == ("203.0.113.3", "2001:db8:77::2")
    IpAddress.objects.filter(pool=v6).delete()
    v6.delete()
    delegated = IpPool.objects.create(name="pub6-64", network=network, cidr="2001:db8:78::/56", assign="prefix64")
    assert delegated.size() == 256
    r = create(world, hostname="six64")
    assert r.data["server_state"]["ipv6"] == ["2001:db8:78::"]
    row = IpAddress.objects.get(pool=delegated)
    assert row.with_prefix == "2001:db8:78::/64"
    r = create(world, hostname="six64b")
    assert r.data["server_state"]["ipv6"] == ["2001:db8:78:1::"]

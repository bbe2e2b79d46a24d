"""Shared fixtures: Alice and Bob (two customers), an admin, a plan and an in-memory node.

Unit tests (everything not marked e2e/browser) run operations inline through the fake
driver; the end-to-end tests in tests/e2e drive a live panel on real libvirt instead.
"""

from dataclasses import dataclass

import pytest
from rest_framework.test import APIClient

from nodes.connection import forget_fake_nodes
from nodes.fake import FakeDriver


@dataclass
class World:
    admin: object
    alice: object
    bob: object
    alice_customer: object
    bob_customer: object
    plan: object
    node: object
    admin_key: str
    billing_key: str
    alice_key: str
    bob_key: str

    def client(self, key: str | None = None) -> APIClient:
        client = APIClient()
        if key:
            client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
        return client


@pytest.fixture(autouse=True)
def _inline_operations(request, monkeypatch, settings, tmp_path):
    """Unit tests: the worker's job runs inline, on the fake driver, with the demo image present."""
    if request.node.get_closest_marker("e2e") or request.node.get_closest_marker("browser"):
        yield
        return
    from panel import jobs, operations

    monkeypatch.setattr(operations, "enqueue", jobs.run_operation)
    # The test's transaction never commits, so run the hand-over at once.
    monkeypatch.setattr(operations, "after_commit", lambda fn: fn())
    forget_fake_nodes()
    tiny_template_share(settings, tmp_path)
    install_by_fake_guest(monkeypatch)
    settings.STOP_TIMEOUT_SECONDS = 1
    # Real hashing costs ~0.3 s a user; the tests are not about hash strength.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    yield
    forget_fake_nodes()


def tiny_template_share(settings, tmp_path):
    """A template share holding the tiny demo template (its real metadata and config, empty
    boot files); `world` scans it into the database."""
    import shutil

    from templates_os.repository import CATALOG

    share = tmp_path / "os-templates"
    shutil.copytree(CATALOG / "tiny", share / "tiny", dirs_exist_ok=True)
    for name in ("vmlinuz", "initrd.img", "disk.qcow2"):
        (share / "tiny" / name).write_bytes(b"")
    settings.TEMPLATE_SHARE = share
    settings.PROVISION_URL = "http://panel.test"
    return share


def install_by_fake_guest(monkeypatch):
    """Domains started on the fake driver that boot an installer fetch their config and call back."""
    from tests import fake_guest

    original = FakeDriver.start
    if getattr(original, "installs", False):
        return

    def start(self, name):
        original(self, name)
        spec = self.host.domains[name]["spec"]
        fake_guest.install(spec, self.host.uploads)

    start.installs = True
    monkeypatch.setattr(FakeDriver, "start", start)


def fake_node(name: str, **fields):
    """A node on the in-memory driver, in cluster c1 with a 1000 GiB directory storage."""
    from nodes.models import Cluster, Node, Storage

    cluster = Cluster.objects.get_or_create(name="c1")[0]
    storage = Storage.objects.get_or_create(cluster=cluster, name="disks", defaults={"kind": "dir", "path": "/fake"})[0]
    values = {"uri": f"fake://{name}", "ram_mib": 16384, "cpus": 8, "virt_type": "qemu", "storage_dir": "/fake",
              "cluster": cluster, "storage_capacity": {str(storage.id): {"total_gib": 1000, "free_gib": 900}}}
    return Node.objects.create(name=name, **{**values, **fields})


@pytest.fixture
def world(db) -> World:
    from panel.accounts.models import ApiKey, Customer, User
    from panel.vps.models import Plan
    from templates_os.repository import scan

    admin = User.objects.create_user("admin", password="admin-pass-123", role=User.Role.ADMIN)
    alice_customer = Customer.objects.create(name="Alice Ltd", email="alice@example.com", external_id="A-1")
    bob_customer = Customer.objects.create(name="Bob GmbH", email="bob@example.com", external_id="B-1", language="ru")
    alice = User.objects.create_user("alice", password="alice-pass-123", customer=alice_customer)
    bob = User.objects.create_user("bob", password="bob-pass-1234", customer=bob_customer)
    plan = Plan.objects.create(name="small", vcpus=1, ram_mib=256, disk_gib=1)
    node = fake_node("fake1")
    scan()
    return World(
        admin=admin, alice=alice, bob=bob, alice_customer=alice_customer, bob_customer=bob_customer,
        plan=plan, node=node,
        admin_key=ApiKey.issue(name="admin", scope="admin")[1],
        billing_key=ApiKey.issue(name="billing", scope="billing")[1],
        alice_key=ApiKey.issue(name="alice", scope="customer", customer=alice_customer)[1],
        bob_key=ApiKey.issue(name="bob", scope="customer", customer=bob_customer)[1],
    )


@pytest.fixture
def alice_server(world):
    """A running server of Alice's, created through the real code path."""
    from panel.accounts.tenancy import SYSTEM
    from panel.vps import lifecycle

    server, _op, _password = lifecycle.create_server(SYSTEM, customer=world.alice_customer, plan=world.plan,
                                                     hostname="alice-web", os_template="tiny")
    server.refresh_from_db()
    assert server.state == "running", server.error
    return server


def create_concurrently(count: int, *, customer, plan) -> list[str]:
    """`count` server creates at once, in threads with their own database connections; each
    result is "ok" or the refusal's code. The hand-over to the worker is left out: what is
    under test is what the create transaction takes (capacity, addresses)."""
    import threading

    from django.db import connection

    from panel import operations
    from panel.accounts.tenancy import SYSTEM
    from panel.vps import lifecycle
    from templates_os.repository import scan

    scan()
    results = []

    def create(n):
        try:
            lifecycle.create_server(SYSTEM, customer=customer, plan=plan, hostname=f"c{n}", os_template="tiny")
            results.append("ok")
        except lifecycle.Refused as exc:
            results.append(exc.code)
        finally:
            connection.close()

    original, operations.after_commit = operations.after_commit, lambda fn: None
    try:
        threads = [threading.Thread(target=create, args=(n,)) for n in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        operations.after_commit = original
    return results

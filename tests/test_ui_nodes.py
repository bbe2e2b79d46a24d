"""The admin area's nodes, clusters and storages pages, and the placement preview.

A node install needs real SSH, so these tests stop at the queued Operation: the hand-over to
the worker (after_commit) is a no-op here.
"""

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from nodes.models import Cluster, Node, Storage
from nodes.hostkeys import fingerprint
from panel.accounts.models import AuditEntry
from panel.vps.models import Operation, Plan
from tests.conftest import fake_node
from tests.test_ui_isolation import ui_inline, ui_world  # noqa: F401  (fixtures)
from tests.test_ui_views import messages_of, ui_russian_catalog  # noqa: F401  (fixture)

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def no_worker(ui_world, monkeypatch, settings, tmp_path):
    """Once the world's servers are made, nothing more reaches the worker (node installs stay
    queued); ssh client files go to a temporary directory."""
    from panel import operations

    monkeypatch.setattr(operations, "after_commit", lambda fn: None)
    settings.SSH_DIR = tmp_path / "ssh"


def ed25519_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public_line(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def private_text(key: Ed25519PrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                             serialization.NoEncryption()).decode()


def node_data(cluster, **changes) -> dict:
    return {"cluster": cluster.pk, "name": "", "address": "203.0.113.10", "ssh_port": 22, "ssh_user": "root",
            "ssh_password": "", "ssh_private_key": "", **changes}


# --- Customers see none of it ----------------------------------------------------------------

def test_customers_get_404_on_every_node_cluster_and_storage_page(ui_world):
    node, cluster = ui_world.node, ui_world.node.cluster
    storage = cluster.storages.first()
    node.offered_host_key = public_line(ed25519_key())
    node.save()
    empty = fake_node("spare")
    gets = ["/admin/nodes/", "/admin/nodes/new/", f"/admin/nodes/{node.pk}/", "/admin/clusters/",
            "/admin/clusters/new/", f"/admin/clusters/{cluster.pk}/", f"/admin/clusters/{cluster.pk}/edit/",
            f"/admin/clusters/{cluster.pk}/storages/new/", f"/admin/storages/{storage.pk}/edit/",
            "/admin/servers/new/?plan=1"]
    posts = {
        "/admin/nodes/new/": node_data(cluster, ssh_password="secret-pass"),
        f"/admin/nodes/{node.pk}/install/": {},
        f"/admin/nodes/{node.pk}/maintenance/": {"enabled": "1"},
        f"/admin/nodes/{empty.pk}/remove/": {},
        f"/admin/nodes/{node.pk}/accept-host-key/": {"fingerprint": node.offered_host_key_fingerprint},
        "/admin/clusters/new/": {"name": "evil", "os_family": "apt", "cpu_overcommit": "4", "ram_overcommit": "1"},
        f"/admin/clusters/{cluster.pk}/edit/": {"name": "renamed", "os_family": "apt", "cpu_overcommit": "8",
                                               "ram_overcommit": "1"},
        f"/admin/clusters/{cluster.pk}/delete/": {},
        f"/admin/clusters/{cluster.pk}/storages/new/": {"name": "evil", "kind": "dir", "path": "/x"},
        f"/admin/storages/{storage.pk}/edit/": {"name": "evil", "kind": "dir", "path": "/x"},
        f"/admin/storages/{storage.pk}/delete/": {},
    }
    audit_before = AuditEntry.objects.count()
    for user in (ui_world.alice, ui_world.bob):
        client = ui_world.client(user)
        for url in gets:
            assert client.get(url).status_code == 404, url
        for url, data in posts.items():
            assert client.post(url, data).status_code == 404, url
        assert "/admin/clusters/" not in client.get("/servers/").content.decode()
    node.refresh_from_db()
    cluster.refresh_from_db()
    storage.refresh_from_db()
    assert node.state == Node.State.ONLINE and node.offered_host_key and not node.operations.exists()
    assert cluster.name == "c1" and cluster.cpu_overcommit == 4 and storage.name == "disks"
    assert Node.objects.filter(pk=empty.pk).exists() and not Node.objects.filter(address="203.0.113.10").exists()
    assert not Cluster.objects.filter(name="evil").exists() and not Storage.objects.filter(name="evil").exists()
    assert AuditEntry.objects.count() == audit_before
    # Signed out: the sign-in page, not the admin area.
    assert ui_world.client(None).get("/admin/clusters/").status_code == 302


def test_admin_nav_and_lists(ui_world):
    admin = ui_world.client(ui_world.admin)
    fake_node("busy", alloc_vcpus=30, alloc_ram_mib=8192, alloc_disk_gib=250, last_error="")
    page = admin.get("/admin/nodes/").content.decode()
    assert 'href="/admin/clusters/"' in page and 'href="/admin/nodes/new/"' in page
    assert "ui-fake" in page and "busy" in page and "<meter" in page
    # 8 CPUs × 4 over-commit = 32 vCPUs; 16 GiB of RAM; 1000 GiB on "disks".
    assert "30 / 32" in page and "8 GiB / 16 GiB" in page and "250 / 1000 GiB" in page
    clusters = admin.get("/admin/clusters/").content.decode()
    assert "c1" in clusters and "×4" in clusters
    assert admin.get("/admin/").status_code == 200  # the dashboard's node table has the bars too


# --- Adding a node ---------------------------------------------------------------------------

def test_add_node_form_validates(ui_world):
    admin = ui_world.client(ui_world.admin)
    cluster = ui_world.node.cluster
    key = private_text(ed25519_key())
    before = Node.objects.count()

    r = admin.post("/admin/nodes/new/", node_data(cluster, ssh_password="pw", ssh_private_key=key))
    assert r.status_code == 200 and "one of them" in r.content.decode()
    r = admin.post("/admin/nodes/new/", node_data(cluster))
    assert r.status_code == 200 and "one of them" in r.content.decode()
    r = admin.post("/admin/nodes/new/", node_data(cluster, address="a;b", ssh_password="pw"))
    assert r.status_code == 200 and "Enter an IP address or a host name." in r.content.decode()
    assert r.context["form"].errors["address"]
    r = admin.post("/admin/nodes/new/", node_data(cluster, ssh_private_key="not a key"))
    assert r.status_code == 200 and r.context["form"].errors["ssh_private_key"]
    r = admin.post("/admin/nodes/new/", node_data(cluster, ssh_user="Root;", ssh_password="pw"))
    assert r.status_code == 200 and r.context["form"].errors["ssh_user"]
    r = admin.post("/admin/nodes/new/", node_data(cluster, ssh_port=70000, ssh_password="pw"))
    assert r.status_code == 200 and r.context["form"].errors["ssh_port"]
    assert Node.objects.count() == before and not Operation.objects.filter(kind="node_install").exists()


def test_add_node_queues_the_install_with_the_password_encrypted(ui_world):
    admin = ui_world.client(ui_world.admin)
    cluster = ui_world.node.cluster
    r = admin.post("/admin/nodes/new/", node_data(cluster, address="Node-7.Example.NET", ssh_password="s3cret-pw"))
    node = Node.objects.get(address="node-7.example.net")  # the serializer's normalisation
    op = Operation.objects.get(node=node)
    assert r.status_code == 302 and r["Location"] == f"/operations/{op.pk}/"
    assert node.state == Node.State.INSTALLING and node.name == "node-7.example.net" and node.cluster == cluster
    assert op.kind == Operation.Kind.NODE_INSTALL and op.status == Operation.Status.QUEUED
    assert op.params["auth"] == "password" and op.params["secret"] and op.params["secret"] != "s3cret-pw"
    assert "s3cret-pw" not in str(op.params)
    assert AuditEntry.objects.filter(action="node.add", object_id=str(node.pk)).exists()
    # The operation page names the node and links back to it.
    page = admin.get(r["Location"]).content.decode()
    assert f'href="/admin/nodes/{node.pk}/"' in page and "node-7.example.net" in page
    assert 'http-equiv="refresh"' in page  # it follows the queued install
    # The same address and port again: refused as a form error.
    r = admin.post("/admin/nodes/new/", node_data(cluster, address="node-7.example.net", name="other",
                                                  ssh_password="pw"))
    assert r.status_code == 200 and "already registered" in r.context["form"].errors["address"][0]
    assert Node.objects.filter(address="node-7.example.net").count() == 1
    # The node page shows the install, and a re-install is refused while it is queued.
    detail = admin.get(f"/admin/nodes/{node.pk}/").content.decode()
    assert f'href="/operations/{op.pk}/"' in detail
    r = admin.post(f"/admin/nodes/{node.pk}/install/", follow=True)
    assert "An operation is already running on this node." in messages_of(r)


def test_add_node_with_a_private_key_and_reinstall(ui_world):
    admin = ui_world.client(ui_world.admin)
    key = private_text(ed25519_key())
    r = admin.post("/admin/nodes/new/", node_data(ui_world.node.cluster, name="kvm-2", address="2001:db8::7",
                                                  ssh_port=2222, ssh_private_key=key))
    node = Node.objects.get(name="kvm-2")
    op = node.operations.get()
    assert r["Location"] == f"/operations/{op.pk}/" and op.params["auth"] == "key"
    assert node.ssh_port == 2222 and "PRIVATE KEY" not in str(op.params)
    op.status = Operation.Status.SUCCEEDED
    op.save()
    r = admin.post(f"/admin/nodes/{node.pk}/install/")
    again = node.operations.order_by("-id").first()
    assert again.pk != op.pk and r["Location"] == f"/operations/{again.pk}/" and again.params == {}
    # The panel's own host (no address) is not installed over SSH.
    local = fake_node("local")
    r = admin.post(f"/admin/nodes/{local.pk}/install/", follow=True)
    assert "not installed over SSH" in " ".join(messages_of(r)) and not local.operations.exists()
    assert admin.get(f"/admin/nodes/{local.pk}/install/").status_code == 405


def test_add_node_needs_a_cluster_to_choose(ui_world):
    admin = ui_world.client(ui_world.admin)
    r = admin.post("/admin/nodes/new/", {**node_data(ui_world.node.cluster, ssh_password="pw"), "cluster": 999999})
    assert r.status_code == 200 and r.context["form"].errors["cluster"]


# --- Maintenance, removal, host keys ---------------------------------------------------------

def test_maintenance_on_and_off(ui_world):
    admin = ui_world.client(ui_world.admin)
    node = ui_world.node
    r = admin.post(f"/admin/nodes/{node.pk}/maintenance/", {"enabled": "1"})
    assert r["Location"] == f"/admin/nodes/{node.pk}/"
    node.refresh_from_db()
    assert node.state == Node.State.MAINTENANCE
    page = admin.get(f"/admin/nodes/{node.pk}/").content.decode()
    assert 'id="node-maintenance-off"' in page
    admin.post(f"/admin/nodes/{node.pk}/maintenance/", {"enabled": "0"})
    node.refresh_from_db()
    assert node.state == Node.State.OFFLINE  # until the monitor's next check
    assert AuditEntry.objects.filter(action="node.maintenance", object_id=str(node.pk)).count() == 2
    assert admin.get(f"/admin/nodes/{node.pk}/maintenance/").status_code == 405


def test_remove_is_refused_with_servers_and_done_without(ui_world):
    admin = ui_world.client(ui_world.admin)
    r = admin.post(f"/admin/nodes/{ui_world.node.pk}/remove/", follow=True)
    assert "The node still has servers; move or delete them first." in messages_of(r)
    assert Node.objects.filter(pk=ui_world.node.pk).exists()
    spare = fake_node("spare")
    r = admin.post(f"/admin/nodes/{spare.pk}/remove/")
    assert r["Location"] == "/admin/nodes/" and not Node.objects.filter(pk=spare.pk).exists()
    assert AuditEntry.objects.filter(action="node.remove", object_id=str(spare.pk)).exists()
    assert admin.post("/admin/nodes/999999/remove/").status_code == 404


def test_changed_host_key_is_shown_and_accepted_only_with_its_fingerprint(ui_world):
    admin = ui_world.client(ui_world.admin)
    old, new = public_line(ed25519_key()), public_line(ed25519_key())
    node = fake_node("rekeyed", address="198.51.100.5", host_key=old, offered_host_key=new)
    page = admin.get(f"/admin/nodes/{node.pk}/").content.decode()
    assert 'id="host-key-changed"' in page and "SSH host key changed" in page
    assert fingerprint(old) in page and fingerprint(new) in page
    assert "host key changed" in admin.get("/admin/nodes/").content.decode()

    r = admin.post(f"/admin/nodes/{node.pk}/accept-host-key/", {"fingerprint": fingerprint(old)})
    assert r.status_code == 400 and "not the offered key" in r.context["host_key_form"].errors["fingerprint"][0]
    r = admin.post(f"/admin/nodes/{node.pk}/accept-host-key/", {"fingerprint": ""})
    assert r.status_code == 400
    node.refresh_from_db()
    assert node.host_key == old and node.offered_host_key == new

    # Pasted without the "SHA256:" prefix is the same fingerprint.
    r = admin.post(f"/admin/nodes/{node.pk}/accept-host-key/", {"fingerprint": fingerprint(new).removeprefix("SHA256:")})
    assert r["Location"] == f"/admin/nodes/{node.pk}/"
    node.refresh_from_db()
    assert node.host_key == new and node.offered_host_key == ""
    assert AuditEntry.objects.filter(action="node.accept_host_key", object_id=str(node.pk)).exists()
    page = admin.get(f"/admin/nodes/{node.pk}/").content.decode()
    assert 'id="host-key-changed"' not in page and fingerprint(new) in page
    # Nothing offered any more: refused.
    r = admin.post(f"/admin/nodes/{node.pk}/accept-host-key/", {"fingerprint": fingerprint(new)}, follow=True)
    assert "The node offers no new host key." in messages_of(r)


def test_node_page_shows_facts_allocations_and_servers(ui_world):
    admin = ui_world.client(ui_world.admin)
    node = ui_world.node
    Node.objects.filter(pk=node.pk).update(os_name="Debian GNU/Linux 12", libvirt_version="9.0.0",
                                           qemu_version="7.2.0")
    page = admin.get(f"/admin/nodes/{node.pk}/").content.decode()
    assert "Debian GNU/Linux 12" in page and "9.0.0" in page and "7.2.0" in page
    assert "alice-web" in page and "bob-db" in page and "<meter" in page
    assert "8 CPUs × 4 over-commit" in page and "900 GiB free on the node" in page


# --- Clusters and storages -------------------------------------------------------------------

def test_cluster_create_edit_delete(ui_world):
    admin = ui_world.client(ui_world.admin)
    data = {"name": "rhel", "os_family": "dnf", "cpu_overcommit": "2.5", "ram_overcommit": "1"}
    r = admin.post("/admin/clusters/new/", data)
    cluster = Cluster.objects.get(name="rhel")
    assert r["Location"] == f"/admin/clusters/{cluster.pk}/" and cluster.cpu_overcommit == 2.5
    assert AuditEntry.objects.filter(action="cluster.create", object_id=str(cluster.pk)).exists()
    r = admin.post("/admin/clusters/new/", {**data, "name": "too-much", "cpu_overcommit": "64"})
    assert r.status_code == 200 and r.context["form"].errors["cpu_overcommit"]
    r = admin.post("/admin/clusters/new/", data)  # the name is taken
    assert r.status_code == 200 and r.context["form"].errors["name"]
    r = admin.post(f"/admin/clusters/{cluster.pk}/edit/", {**data, "ram_overcommit": "1.5"})
    cluster.refresh_from_db()
    assert r.status_code == 302 and cluster.ram_overcommit == 1.5
    assert "×1.5" in admin.get(f"/admin/clusters/{cluster.pk}/").content.decode()
    # A cluster with nodes stays; an empty one goes.
    c1 = ui_world.node.cluster
    r = admin.post(f"/admin/clusters/{c1.pk}/delete/", follow=True)
    assert "The cluster still has nodes; remove them first." in messages_of(r) and Cluster.objects.filter(pk=c1.pk).exists()
    r = admin.post(f"/admin/clusters/{cluster.pk}/delete/")
    assert r["Location"] == "/admin/clusters/" and not Cluster.objects.filter(pk=cluster.pk).exists()


def test_storage_forms_use_the_models_rules(ui_world):
    admin = ui_world.client(ui_world.admin)
    cluster = Cluster.objects.create(name="c2")
    url = f"/admin/clusters/{cluster.pk}/storages/new/"
    r = admin.post(url, {"name": "shared", "kind": "nfs", "path": "/mnt/shared"})
    assert r.status_code == 200 and "An NFS storage needs its source" in r.context["form"].errors["nfs_source"][0]
    r = admin.post(url, {"name": "vg", "kind": "lvm"})
    assert r.status_code == 200 and r.context["form"].errors["volume_group"]
    r = admin.post(url, {"name": "Bad Name", "kind": "dir", "path": "/srv"})
    assert r.status_code == 200 and r.context["form"].errors["name"]
    r = admin.post(url, {"name": "shared", "kind": "nfs", "path": "/mnt/shared", "nfs_source": "10.0.0.5:/export/vm",
                         "holds_templates": "on"})
    storage = Storage.objects.get(cluster=cluster, name="shared")
    assert r["Location"] == f"/admin/clusters/{cluster.pk}/" and storage.holds_templates
    r = admin.post(url, {"name": "shared", "kind": "dir", "path": "/srv"})
    assert r.status_code == 200 and r.context["form"].errors["name"]
    # The same name in another cluster is fine (c1 has "disks").
    assert admin.post(url, {"name": "disks", "kind": "dir", "path": "/srv/disks"}).status_code == 302
    # Edit keeps the rules.
    r = admin.post(f"/admin/storages/{storage.pk}/edit/", {"name": "shared", "kind": "nfs", "path": "/mnt/shared"})
    assert r.status_code == 200 and r.context["form"].errors["nfs_source"]
    page = admin.get(f"/admin/clusters/{cluster.pk}/").content.decode()
    assert "10.0.0.5:/export/vm" in page and "panel-shared" in page
    # A storage holding server disks stays; an unused one goes.
    used = ui_world.alice_server.storage
    assert used is not None
    r = admin.post(f"/admin/storages/{used.pk}/delete/", follow=True)
    assert "Servers have disks on this storage." in messages_of(r) and Storage.objects.filter(pk=used.pk).exists()
    r = admin.post(f"/admin/storages/{storage.pk}/delete/")
    assert r["Location"] == f"/admin/clusters/{cluster.pk}/" and not Storage.objects.filter(pk=storage.pk).exists()
    assert AuditEntry.objects.filter(action="storage.delete").exists()


# --- Placement preview -----------------------------------------------------------------------

def test_placement_preview_lists_each_nodes_verdict(ui_world):
    admin = ui_world.client(ui_world.admin)
    fake_node("down", state=Node.State.OFFLINE, last_error="no route to host")
    fake_node("small", ram_mib=128)
    big = Plan.objects.create(name="huge", vcpus=2, ram_mib=8192, disk_gib=20)
    page = admin.get("/admin/servers/new/").content.decode()
    assert "Where would it go?" in page
    row = page[page.index('data-node="down"'):]
    assert "offline (no route to host)" in row[:row.index("</tr>")]
    row = page[page.index('data-node="ui-fake"'):]
    assert "✓" in row[:row.index("</tr>")]
    row = page[page.index('data-node="small"'):]
    assert "not enough RAM" in row[:row.index("</tr>")]
    # Another plan, chosen with the GET form.
    page = admin.get(f"/admin/servers/new/?plan={big.pk}").content.decode()
    assert f'<option value="{big.pk}" selected>' in page


def test_node_pages_in_russian(ui_world, ui_russian_catalog):
    admin = ui_world.client(ui_world.admin)
    admin.post("/language/", {"language": "ru", "next": "/admin/nodes/"})
    page = admin.get("/admin/nodes/").content.decode()
    assert "Кластеры" in page and "Add node" not in page
    for url in ["/admin/nodes/new/", f"/admin/nodes/{ui_world.node.pk}/", "/admin/clusters/",
                f"/admin/clusters/{ui_world.node.cluster_id}/", "/admin/servers/new/"]:
        assert admin.get(url).status_code == 200, url

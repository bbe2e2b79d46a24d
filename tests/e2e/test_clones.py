"""Clones and golden templates on real libvirt + QEMU (the test cluster's node 1): a thin clone
boots beside its original on one network with its own MAC and address, each reaching the other
and a third guest reaching both; a golden template refuses start and change; a server made
from it boots with its data; a new version does not change the servers of the old one. The
rest (bad input, tenancy, bases shared and kept) is in tests/test_clones.py."""

import re

import pytest

from tests.e2e.conftest import ClusterGuest, cluster_with_node, create_tiny_server, make_tenant

pytestmark = pytest.mark.e2e

MARKER_MIB = 64  # a marker written raw at 64 MiB of the disk, above the installed system


@pytest.fixture(scope="module")
def env(live_panel, test_cluster):
    with cluster_with_node(live_panel, test_cluster, "clones", "10.77.1.200", "10.77.1.219") as env:
        try:
            yield {**env, "tenant": make_tenant(live_panel, "clones")}
        finally:
            # A template's server refuses delete: the templates go before the servers do.
            for template in live_panel.call(live_panel.admin_key, "GET", "/api/v1/golden-templates/").json()["results"]:
                live_panel.call(live_panel.admin_key, "DELETE", f"/api/v1/golden-templates/{template['id']}/")


def act(panel, path: str, body: dict | None = None, expect: int = 202, timeout: float = 240) -> dict:
    """An admin's POST; a 202's operation is awaited and must succeed."""
    r = panel.call(panel.admin_key, "POST", f"/api/v1/{path}", json=body or {})
    assert r.status_code == expect, r.text
    if expect != 202:
        return r.json()
    op = panel.wait_operation(panel.admin_key, r.json()["id"], timeout=timeout)
    assert op["status"] == "succeeded", op
    return op


def server(panel, server_id: int) -> dict:
    return panel.call(panel.admin_key, "GET", f"/api/v1/servers/{server_id}/").json()


def write_marker(guest: ClusterGuest, text: str) -> None:
    guest.sh(f"echo {text} | dd of=/dev/vda bs=1M seek={MARKER_MIB} conv=fsync 2>/dev/null; sync")


def marker(guest: ClusterGuest) -> str:
    out = guest.sh(f"dd if=/dev/vda bs=1M skip={MARKER_MIB} count=1 2>/dev/null | head -n 1")
    found = re.findall(r"\b(version-\d|clone-own)\b", out)  # the console's output may carry other lines
    return found[-1] if found else out


def mac(guest: ClusterGuest) -> str:
    return guest.sh("cat /sys/class/net/eth0/address").strip()


def test_a_clone_runs_beside_its_original_and_a_golden_template_keeps_its_versions(live_panel, test_cluster, env):
    panel = live_panel
    original = create_tiny_server(panel, env, env["tenant"], "clone-src")
    a = ClusterGuest(test_cluster, original)
    write_marker(a, "version-1")
    act(panel, f"servers/{original['id']}/stop/", {"force": True})

    # A thin clone: its own UUID, MAC and address; the original runs again beside it.
    op = act(panel, f"servers/{original['id']}/clone/", {"hostname": "clone-copy"})
    copy = server(panel, op["server"])
    assert copy["state"] == "running" and copy["uuid"] != original["uuid"]
    assert copy["ipv4"] and set(copy["ipv4"]).isdisjoint(original["ipv4"])
    act(panel, f"servers/{original['id']}/start/")
    b = ClusterGuest(test_cluster, copy)
    assert marker(b) == "version-1"
    assert f"TINY-GUEST net eth0 {copy['ipv4'][0]}/24" in b.log()
    assert mac(a) != mac(b)
    b.sh(f"ping -c 2 -W 3 {original['ipv4'][0]}")
    a.sh(f"ping -c 2 -W 3 {copy['ipv4'][0]}")
    write_marker(b, "clone-own")  # the clone's writes stay in its overlay
    assert marker(a) == "version-1"

    # The original becomes a golden template: locked against start and change.
    act(panel, f"servers/{original['id']}/stop/", {"force": True})
    template = act(panel, f"servers/{original['id']}/make-template/", {"name": "clones-golden"}, expect=201)
    for path, body in (("start/", {}), ("reinstall/", {})):
        refused = act(panel, f"servers/{original['id']}/{path}", body, expect=409)
        assert refused["code"] == "golden_template", refused
    op = act(panel, f"golden-templates/{template['id']}/servers/",
             {"customer": env["tenant"].customer_id, "plan": env["plan"], "hostname": "golden-v1"})
    d = ClusterGuest(test_cluster, server(panel, op["server"]))
    assert marker(d) == "version-1"

    # Edit: the template's server runs again (a third guest reaches it and the clone), then
    # version 2 is published; the server of version 1 keeps its data.
    act(panel, f"golden-templates/{template['id']}/edit/", expect=200)
    act(panel, f"servers/{original['id']}/start/")
    write_marker(a, "version-2")  # typed into its shell: it has booted
    d.sh(f"ping -c 2 -W 3 {original['ipv4'][0]}")
    d.sh(f"ping -c 2 -W 3 {copy['ipv4'][0]}")
    act(panel, f"servers/{original['id']}/stop/", {"force": True})
    assert act(panel, f"golden-templates/{template['id']}/publish/", expect=200)["version"] == 2
    op = act(panel, f"golden-templates/{template['id']}/servers/",
             {"customer": env["tenant"].customer_id, "plan": env["plan"], "hostname": "golden-v2"})
    e = ClusterGuest(test_cluster, server(panel, op["server"]))
    assert marker(e) == "version-2"
    assert marker(d) == "version-1" and marker(b) == "clone-own"
    assert panel.call(panel.admin_key, "DELETE", f"/api/v1/golden-templates/{template['id']}/").status_code == 204

"""Provisioning on the test cluster: a server ordered through the API installs the tiny OS
template with a recipe, the way a real installer would.

The guest boots the template's installer with its one-time config URL on the kernel command
line, fetches the config from the panel over the test network using the address its pool
gave it, writes hostname, root password and keys into its "installed system" (its disk),
runs the recipe and calls back with the recipe's output. Then a reinstall with another
recipe: a new marker, the same addresses, a new password; and a reboot into the installed
system.
"""

import re
import secrets
from urllib.parse import urlsplit

import pytest
import requests
from passlib.hash import sha512_crypt

from tests.e2e.conftest import ClusterGuest, cluster_with_node, make_tenant, panel_db_rows, wait_for

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHZ0ZXN0a2V5Zm9ycHJvdmlzaW9uaW5nAAAA e2e@test"


@pytest.fixture(scope="module")
def prov(live_panel, test_cluster):
    with cluster_with_node(live_panel, test_cluster, "prov", "10.77.1.60", "10.77.1.79") as env:
        yield {**env, "tenant": make_tenant(live_panel, "prov")}


class Guest(ClusterGuest):
    READY_TIMEOUT = 60

    def config_urls(self) -> list[str]:
        """The one-time URLs the installer got, from QEMU's command lines in the node's log."""
        qemu_log = self.run(["cat", f"/var/log/libvirt/qemu/{self.name}.log"]).stdout
        return re.findall(r"panel\.config=(\S+?)[\s'\"]", qemu_log)


def test_a_server_installs_from_the_tiny_template_with_a_recipe_and_reinstalls(live_panel, test_cluster, prov):
    panel, tenant = live_panel, prov["tenant"]
    first = f"first-{secrets.token_hex(4)}"
    r = panel.call(panel.admin_key, "POST", "/api/v1/servers/", json={
        "customer": tenant.customer_id, "plan": prov["plan"], "hostname": "prov-1", "os_template": "tiny",
        "recipe": "marker", "recipe_params": {"text": first}, "ssh_keys": [KEY], "node": prov["node"]})
    assert r.status_code == 202, r.text
    password = r.json()["password"]
    assert len(password) >= 12
    op = panel.wait_operation(panel.admin_key, r.json()["id"], timeout=240)
    assert op["status"] == "succeeded", panel.call(panel.admin_key, "GET", f"/api/v1/operations/{op['id']}/").json()
    log = panel.call(panel.admin_key, "GET", f"/api/v1/operations/{op['id']}/").json()["log"]
    assert "fetched its config from 10.77.1." in log and "recipe marker exited with 0" in log

    # The owner sees it running, with the address from the pool and the recipe's output.
    server = panel.call(tenant.key, "GET", f"/api/v1/servers/{op['server']}/").json()
    assert server["state"] == "running" and len(server["ipv4"]) == 1
    address = server["ipv4"][0]
    install = server["install"]
    assert install["status"] == "done" and install["recipe"] == "marker" and install["recipe_exit_code"] == 0
    assert first in install["recipe_output"]
    # The config was fetched from the server's own address, over the test network.
    assert panel_db_rows(panel, "SELECT config_served_to FROM templates_os_installation WHERE id = %s",
                         install["id"]) == [(address,)]
    events = [row[0] for row in panel_db_rows(panel, "SELECT event FROM api_event WHERE data LIKE %s",
                                              f'%"server": {server["id"]},%')]
    assert {"server.created", "server.active", "operation.finished"} <= set(events)

    guest = Guest(test_cluster, server)
    serial = guest.log()
    for line in ("TINY-GUEST config fetched", "TINY-GUEST hostname prov-1", "TINY-GUEST recipe exit 0",
                 "TINY-GUEST callback exit 0"):
        assert line in serial, serial[-2000:]
    assert guest.sh("cat /srv/panel-marker") == first
    assert sha512_crypt.verify(password, guest.sh("cut -d: -f2 /etc/shadow | head -n1"))
    assert KEY in guest.sh("cat /root/.ssh/authorized_keys")

    # The config URL answered once: again (even from the host) it is a plain 404.
    urls = guest.config_urls()
    assert len(urls) == 1
    path = urlsplit(urls[0]).path
    assert path.startswith("/provision/")
    assert requests.get(live_panel.url + path, timeout=10).status_code == 404

    # Reinstall by the owner with another recipe parameter: new marker, same address, new password.
    second = f"second-{secrets.token_hex(4)}"
    r = panel.call(tenant.key, "POST", f"/api/v1/servers/{server['id']}/reinstall/",
                   json={"recipe": "marker", "recipe_params": {"text": second}})
    assert r.status_code == 202, r.text
    new_password = r.json()["password"]
    assert new_password != password
    op = panel.wait_operation(tenant.key, r.json()["id"], timeout=240)
    assert op["status"] == "succeeded", op
    server = panel.call(tenant.key, "GET", f"/api/v1/servers/{server['id']}/").json()
    assert server["state"] == "running" and server["ipv4"] == [address]
    assert server["install"]["recipe_exit_code"] == 0 and second in server["install"]["recipe_output"]
    assert len(guest.config_urls()) == 2 and guest.config_urls()[0] != guest.config_urls()[1]
    assert guest.sh("cat /srv/panel-marker") == second
    shadow_hash = guest.sh("cut -d: -f2 /etc/shadow | head -n1")
    assert sha512_crypt.verify(new_password, shadow_hash) and not sha512_crypt.verify(password, shadow_hash)
    assert KEY not in guest.sh("cat /root/.ssh/authorized_keys; echo end")  # no keys given this time

    # A reboot boots the installed system from its disk: hostname and marker are still there.
    before = guest.log().count("TINY-GUEST installed prov-1")
    r = panel.call(tenant.key, "POST", f"/api/v1/servers/{server['id']}/reboot/", json={})
    assert panel.wait_operation(tenant.key, r.json()["id"], timeout=120)["status"] == "succeeded"
    wait_for(lambda: guest.log().count("TINY-GUEST installed prov-1") > before, 60, "the installed system to boot")
    assert guest.sh("cat /srv/panel-marker") == second

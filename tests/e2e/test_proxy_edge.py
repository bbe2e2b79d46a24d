"""The panel behind Debian's nginx as documented: deploy/nginx/panel.conf itself and the README's
nginx block, templated with ports and paths, in front of a live panel (runpanel, TRUSTED_PROXY=1,
MariaDB; a panel only, no node).

The client speaks from 127.0.0.2, not the proxy's 127.0.0.1 (TRUSTED_PROXIES' default), and
sends its own X-Forwarded-For: 1.2.3.4; the audit log must record 127.0.0.2. A websocket from
the panel's own origin still opens through nginx with the session cookie and reads the live
state; one from another origin is refused."""

import asyncio
import http.client
import json
import re
import socket
import ssl
import subprocess
import time
from contextlib import contextmanager

import pytest
import requests
import websockets

from tests.e2e.conftest import ROOT, make_tenant, running_panel
from tests.test_deploy_files import SITE, certificate, free_port, nginx_setup

CLIENT = "127.0.0.2"  # the client's own address: loopback, but not a trusted proxy
FORGED = "1.2.3.4"


@pytest.fixture(scope="module")
def panel(tmp_path_factory):
    with running_panel(tmp_path_factory.mktemp("edge-data"), tag="edge", worker=False,
                       env={"LOCAL_LIBVIRT_URI": "", "BIND": "127.0.0.1", "WEB_PROCESSES": "1"}) as live:
        yield live


@contextmanager
def nginx(folder, site: str, upstream: int):
    """Debian's nginx running `site` (nginx_setup: ports, certificate, log and static paths)."""
    certificate(folder)
    (folder / "static").mkdir(exist_ok=True)
    http_port, https_port = free_port(), free_port()
    cmd = nginx_setup(folder, site, http=http_port, https=https_port, upstream=upstream)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 15
        port = https_port if "ssl;" in site else http_port
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (folder / "error.log").read_text()
                time.sleep(0.05)
        yield http_port, https_port
    finally:
        proc.terminate()
        proc.wait(10)


def readme_site() -> str:
    """The README's console block (`location / {...}`) as the one server of a site."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## The browser console.*?```nginx\n(.*?)```", readme, re.S).group(1)
    return ("map $http_upgrade $connection_upgrade {\n    default upgrade;\n    ''      close;\n}\n"
            "server {\n    listen 80;\n    server_name panel.example.com;\n"
            + block.replace("proxy_pass http://127.0.0.1:8000;", "proxy_pass http://panel_web;") +
            "}\nupstream panel_web {\n    server 127.0.0.1:8000;\n}\n")


def create_customer(port: int, key: str, external_id: str, *, tls: str | None = None) -> int:
    """POST /api/v1/customers/ from CLIENT with a forged X-Forwarded-For; the new id."""
    if tls:
        conn = http.client.HTTPSConnection("127.0.0.1", port, source_address=(CLIENT, 0), timeout=30,
                                           context=ssl.create_default_context(cafile=tls))
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, source_address=(CLIENT, 0), timeout=30)
    body = json.dumps({"name": external_id, "email": f"{external_id}@example.com", "external_id": external_id})
    conn.request("POST", "/api/v1/customers/", body, headers={
        "Host": "panel.example.com", "Authorization": f"Token {key}", "Content-Type": "application/json",
        "X-Forwarded-For": FORGED})
    response = conn.getresponse()
    text = response.read().decode()
    conn.close()
    assert response.status == 201, text
    return json.loads(text)["id"]


def recorded_address(panel, customer_id: int) -> str:
    rows = panel.call(panel.admin_key, "GET", "/api/v1/audit-log/?action=customer.create").json()["results"]
    return next(row["address"] for row in rows if row["object_id"] == str(customer_id))


def test_the_site_conf_records_the_clients_real_address(panel, tmp_path):
    port = int(panel.url.rsplit(":", 1)[1])
    with nginx(tmp_path, SITE.read_text(), port) as (_http, https):
        customer = create_customer(https, panel.admin_key, "EDGE-SITE", tls=str(tmp_path / "cert.pem"))
    assert recorded_address(panel, customer) == CLIENT


def test_the_readme_block_records_the_clients_real_address(panel, tmp_path):
    port = int(panel.url.rsplit(":", 1)[1])
    with nginx(tmp_path, readme_site(), port) as (http_port, _https):
        customer = create_customer(http_port, panel.admin_key, "EDGE-README")
    assert recorded_address(panel, customer) == CLIENT, (
        "the README's nginx block lets a client choose its recorded address with its own X-Forwarded-For")


def test_a_client_reaching_the_panel_itself_is_recorded_as_itself(panel):
    # TRUSTED_PROXY=1 trusts the proxy's address, not every peer's header.
    customer = create_customer(int(panel.url.rsplit(":", 1)[1]), panel.admin_key, "EDGE-DIRECT")
    assert recorded_address(panel, customer) == CLIENT


def _login(base: str, tenant, cafile: str) -> str:
    s = requests.Session()
    s.get(base + "/login/", timeout=10, verify=cafile)
    r = s.post(base + "/login/", data={"username": tenant.username, "password": tenant.password,
                                       "csrfmiddlewaretoken": s.cookies["csrftoken"]},
               headers={"Referer": base + "/login/"}, timeout=10, verify=cafile)
    assert r.status_code == 200 and "sessionid" in s.cookies, r.text[:300]
    return "; ".join(f"{k}={v}" for k, v in s.cookies.items())


def test_websockets_through_the_site_conf_open_from_the_panels_origin_only(panel, tmp_path):
    tenant = make_tenant(panel, "edgews")
    # A server row of the tenant's (no node here): the live-progress consumer only reads it.
    server_id = int(panel.manage("shell", "-c", (
        "from panel.vps.models import Plan, VirtualServer; "
        "plan = Plan.objects.create(name='edge-ws', vcpus=1, ram_mib=256, disk_gib=1); "
        f"print(VirtualServer.objects.create(customer_id={tenant.customer_id}, plan=plan, hostname='edge-ws', "
        "state='stopped', vcpus=1, ram_mib=256, disk_gib=1).pk)")).strip().splitlines()[-1])
    with nginx(tmp_path, SITE.read_text(), int(panel.url.rsplit(":", 1)[1])) as (_http, https):
        base, cafile = f"https://127.0.0.1:{https}", str(tmp_path / "cert.pem")
        cookie = _login(base, tenant, cafile)
        ctx = ssl.create_default_context(cafile=cafile)
        url = f"wss://127.0.0.1:{https}/ws/servers/{server_id}/"

        async def live_state(origin: str):
            try:
                async with websockets.connect(url, ssl=ctx, origin=origin, additional_headers={"Cookie": cookie},
                                              open_timeout=10) as ws:
                    return json.loads(await asyncio.wait_for(ws.recv(), 10))
            except websockets.InvalidStatus as exc:
                return exc.response.status_code

        state = asyncio.run(live_state(base))  # the page's own origin: https, Host with its port
        assert isinstance(state, dict) and state["state"] == "stopped", state
        assert asyncio.run(live_state("https://evil.example")) == 403, "another origin read the live state"
        assert asyncio.run(live_state(f"http://127.0.0.1:{https}")) == 403

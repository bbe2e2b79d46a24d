"""Alerts end to end (issue 20): libvirtd stopped on a node of the test cluster → the collector
misses it → the node-offline alert fires, a webhook receiver on loopback gets it signed in
Alertmanager's shape and a local SMTP server (aiosmtpd) gets the mail; libvirtd back → resolved,
told both ways again. Another customer sees none of it (404). The admin's alerts page in
chromium shows the alert (screenshot under /tmp/shots/).

The panel runs with its own worker (collection and evaluation every minute); the test also runs
the collection and the evaluation itself through manage.py, with the panel's settings, to be
quick: whichever runs first tells, and only once.
"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.e2e.conftest import cluster_with_node, free_port, make_tenant, running_panel, wait_for
from tests.test_webhooks import verify

SECRET = "alerts-e2e-secret-0123456789"
SHOTS = Path("/tmp/shots")


class Hooks:
    """A webhook receiver on 127.0.0.1: records every POST."""

    def __init__(self):
        self.requests: list[dict] = []
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hooks.requests.append({"headers": dict(self.headers), "body": body})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"

    def bodies(self, event: str) -> list[dict]:
        return [json.loads(r["body"]) for r in self.requests if r["headers"].get("X-Panel-Event") == event]


class Mailbox:
    """An SMTP server on 127.0.0.1 (aiosmtpd): keeps every message it receives."""

    def __init__(self):
        from aiosmtpd.controller import Controller

        self.messages: list[dict] = []
        box = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                box.messages.append({"to": list(envelope.rcpt_tos), "data": envelope.content.decode("utf-8", "replace")})
                return "250 OK"

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self):
        self.controller.stop()


@pytest.fixture(scope="module")
def mailbox():
    box = Mailbox()
    yield box
    box.stop()


@pytest.fixture(scope="module")
def alert_panel(tmp_path_factory, mailbox):
    """A panel whose mail goes to the local SMTP server and whose admin webhooks may reach loopback."""
    env = {"EMAIL_URL": f"smtp://127.0.0.1:{mailbox.port}", "ALERTS_EMAIL_TO": "noc@provider.test",
           "WEBHOOKS_ALLOW_PRIVATE": "admin", "METRICS_NODE_DEADLINE_SECONDS": "5",
           "PANEL_URL": "http://panel.test"}
    with running_panel(tmp_path_factory.mktemp("alerts-panel"), tag="alerts", env=env) as panel:
        yield panel


def collect_and_evaluate(panel) -> dict:
    out = panel.manage("shell", "-c", "import json; from panel.metrics.collector import collect; "
                       "from panel.alerts.evaluation import evaluate; c = collect(); e = evaluate(); "
                       "print(json.dumps({'failed': c['failed_nodes'], 'told': e['told']}))")
    return json.loads(out.strip().splitlines()[-1])


def node_alerts(panel, key, state):
    r = panel.call(key, "GET", f"/api/v1/alerts/?state={state}")
    assert r.status_code == 200, r.text
    return [a for a in r.json()["results"] if a["kind"] == "node_offline"]


def test_libvirtd_stopped_fires_the_node_alert_signed_and_mailed_and_back_resolves(alert_panel, test_cluster,
                                                                                   mailbox, browser):
    panel, admin = alert_panel, alert_panel.admin_key
    hooks = Hooks()
    r = panel.call(admin, "POST", "/api/v1/webhooks/", json={"url": hooks.url, "events": ["alert.firing",
                                                                                           "alert.resolved"],
                                                             "secret": SECRET})
    assert r.status_code == 201, r.text
    rule = panel.call(admin, "GET", "/api/v1/alert-rules/?kind=node_offline").json()["results"]
    if not rule:  # the built-in rules are made by the first evaluation
        collect_and_evaluate(panel)
        rule = panel.call(admin, "GET", "/api/v1/alert-rules/?kind=node_offline").json()["results"]
    r = panel.call(admin, "PATCH", f"/api/v1/alert-rules/{rule[0]['id']}/", json={"warning": 1, "critical": 30, "margin": 0.5})
    assert r.status_code == 200, r.text
    bob = make_tenant(panel, "bob")

    with cluster_with_node(panel, test_cluster, "alerts", "10.77.1.200", "10.77.1.210") as env:
        node_name = panel.call(admin, "GET", f"/api/v1/nodes/{env['node']}/").json()["name"]
        assert collect_and_evaluate(panel)["failed"] == []
        assert node_alerts(panel, admin, "firing") == []
        test_cluster.kill_libvirtd(1)
        try:
            stopped = time.monotonic()

            def fired():
                collect_and_evaluate(panel)
                return node_alerts(panel, admin, "firing")

            [alert] = wait_for(fired, 180, "the node-offline alert to fire", interval=5)
            took = time.monotonic() - stopped
            assert node_name in alert["summary"] and alert["labels"]["node"] == node_name
            firing = wait_for(lambda: hooks.bodies("alert.firing"), 90, "the signed webhook")
            wait_for(lambda: [m for m in mailbox.messages if "noc@provider.test" in m["to"]], 60, "the alert mail")
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(panel.url + "/login/")
            page.fill("input[name=username]", "admin")
            page.fill("input[name=password]", panel.admin_password)
            page.click("form:has(input[name=password]) button[type=submit]")
            page.wait_for_url("**/admin/")
            page.goto(panel.url + "/admin/alerts/")
            row = page.locator(f"#open-alerts tr[data-alert-id='{alert['id']}']")
            assert row.count() == 1 and node_name in row.inner_text()
            SHOTS.mkdir(exist_ok=True)
            page.screenshot(path=str(SHOTS / "e2e-admin-alerts-node-offline.png"), full_page=True)
            page.close()
            # Bob, another customer, sees nothing of it.
            assert node_alerts(panel, bob.key, "firing") == []
            assert panel.call(bob.key, "GET", f"/api/v1/alerts/{alert['id']}/").status_code == 404
            assert panel.call(bob.key, "GET", f"/api/v1/alert-rules/{rule[0]['id']}/").status_code == 404
        finally:
            test_cluster.start_libvirtd(1)

        def resolved():
            print("collect/evaluate:", collect_and_evaluate(panel))
            return [a for a in node_alerts(panel, admin, "resolved") if a["id"] == alert["id"]]

        wait_for(resolved, 180, "the alert to resolve", interval=5)
        done = wait_for(lambda: hooks.bodies("alert.resolved"), 90, "the resolved webhook")
        wait_for(lambda: [m for m in mailbox.messages if "[RESOLVED]" in m["data"]], 60, "the resolved mail")

    for request in hooks.requests:
        assert verify(SECRET, request["headers"]["X-Panel-Signature"], request["body"])
    for body, status in ((firing[0], "firing"), (done[0], "resolved")):
        assert body["version"] == "4" and body["status"] == status and body["receiver"] == "panel"
        [item] = body["alerts"]
        assert item["labels"]["alertname"] == "NodeOffline" and item["labels"]["node"] == node_name
        assert item["status"] == status and item["generatorURL"] == "http://panel.test/admin/alerts/"
    assert firing[0]["alerts"][0]["fingerprint"] == done[0]["alerts"][0]["fingerprint"]
    assert len(hooks.bodies("alert.firing")) == 1 and len(hooks.bodies("alert.resolved")) == 1  # told once each
    mail = [m for m in mailbox.messages if "noc@provider.test" in m["to"]]
    assert any("[CRITICAL]" in m["data"] or "[WARNING]" in m["data"] for m in mail)
    assert any(node_name in m["data"] for m in mail)
    print(f"alert fired {took:.0f} s after libvirtd stopped")

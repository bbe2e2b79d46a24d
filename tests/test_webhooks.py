"""Webhooks: subscriptions through the API, signed delivery with retries, Alice/Bob isolation
and the admin page.

Deliveries go to a real HTTP server on 127.0.0.1 (a free port, in a thread). Time is moved
forward by replacing django.utils.timezone.now, so hours of back-off take milliseconds.
"""

import hashlib
import hmac
import json
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.db import connection
from django.test import Client
from django.utils import timezone

from panel.accounts.models import AuditEntry
from panel.events import emit
from panel.api.models import Event
from panel.webhooks import delivery as wd
from panel.webhooks.models import Delivery, Webhook

pytestmark = pytest.mark.django_db

SECRET = "a-secret-of-sufficient-length"
PUBLIC_URL = "http://93.184.216.34/hook"  # a public address literal: no DNS needed


# --- Helpers ---------------------------------------------------------------------------------

class Receiver:
    """A webhook receiver: answers 500 to the first `fail_first` requests, then 200, and
    records every request (headers, body, the status it answered)."""

    def __init__(self, fail_first: int = 0, delay: float = 0.0, fail_code: int = 500, fail_headers=None,
                 tls=None):
        self.fail_first, self.delay, self.fail_code, self.fail_headers = fail_first, delay, fail_code, fail_headers
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                time.sleep(receiver.delay)
                with receiver.lock:
                    code = receiver.fail_code if len(receiver.requests) < receiver.fail_first else 200
                    receiver.requests.append({"headers": dict(self.headers), "body": body, "status": code,
                                              "path": self.path})
                self.send_response(code)
                for name, value in (receiver.fail_headers or {}).items() if code != 200 else ():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok" if code == 200 else b"no")

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass  # failed TLS handshakes are what some tests are about

        self.server = Server(("127.0.0.1", 0), Handler)
        self.scheme = "http"
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/hooks/panel?x=1"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made = []

    def make(**kwargs) -> Receiver:
        made.append(Receiver(**kwargs))
        return made[-1]

    yield make
    for r in made:
        r.stop()


@pytest.fixture
def queued(monkeypatch) -> list[int]:
    """The deliveries handed to the worker (instead of django-q2), in order."""
    ids: list[int] = []
    monkeypatch.setattr(wd, "enqueue", ids.append)
    return ids


class Clock:
    def __init__(self):
        self.now = timezone.now()


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(timezone, "now", lambda: c.now)
    return c


@pytest.fixture(autouse=True)
def _knobs(settings):
    settings.WEBHOOK_RETRY_BASE_SECONDS = 30
    settings.WEBHOOK_TIMEOUT_SECONDS = 5
    # The receivers listen on 127.0.0.1: the admin's webhooks may reach it, nobody else's.
    settings.WEBHOOKS_ALLOW_PRIVATE = ["admin"]


def session(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def make_hook(client, url, events=("*",), **extra):
    r = client.post("/api/v1/webhooks/", {"url": url, "events": list(events), **extra}, format="json")
    assert r.status_code == 201, (r.status_code, r.content)
    return r.json()


def verify(secret: str, header: str, body: bytes) -> bool:
    parts = dict(item.split("=", 1) for item in header.split(","))
    expected = hmac.new(secret.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts["v1"])


def run_until_settled(clock: Clock, row: Delivery, limit: int = 200) -> list[timedelta]:
    """Attempt `row` at each of its due times until it is delivered or failed; the waits."""
    waits = []
    wd.deliver(row.id)
    for _ in range(limit):
        row.refresh_from_db()
        if row.status != Delivery.Status.PENDING:
            return waits
        waits.append(row.next_attempt_at - clock.now)
        clock.now = row.next_attempt_at
        assert wd.deliver_due() == 1
    raise AssertionError("the delivery never settled")


# --- Delivery --------------------------------------------------------------------------------

def test_it_delivers_a_signed_event_retrying_with_doubling_backoff_until_accepted(world, receiver, queued, clock):
    rx = receiver(fail_first=3)
    hook = make_hook(world.client(world.admin_key), rx.url, ["node.down"], secret=SECRET)
    assert "secret" not in hook  # given by the client: not echoed

    event = emit("node.down", node=7, name="n7", reason="no answer")
    row = Delivery.objects.get()
    assert queued == [row.id] and row.event == event and row.webhook_id == hook["id"]

    waits = run_until_settled(clock, row)

    row.refresh_from_db()
    assert row.status == "delivered" and row.attempts == 4 and row.last_status_code == 200
    assert row.next_attempt_at is None and row.delivered_at == clock.now and row.last_error == ""
    assert waits == [timedelta(seconds=30), timedelta(seconds=60), timedelta(seconds=120)]
    assert [r["status"] for r in rx.requests] == [500, 500, 500, 200]  # accepted exactly once
    for request in rx.requests:
        body = json.loads(request["body"])
        assert set(body) == {"id", "event", "created_at", "data"}
        assert body["id"] == str(row.uuid) == request["headers"]["X-Panel-Delivery"]
        assert body["event"] == "node.down" == request["headers"]["X-Panel-Event"]
        assert body["data"] == {"node": 7, "name": "n7", "reason": "no answer"}
        assert verify(SECRET, request["headers"]["X-Panel-Signature"], request["body"])
        assert not verify("another-secret-entirely", request["headers"]["X-Panel-Signature"], request["body"])
        assert request["headers"]["Content-Type"] == "application/json"
        assert request["headers"]["User-Agent"].startswith("Panel-Webhooks/")
        assert request["path"] == "/hooks/panel?x=1"

    # Delivered: nothing is due any more, and a second deliver() sends nothing.
    clock.now += timedelta(hours=2)
    assert wd.deliver_due() == 0 and wd.deliver(row.id) is None
    assert len(rx.requests) == 4


def test_the_signature_timestamp_is_the_send_time(world, receiver, queued, clock):
    rx = receiver()
    make_hook(world.client(world.admin_key), rx.url, secret=SECRET)
    emit("node.up", node=1)
    clock.now += timedelta(seconds=42)
    wd.deliver(Delivery.objects.get().id)
    signature = rx.requests[0]["headers"]["X-Panel-Signature"]
    assert signature.startswith(f"t={int(clock.now.timestamp())},v1=")


def test_it_gives_up_25_hours_after_the_event(world, receiver, queued, clock):
    rx = receiver(fail_first=10**6)
    make_hook(world.client(world.admin_key), rx.url)
    event = emit("node.down", node=1)
    row = Delivery.objects.get()

    waits = run_until_settled(clock, row)

    row.refresh_from_db()
    assert row.status == "failed" and row.next_attempt_at is None
    assert row.last_status_code == 500 and row.last_error.startswith("HTTP 500")
    assert row.attempts == len(rx.requests) == len(waits) + 1
    # Doubling from 30 s, then at most an hour apart.
    assert waits[:7] == [timedelta(seconds=30 * 2**n) for n in range(7)]
    assert set(waits[7:]) == {timedelta(hours=1)}
    # Retried for at least 24 h (API.md), never past 25 h.
    last = row.last_attempt_at - event.created_at
    assert timedelta(hours=24) <= last <= timedelta(hours=25)
    clock.now += timedelta(days=2)
    assert wd.deliver_due() == 0


def test_connection_refused_and_timeouts_are_retried(world, receiver, queued, clock, settings):
    rx = receiver(delay=1.5)
    settings.WEBHOOK_TIMEOUT_SECONDS = 0.5
    hook = make_hook(world.client(world.admin_key), rx.url)
    emit("node.up", node=1)
    row = Delivery.objects.get()
    assert wd.deliver(row.id) == "pending"
    row.refresh_from_db()
    assert row.last_status_code is None and "timed out" in row.last_error.lower()

    rx.stop()  # nobody listens on the port any more
    clock.now = row.next_attempt_at
    assert wd.deliver(row.id) == "pending"
    row.refresh_from_db()
    assert row.attempts == 2 and "refused" in row.last_error.lower()
    assert Webhook.objects.filter(pk=hook["id"]).exists()


def test_a_receiver_that_trickles_its_answer_is_cut_off(world, queued, settings):
    """The timeout bounds the whole attempt, not only each wait for a byte."""
    import socket

    settings.WEBHOOK_TIMEOUT_SECONDS = 0.5
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def trickle():
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            while not stop.is_set():  # a header line every 0.3 s, never the end of the headers
                try:
                    conn.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    return
                time.sleep(0.3)

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        make_hook(world.client(world.admin_key), f"http://127.0.0.1:{listener.getsockname()[1]}/")
        emit("node.up", node=1)
        row = Delivery.objects.get()
        started = time.monotonic()
        assert wd.deliver(row.id) == "pending"
        assert time.monotonic() - started < 3
        row.refresh_from_db()
        assert "No complete answer within 1 s" in row.last_error
    finally:
        stop.set()
        listener.close()
        thread.join(timeout=5)


def test_redirects_are_not_followed(world, receiver, queued):
    """A 3xx is a failed attempt: following it would let a public URL send the panel to a
    private address."""
    inside = receiver()
    rx = receiver(fail_first=1, fail_code=302, fail_headers={"Location": inside.url})
    make_hook(world.client(world.admin_key), rx.url)
    emit("node.up", node=1)
    row = Delivery.objects.get()
    assert wd.deliver(row.id) == "pending"
    row.refresh_from_db()
    assert row.last_status_code == 302 and inside.requests == []


@pytest.fixture
def tls(tmp_path):
    """A self-signed certificate for localhost and 127.0.0.1: (server context, client context
    that trusts it)."""
    import ipaddress
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = timezone.now()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    client = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
    return server, client


def test_https_certificates_are_verified(world, receiver, queued, tls, monkeypatch, clock):
    from panel.webhooks import transports

    server_context, trusting_context = tls
    rx = receiver(tls=server_context)
    make_hook(world.client(world.admin_key), f"https://localhost:{rx.port}/hook", secret=SECRET)
    emit("node.up", node=1)
    row = Delivery.objects.get()
    assert wd.deliver(row.id) == "pending"  # the panel does not trust a self-signed certificate
    row.refresh_from_db()
    assert "CERTIFICATE_VERIFY_FAILED" in row.last_error and rx.requests == []

    # Trusted, the same receiver gets it: through the checked address, under the host's name.
    monkeypatch.setattr(transports.ssl, "create_default_context", lambda: trusting_context)
    clock.now = row.next_attempt_at
    assert wd.deliver(row.id) == "delivered"
    assert rx.requests[0]["headers"]["Host"] == f"localhost:{rx.port}"
    assert verify(SECRET, rx.requests[0]["headers"]["X-Panel-Signature"], rx.requests[0]["body"])


def test_an_unparseable_url_fails_at_once(world, queued):
    hook = Webhook(url="http://exa mple.com:99999/", events=["*"])
    hook.secret = SECRET
    hook.save()  # behind the API's back: the sender must still refuse it for good
    emit("node.up", node=1)
    row = Delivery.objects.get()
    assert wd.deliver(row.id) == "failed"
    row.refresh_from_db()
    assert row.attempts == 1 and row.next_attempt_at is None and row.last_error


@pytest.mark.parametrize("who", ["admin_key", "billing_key"])
def test_the_provider_resends_a_failed_delivery(world, receiver, queued, clock, who):
    rx = receiver(fail_first=1)
    hook = make_hook(world.client(world.admin_key), rx.url, secret=SECRET)
    emit("node.down", node=1)
    row = Delivery.objects.get()
    wd.deliver(row.id)
    Delivery.objects.filter(pk=row.pk).update(status="failed", next_attempt_at=None)  # as if it gave up
    queued.clear()

    clock.now += timedelta(hours=30)
    r = world.client(getattr(world, who)).post(f"/api/v1/webhooks/{hook['id']}/deliveries/{row.uuid}/resend/")
    assert r.status_code == 202, r.content
    assert r.json()["id"] == str(row.uuid) and r.json()["status"] == "pending" and r.json()["attempts"] == 0
    assert queued == [row.id]
    assert AuditEntry.objects.filter(action="webhook.resend", object_id=str(hook["id"])).exists()

    assert wd.deliver(row.id) == "delivered"
    row.refresh_from_db()
    assert row.give_up_at == clock.now + timedelta(hours=25)  # a fresh window from the re-send
    assert [json.loads(r["body"])["id"] for r in rx.requests] == [str(row.uuid)] * 2
    assert [r["status"] for r in rx.requests] == [500, 200]


@pytest.mark.django_db(transaction=True)
def test_concurrent_deliver_of_one_delivery_sends_it_once(receiver, monkeypatch):
    if connection.vendor == "sqlite":
        pytest.skip("needs a database with row locks and concurrent writers (make test runs MariaDB)")
    monkeypatch.setattr(wd, "enqueue", lambda _id: None)
    rx = receiver(delay=0.5)
    hook = Webhook(url=rx.url, events=["*"], scope=Webhook.Scope.ADMIN)
    hook.secret = SECRET
    hook.save()
    emit("node.up", node=1)
    row = Delivery.objects.get()

    results, barrier = [], threading.Barrier(6)

    def attempt():
        try:
            barrier.wait()
            results.append(wd.deliver(row.id))
        finally:
            connection.close()

    threads = [threading.Thread(target=attempt) for _ in range(3)]
    threads += [threading.Thread(target=lambda: (barrier.wait(), results.append(wd.deliver_due()),
                                                 connection.close())) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(rx.requests) == 1
    # deliver() answers "delivered" to the one that sent and None to the others; deliver_due()
    # counts the attempts it made.
    sends = results.count("delivered") + sum(r for r in results if isinstance(r, int))
    assert sends == 1 and results.count(None) >= 2, results
    row.refresh_from_db()
    assert row.status == "delivered" and row.attempts == 1 and row.claimed_until is None


def test_deliveries_go_to_the_worker_only_once_the_event_commits(world, queued, monkeypatch,
                                                                   django_capture_on_commit_callbacks):
    from django.db import transaction

    from panel import operations

    monkeypatch.setattr(operations, "after_commit", transaction.on_commit)  # the real hand-over
    make_hook(world.client(world.admin_key), PUBLIC_URL)
    with django_capture_on_commit_callbacks(execute=True):
        with pytest.raises(RuntimeError), transaction.atomic():
            emit("node.up", node=1)
            raise RuntimeError
    assert not Event.objects.exists() and not Delivery.objects.exists() and queued == []
    with django_capture_on_commit_callbacks(execute=True):
        emit("node.up", node=1)
        assert queued == []  # not before the commit
    assert queued == [Delivery.objects.get().id]


def test_the_retry_schedule_is_registered_once():
    from django_q.models import Schedule

    from panel.webhooks.schedules import ensure_schedule

    ensure_schedule()
    ensure_schedule()
    schedule = Schedule.objects.get(name="webhook-deliveries")
    assert schedule.func == "panel.webhooks.delivery.deliver_due" and schedule.minutes == 1
    assert schedule.schedule_type == Schedule.MINUTES and schedule.repeats == -1


# --- Who receives what -----------------------------------------------------------------------

def test_customer_webhooks_get_only_their_own_customers_events(world, queued):
    alice = make_hook(world.client(world.alice_key), PUBLIC_URL)
    bob = make_hook(world.client(world.bob_key), PUBLIC_URL)
    admin = make_hook(world.client(world.admin_key), PUBLIC_URL)
    billing = make_hook(world.client(world.billing_key), PUBLIC_URL, ["server.created"])
    only_down = make_hook(world.client(world.admin_key), PUBLIC_URL, ["node.down"])

    def receivers(event) -> set[int]:
        return set(Delivery.objects.filter(event=event).values_list("webhook_id", flat=True))

    assert receivers(emit("server.created", customer_id=world.alice_customer.id, server=1)) == {
        alice["id"], admin["id"], billing["id"]}
    assert receivers(emit("server.deleted", customer_id=world.bob_customer.id, server=2)) == {bob["id"], admin["id"]}
    assert receivers(emit("node.down", node=1)) == {admin["id"], only_down["id"]}
    assert alice["customer"] == world.alice_customer.id and admin["customer"] is None


def test_inactive_webhooks_get_nothing(world, queued):
    make_hook(world.client(world.admin_key), PUBLIC_URL, active=False)
    emit("node.up", node=1)
    assert not Delivery.objects.exists() and queued == []


# --- Alice and Bob ---------------------------------------------------------------------------

@pytest.fixture
def alices_hook(world, queued):
    hook = make_hook(world.client(world.alice_key), PUBLIC_URL, secret=SECRET)
    emit("server.created", customer_id=world.alice_customer.id, server=1)
    return {**hook, "delivery": str(Delivery.objects.get(webhook_id=hook["id"]).uuid)}


def bob_client(world, how):
    return world.client(world.bob_key) if how == "key" else session(world.bob)


BOB_CALLS = [
    ("get", "/api/v1/webhooks/{id}/"),
    ("delete", "/api/v1/webhooks/{id}/"),
    ("get", "/api/v1/webhooks/{id}/deliveries/"),
    ("post", "/api/v1/webhooks/{id}/deliveries/{delivery}/resend/"),
]


@pytest.mark.parametrize("how", ["key", "session"])
@pytest.mark.parametrize("method, template", BOB_CALLS, ids=[f"{m} {t}" for m, t in BOB_CALLS])
def test_bob_cannot_reach_alices_webhook(world, alices_hook, how, method, template):
    client = bob_client(world, how)
    before = list(Delivery.objects.values_list("id", "status", "attempts", "next_attempt_at"))
    theirs = getattr(client, method)(template.format(**alices_hook))
    nothing = getattr(client, method)(template.format(id=987654321, delivery=alices_hook["delivery"]))
    assert theirs.status_code == 404, theirs.content
    assert (theirs.status_code, theirs.json()) == (nothing.status_code, nothing.json())
    assert Webhook.objects.filter(pk=alices_hook["id"]).exists()
    assert list(Delivery.objects.values_list("id", "status", "attempts", "next_attempt_at")) == before


@pytest.mark.parametrize("how", ["key", "session"])
def test_bob_lists_only_his_own_webhooks(world, alices_hook, how):
    bobs = make_hook(world.client(world.bob_key), PUBLIC_URL)
    client = bob_client(world, how)
    assert [h["id"] for h in client.get("/api/v1/webhooks/").json()["results"]] == [bobs["id"]]
    theirs = client.get(f"/api/v1/webhooks/?customer={world.alice_customer.id}")
    nothing = client.get("/api/v1/webhooks/?customer=987654321")
    assert theirs.status_code == 200 and theirs.json()["results"] == []
    assert theirs.json() == nothing.json()
    admin = world.client(world.admin_key).get("/api/v1/webhooks/").json()["results"]
    assert {h["id"] for h in admin} == {alices_hook["id"], bobs["id"]}


def test_alice_reads_her_deliveries_but_cannot_resend(world, alices_hook):
    alice = world.client(world.alice_key)
    r = alice.get(f"/api/v1/webhooks/{alices_hook['id']}/deliveries/")
    assert r.status_code == 200
    assert [d["id"] for d in r.json()["results"]] == [alices_hook["delivery"]]
    assert r.json()["results"][0]["event"] == "server.created"
    r = alice.post(f"/api/v1/webhooks/{alices_hook['id']}/deliveries/{alices_hook['delivery']}/resend/")
    assert r.status_code == 403 and r.json()["code"] == "permission_denied"
    assert not AuditEntry.objects.filter(action="webhook.resend").exists()


def test_alice_deletes_her_own_webhook(world, alices_hook):
    r = world.client(world.alice_key).delete(f"/api/v1/webhooks/{alices_hook['id']}/")
    assert r.status_code == 204
    assert not Webhook.objects.exists() and not Delivery.objects.exists()
    entry = AuditEntry.objects.get(action="webhook.delete")
    assert entry.customer_id == world.alice_customer.id
    assert AuditEntry.objects.filter(action="webhook.create", customer=world.alice_customer).exists()


PRIVATE_URLS = ["http://127.0.0.1:8080/", "http://localhost/hook", "http://10.1.2.3/", "http://192.168.1.1/",
                "http://172.16.0.1/", "http://169.254.169.254/latest/meta-data/", "http://[::1]/",
                "http://[fe80::1]/", "http://[fd00::1]/", "http://[::ffff:127.0.0.1]/", "http://0.0.0.0/",
                "http://100.64.0.1/", "http://240.0.0.1/", "http://224.0.0.1/"]


@pytest.mark.parametrize("url", PRIVATE_URLS)
def test_a_customer_cannot_point_a_webhook_at_private_addresses(world, url):
    r = world.client(world.alice_key).post("/api/v1/webhooks/", {"url": url, "events": ["*"]}, format="json")
    assert r.status_code == 400, r.content
    assert r.json()["code"] == "invalid" and "url" in r.json()["fields"]
    assert not Webhook.objects.exists()


def test_private_addresses_are_allowed_only_for_the_scopes_configured(world, settings):
    make_hook(world.client(world.admin_key), "http://127.0.0.1:8080/")
    r = world.client(world.billing_key).post("/api/v1/webhooks/", {"url": "http://10.0.0.5/billing", "events": ["*"]},
                                             format="json")
    assert r.status_code == 400 and "url" in r.json()["fields"]
    settings.WEBHOOKS_ALLOW_PRIVATE = ["admin", "billing", "customer"]
    assert make_hook(world.client(world.billing_key), "http://10.0.0.5/billing")["customer"] is None
    assert make_hook(world.client(world.alice_key), "http://127.0.0.1:8080/")["customer"] == world.alice_customer.id


def test_the_address_is_checked_again_when_sending(world, receiver, queued, settings):
    """A customer's webhook that points at a private address by the time it is sent (its DNS
    changed; here: the setting changed) is refused for good, and nothing is sent."""
    rx = receiver()
    settings.WEBHOOKS_ALLOW_PRIVATE = ["customer"]
    make_hook(world.client(world.alice_key), rx.url)
    settings.WEBHOOKS_ALLOW_PRIVATE = []
    emit("server.created", customer_id=world.alice_customer.id, server=1)
    row = Delivery.objects.get()
    assert wd.deliver(row.id) == "failed"
    row.refresh_from_db()
    assert "127.0.0.1" in row.last_error and rx.requests == []


def test_the_secret_is_never_returned_by_a_get(world, alices_hook):
    generated = world.client(world.admin_key).post("/api/v1/webhooks/", {"url": PUBLIC_URL, "events": "*"},
                                                   format="json")
    assert generated.status_code == 201
    secret = generated.json()["secret"]  # generated: shown this once
    assert len(secret) >= 32 and generated.json()["events"] == ["*"]
    stored = Webhook.objects.get(pk=generated.json()["id"])
    assert stored.secret == secret and secret not in stored.secret_encrypted
    assert Webhook.objects.get(pk=alices_hook["id"]).secret == SECRET

    for client in (world.client(world.admin_key), world.client(world.alice_key), session(world.admin)):
        for url in ("/api/v1/webhooks/", f"/api/v1/webhooks/{alices_hook['id']}/",
                    f"/api/v1/webhooks/{alices_hook['id']}/deliveries/"):
            r = client.get(url)
            assert r.status_code == 200
            assert SECRET not in r.content.decode() and secret not in r.content.decode()
            assert b'"secret"' not in r.content and b"secret_encrypted" not in r.content
    assert SECRET not in json.dumps(list(AuditEntry.objects.values_list("detail", flat=True)))


# --- Bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("body, field", [
    ({"url": PUBLIC_URL, "events": ["server.created", "server.exploded"]}, "events"),
    ({"url": PUBLIC_URL, "events": []}, "events"),
    ({"url": PUBLIC_URL, "events": "server.created"}, "events"),
    ({"url": PUBLIC_URL, "events": [1, 2]}, "events"),
    ({"url": PUBLIC_URL}, "events"),
    ({"url": "ftp://files.example.com/hook", "events": ["*"]}, "url"),
    ({"url": "javascript:alert(1)", "events": ["*"]}, "url"),
    ({"url": "http:///nohost", "events": ["*"]}, "url"),
    ({"url": "http://user:pw@93.184.216.34/", "events": ["*"]}, "url"),
    ({"url": "http://93.184.216.34:99999/", "events": ["*"]}, "url"),
    ({"url": "http://93.184.216.34/a b", "events": ["*"]}, "url"),
    ({"events": ["*"]}, "url"),
    ({"url": PUBLIC_URL, "events": ["*"], "secret": "short"}, "secret"),
])
@pytest.mark.parametrize("who", ["admin_key", "alice_key"])
def test_bad_input_is_a_400_and_creates_nothing(world, body, field, who):
    r = world.client(getattr(world, who)).post("/api/v1/webhooks/", body, format="json")
    assert r.status_code == 400, r.content
    assert r.json()["code"] == "invalid" and field in r.json()["fields"], r.json()
    assert not Webhook.objects.exists() and not AuditEntry.objects.filter(action="webhook.create").exists()


def test_an_unknown_event_is_answered_with_the_valid_names(world):
    r = world.client(world.admin_key).post("/api/v1/webhooks/", {"url": PUBLIC_URL, "events": ["server.exploded"]},
                                           format="json")
    message = r.json()["fields"]["events"][0]
    assert "server.exploded" in message
    assert all(name in message for name in Event.NAMES)


def test_webhooks_need_authentication(world):
    assert world.client().get("/api/v1/webhooks/").status_code == 401


# --- The admin page --------------------------------------------------------------------------

def test_the_admin_page_lists_webhooks_and_deliveries(world, alices_hook, queued):
    admin_hook = make_hook(world.client(world.admin_key), "http://10.9.8.7/billing-hook")
    emit("node.down", node=1)
    Delivery.objects.filter(webhook_id=admin_hook["id"]).update(status="failed", attempts=9,
                                                                 last_error="HTTP 502: bad gateway")
    r = session(world.admin).get("/admin/webhooks/")
    assert r.status_code == 200
    page = r.content.decode()
    assert PUBLIC_URL in page and "http://10.9.8.7/billing-hook" in page and "Alice Ltd" in page
    assert "HTTP 502: bad gateway" in page and "node.down" in page and "server.created" in page
    assert 'href="/admin/webhooks/"' in page  # the navigation link
    assert SECRET not in page
    failed_only = session(world.admin).get("/admin/webhooks/?status=failed").content.decode()
    assert "node.down" in failed_only and "server.created" not in failed_only.split('id="deliveries"')[1]


def test_the_admin_page_is_not_there_for_customers(world, alices_hook):
    assert session(world.alice).get("/admin/webhooks/").status_code == 404
    row = Delivery.objects.get()
    assert session(world.alice).post("/admin/webhooks/", {"delivery": row.pk}).status_code == 404
    r = Client().get("/admin/webhooks/")
    assert r.status_code == 302 and r["Location"].startswith("/login/")


def test_the_admin_resends_from_the_page_with_csrf(world, alices_hook, queued):
    row = Delivery.objects.get()
    Delivery.objects.filter(pk=row.pk).update(status="failed", next_attempt_at=None, attempts=30)
    queued.clear()
    client = Client(enforce_csrf_checks=True)
    client.force_login(world.admin)
    assert client.post("/admin/webhooks/", {"delivery": row.pk}).status_code == 403  # no CSRF token
    page = client.get("/admin/webhooks/?status=failed")
    token = page.context["csrf_token"]
    r = client.post("/admin/webhooks/?status=failed", {"delivery": row.pk, "csrfmiddlewaretoken": str(token)})
    assert r.status_code == 302 and r["Location"] == "/admin/webhooks/?status=failed"
    row.refresh_from_db()
    assert row.status == "pending" and row.attempts == 0 and queued == [row.id]
    assert AuditEntry.objects.filter(action="webhook.resend", user=world.admin).count() == 1
    missing = client.post("/admin/webhooks/", {"delivery": 987654321, "csrfmiddlewaretoken": str(token)})
    assert missing.status_code == 404

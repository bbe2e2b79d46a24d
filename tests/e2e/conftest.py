"""A live panel for end-to-end tests: its own MariaDB database, daphne, a django-q2 worker,
and the real local libvirtd + QEMU booting the tiny guest.

The e2e tests run in one process (`make test` runs them without xdist), so one panel serves
them all. Every domain it makes carries its own instance id, and all of them are removed at the end.
"""

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
TINY_GUEST = ROOT / ".cache" / "tiny-guest"


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Debian's chromium, headless, as root, without phoning home.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@dataclass
class LivePanel:
    url: str
    env: dict
    admin_password: str
    admin_key: str
    instance: str
    logs: Path
    procs: dict = field(default_factory=dict)

    # -- processes ---------------------------------------------------------------------------
    def manage(self, *args: str) -> str:
        out = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True,
                             text=True, timeout=300)
        if out.returncode != 0:
            raise AssertionError(f"manage.py {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
        return out.stdout

    def spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")
        proc = subprocess.Popen([sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def start_worker(self) -> None:
        self.spawn("worker", "qcluster")

    def kill_worker(self) -> None:
        """SIGKILL the whole worker process group, as a crash or an OOM kill would."""
        proc = self.procs.pop("worker")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def stop_all(self) -> None:
        for name, proc in list(self.procs.items()):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.procs.pop(name, None)

    # -- API ---------------------------------------------------------------------------------
    def api(self, key: str | None = None) -> requests.Session:
        session = requests.Session()
        if key:
            session.headers["Authorization"] = f"Token {key}"
        session.base_url = self.url  # type: ignore[attr-defined]
        return session

    def call(self, key: str, method: str, path: str, **kwargs) -> requests.Response:
        return requests.request(method, self.url + path, headers={"Authorization": f"Token {key}"}, timeout=30,
                                **kwargs)

    def wait_operation(self, key: str, op_id: int, timeout: float = 90) -> dict:
        def finished():
            op = self.call(key, "GET", f"/api/v1/operations/{op_id}/").json()
            return op if op["status"] in ("succeeded", "failed") else None

        op = wait_for(finished, timeout, f"operation {op_id}", interval=0.2)
        if op["status"] == "failed":
            print(f"operation {op_id} ({op['kind']}) failed: {op['error']}")
        return op


def _mysql(sql: str) -> None:
    import MySQLdb

    conn = MySQLdb.connect(user="root", unix_socket=os.environ.get("MYSQL_SOCKET", "/run/mysqld/mysqld.sock"))
    try:
        conn.cursor().execute(sql)
    finally:
        conn.close()


def _remove_domains(instance: str) -> None:
    """Destroy and undefine every domain of this test panel, and delete its disks."""
    import libvirt

    from nodes.domain_xml import read_metadata

    conn = libvirt.open("qemu:///system")
    try:
        for dom in conn.listAllDomains(0):
            xml = dom.XMLDesc(0)
            if read_metadata(xml).get("instance") != instance:
                continue
            disks = [e.get("file") for e in ET.fromstring(xml).findall("devices/disk[@device='disk']/source")]
            if dom.isActive():
                dom.destroy()
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
            for path in filter(None, disks):
                with contextlib.suppress(libvirt.libvirtError):
                    conn.storageVolLookupByPath(path).delete(0)
    finally:
        conn.close()


@contextlib.contextmanager
def running_panel(data: Path, *, tag: str = "e2e", worker: bool = True, env: dict | None = None):
    """A panel on its own MariaDB database: `runpanel --no-worker` (web, local node, monitor)
    and, with `worker`, a separate `qcluster` that tests can kill. On leaving, the processes
    stop, the panel's domains go and the database is dropped. Used by the e2e fixture and the
    benchmarks alike."""
    instance = f"{tag}{secrets.token_hex(4)}"
    database = f"panel_{instance}"
    port = free_port()
    panel_env = {
        **os.environ,
        "DATABASE_URL": f"mysql://root@localhost/{database}",
        "PANEL_DATA_DIR": str(data),
        "PANEL_INSTANCE_ID": instance,
        "TINY_GUEST_DIR": str(TINY_GUEST),
        "STOP_TIMEOUT_SECONDS": "20",
        "OPERATION_STALE_SECONDS": "6",
        "RECONCILE_INTERVAL_MINUTES": "60",
        "WORKERS": "2",
        "PORT": str(port),
        # The local node's servers sit on a NAT network of a test range; guests fetch their
        # install config from the panel at its gateway (local node) or at the host's address
        # on the cluster bridge (test cluster nodes): the panel listens there too.
        "LOCAL_NAT_CIDR": "10.77.5.0/24",
        # test_console_tls puts a TLS proxy in front: the panel reads its X-Forwarded-* headers.
        "TRUSTED_PROXY": "1",
        "BIND": "127.0.0.1,10.77.5.1,10.77.0.1",
        # QEMU (another user) reads the templates' files: not under pytest's private tmp folders.
        "TEMPLATE_SHARE": str(ROOT / ".cache" / "os-templates"),
        # All the suite's (and the benchmarks') calls come from one address with a few keys: a
        # panel's rate limits are not what they measure (tests/test_limits.py shows those).
        "API_RATE_PER_KEY": "100000/minute",
        "API_RATE_PER_ADDRESS": "100000/minute",
        **(env or {}),
    }
    panel_env.pop("REDIS_URL", None)
    panel = LivePanel(url=f"http://127.0.0.1:{port}", env=panel_env, admin_password="", admin_key="",
                      instance=instance, logs=data)
    _mysql(f"CREATE DATABASE {database} CHARACTER SET utf8mb4")
    try:
        panel.manage("migrate", "--noinput", "-v", "0")
        panel.manage("collectstatic", "--noinput", "-v", "0")
        panel.admin_password = panel.manage("create_admin").strip().split(" / ")[-1]
        panel.admin_key = panel.manage("create_api_key", "--scope", "admin", "--name", tag).strip().splitlines()[-1]
        panel.spawn("web", "runpanel", "--no-worker", "--port", str(port))
        if worker:
            panel.start_worker()
        wait_for(lambda: _answers(panel.url + "/login/"), 60, "the panel to answer")
        yield panel
    finally:
        panel.stop_all()
        with contextlib.suppress(Exception):
            _remove_domains(instance)
        _mysql(f"DROP DATABASE IF EXISTS {database}")


@pytest.fixture(scope="session")
def live_panel(tmp_path_factory) -> LivePanel:
    if not (TINY_GUEST / "vmlinuz").exists():
        pytest.fail("the tiny guest is missing: run deploy/build_demo_os.sh (make test does)")
    with running_panel(tmp_path_factory.mktemp("panel-data")) as panel:
        yield panel


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


@dataclass
class Tenant:
    customer_id: int
    key: str
    username: str
    password: str


@pytest.fixture(scope="session")
def plan_id(live_panel) -> int:
    r = live_panel.call(live_panel.admin_key, "POST", "/api/v1/plans/",
                        json={"name": "tiny", "vcpus": 1, "ram_mib": 256, "disk_gib": 1})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def make_tenant(panel: LivePanel, name: str) -> Tenant:
    """A customer with a user (for the browser) and a customer-scope API key, made through the API."""
    admin = panel.admin_key
    r = panel.call(admin, "POST", "/api/v1/customers/", json={"name": name, "email": f"{name}@example.com",
                                                               "external_id": f"{name}-{secrets.token_hex(3)}"})
    assert r.status_code == 201, r.text
    customer = r.json()["id"]
    password = secrets.token_urlsafe(12)
    username = f"{name}-{secrets.token_hex(3)}"
    r = panel.call(admin, "POST", "/api/v1/users/", json={"username": username, "password": password,
                                                           "role": "customer", "customer": customer})
    assert r.status_code == 201, r.text
    r = panel.call(admin, "POST", "/api/v1/api-keys/", json={"name": name, "scope": "customer", "customer": customer})
    assert r.status_code == 201, r.text
    return Tenant(customer, r.json()["key"], username, password)


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium driven by Playwright, one per test module."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def serial_log(server_uuid_hex: str) -> str:
    path = Path(f"/var/log/libvirt/qemu/vps-{server_uuid_hex[:12]}-serial.log")
    return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture(scope="module")
def test_cluster():
    """Three nodes (network namespaces with their own sshd and libvirtd) and a broken fourth."""
    from tests.cluster import Cluster

    cluster = Cluster()
    cluster.start(count=3, extra_broken=True, public=True)
    try:
        yield cluster
    finally:
        cluster.stop()


def panel_db_rows(panel: LivePanel, sql: str, *args) -> list[tuple]:
    """Read (or, for a test's setup, change) the live panel's database directly."""
    import MySQLdb

    conn = MySQLdb.connect(user="root", unix_socket=os.environ.get("MYSQL_SOCKET", "/run/mysqld/mysqld.sock"),
                           database=f"panel_{panel.instance}")
    try:
        cur = conn.cursor()
        cur.execute(sql, args)
        conn.commit()
        return list(cur.fetchall())
    finally:
        conn.close()


def add_nat_network(panel: LivePanel, cluster_id: int, cidr: str, bridge: str = "br-nat"):
    """A NAT network with a pool on a test cluster (before its nodes are installed): servers
    need an address to fetch their install config. Returns what removes both again."""
    admin = panel.admin_key
    r = panel.call(admin, "POST", "/api/v1/networks/", json={"cluster": cluster_id, "name": "private", "kind": "nat",
                                                              "bridge": bridge, "nat_cidr": cidr})
    assert r.status_code == 201, r.text
    network = r.json()["id"]
    gateway = cidr.rsplit(".", 1)[0] + ".1"
    r = panel.call(admin, "POST", "/api/v1/ip-pools/", json={"name": f"nat-{cluster_id}", "network": network,
                                                              "cidr": cidr, "gateway": gateway, "quarantine_minutes": 0})
    assert r.status_code == 201, r.text
    pool = r.json()["id"]

    def remove():
        panel.call(admin, "DELETE", f"/api/v1/ip-pools/{pool}/")
        panel.call(admin, "DELETE", f"/api/v1/networks/{network}/")

    return remove


@contextlib.contextmanager
def cluster_with_node(panel: LivePanel, test_cluster, name: str, first: str, last: str, **plan_fields):
    """A cluster `name` with a directory storage, a bridged public network on the nodes' eth1
    with the pool slice `first`..`last` of 10.77.1.0/24, node 1 of the test cluster installed in
    it, and a plan of 1 vCPU / 128 MiB / 1 GiB (`plan_fields` add to it). Yields {"node", "plan"};
    on leaving, its servers, the node, pool, network and cluster are removed."""
    admin = panel.admin_key

    def post(path, body, expect=201):
        r = panel.call(admin, "POST", path, json=body)
        assert r.status_code == expect, r.text
        return r.json()

    cluster = post("/api/v1/clusters/", {"name": name, "os_family": "apt"})["id"]
    post("/api/v1/storages/", {"cluster": cluster, "name": "disks", "kind": "dir",
                               "path": "/var/lib/libvirt/images/panel"})
    network = post("/api/v1/networks/", {"cluster": cluster, "name": "public", "kind": "bridged", "bridge": "br-pub",
                                         "interface": "eth1"})["id"]
    pool = post("/api/v1/ip-pools/", {"name": f"{name}-public", "network": network, "cidr": "10.77.1.0/24",
                                      "first": first, "last": last, "gateway": "10.77.1.1",
                                      "quarantine_minutes": 0})["id"]
    node = test_cluster.node(1)
    op = post("/api/v1/nodes/", {"cluster": cluster, "name": f"{name}-{node.name}", "address": node.address,
                                 "ssh_password": node.root_password}, expect=202)
    op = panel.wait_operation(admin, op["id"], timeout=180)
    assert op["status"] == "succeeded", op
    plan = post("/api/v1/plans/", {"name": f"{name}-plan", "vcpus": 1, "ram_mib": 128, "disk_gib": 1,
                                   **plan_fields})["id"]
    try:
        yield {"node": op["node"], "plan": plan}
    finally:
        for server in panel.call(admin, "GET", f"/api/v1/servers/?node={op['node']}").json()["results"]:
            panel.wait_operation(admin, panel.call(admin, "DELETE", f"/api/v1/servers/{server['id']}/").json()["id"])
        assert panel.call(admin, "DELETE", f"/api/v1/nodes/{op['node']}/").status_code == 204
        panel.call(admin, "DELETE", f"/api/v1/ip-pools/{pool}/")
        panel.call(admin, "DELETE", f"/api/v1/networks/{network}/")
        panel.call(admin, "DELETE", f"/api/v1/clusters/{cluster}/")


def create_tiny_server(panel: LivePanel, env: dict, tenant: "Tenant", hostname: str) -> dict:
    """A server of the tiny template for `tenant` on the node of a `cluster_with_node` env,
    installed and running: the server as its owner sees it through the API."""
    r = panel.call(panel.admin_key, "POST", "/api/v1/servers/", json={
        "customer": tenant.customer_id, "plan": env["plan"], "hostname": hostname, "os_template": "tiny",
        "node": env["node"]})
    assert r.status_code == 202, r.text
    op = panel.wait_operation(panel.admin_key, r.json()["id"], timeout=240)
    assert op["status"] == "succeeded", op
    return panel.call(tenant.key, "GET", f"/api/v1/servers/{op['server']}/").json()


def backups_of(panel: LivePanel, key: str, server_id: int) -> list[dict]:
    """The server's backups through the API, newest first."""
    r = panel.call(key, "GET", f"/api/v1/servers/{server_id}/backups/")
    assert r.status_code == 200, r.text
    body = r.json()
    return body["results"] if isinstance(body, dict) else body


class ClusterGuest:
    """A server's guest on node 1 of the test cluster: its serial log, and commands typed into
    its shell (tests/guest.py)."""

    READY_TIMEOUT = 90  # seconds for the shell to answer at all
    COMMAND_TIMEOUT = 40

    def __init__(self, cluster, server: dict):
        self.name = "vps-" + server["uuid"].replace("-", "")[:12]
        self.run = lambda argv, **kw: cluster.run(1, argv, **kw)

    def log(self) -> str:
        return self.run(["cat", f"/var/log/libvirt/qemu/{self.name}-serial.log"]).stdout

    def md5(self, start_mib: int, count_mib: int) -> str:
        """The md5 of `count_mib` MiB of the guest's disk from `start_mib` on, read inside the guest."""
        return self.sh(f"dd if=/dev/vda bs=1M skip={start_mib} count={count_mib} 2>/dev/null | md5sum").split()[0]

    def sh(self, command: str, timeout: float | None = None) -> str:
        from tests.guest import guest_command, wait_shell

        wait_shell(self.run, self.name, self.log, timeout=self.READY_TIMEOUT)
        code, out = guest_command(self.run, self.name, self.log, command, timeout=timeout or self.COMMAND_TIMEOUT)
        assert code == 0, out
        return out


class BackupGuest(ClusterGuest):
    """A guest whose data the backup tests write, back up, destroy and compare: `data_mib` MiB
    at (start, count) on its disk, above the installed system."""

    READY_TIMEOUT, COMMAND_TIMEOUT = 120, 60

    def __init__(self, cluster, server: dict, data_mib: tuple[int, int]):
        super().__init__(cluster, server)
        self.data_mib = data_mib

    def data_md5(self) -> str:
        return self.md5(*self.data_mib)

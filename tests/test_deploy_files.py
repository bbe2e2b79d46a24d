"""deploy/: the production files checked with the real tools.

- the systemd units with `systemd-analyze verify` (against a copy whose /opt/panel paths point at
  a temporary root whose .venv/bin/python is this checkout's, since verify wants ExecStart's
  binary to exist); any line it prints counts, since it only warns about a bad value;
- the nginx site with `nginx -t` inside a throwaway nginx.conf, with a self-signed certificate,
  then live: nginx on loopback ports in front of a small upstream that echoes what it got, for
  the redirect, the websocket upgrade on /ws/, X-Forwarded-For/Proto and the static files;
- the logrotate file with `logrotate -d`;
- deploy/upgrade.sh at its command boundary: stub python/systemctl/npm record what it runs, in a
  throwaway git checkout.

Each checker is shown once to fail on a deliberately broken copy.
"""

import asyncio
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests
import websockets
from websockets.asyncio.server import serve

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNITS = sorted((DEPLOY / "systemd").iterdir())
SITE = DEPLOY / "nginx" / "panel.conf"
ENV_EXAMPLE = DEPLOY / "panel.env.example"
LOGROTATE = DEPLOY / "logrotate" / "panel"
UPGRADE = DEPLOY / "upgrade.sh"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def env_example() -> dict[str, str]:
    """The settings the template sets (uncommented lines)."""
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


# --- systemd ----------------------------------------------------------------------------------

def verify_units(tmp_path: Path, texts: dict[str, str]) -> tuple[int, str]:
    """`systemd-analyze verify` on units {name: text}, /opt/panel and /etc/panel moved under tmp_path."""
    if not shutil.which("systemd-analyze"):
        pytest.fail("systemd-analyze is missing (the systemd package: tests/infra/install_deps.sh)")
    root = tmp_path / "root"
    (root / "opt/panel/.venv/bin").mkdir(parents=True)
    (root / "opt/panel/.venv/bin/python").symlink_to(ROOT / ".venv/bin/python")
    (root / "etc/panel").mkdir(parents=True)
    (root / "etc/panel/panel.env").write_text(ENV_EXAMPLE.read_text())
    units = tmp_path / "units"
    units.mkdir()
    for name, text in texts.items():
        text = text.replace("/opt/panel", f"{root}/opt/panel").replace("/etc/panel/", f"{root}/etc/panel/")
        (units / name).write_text(text)
    out = subprocess.run(["systemd-analyze", "verify", "--man=no", *sorted(map(str, units.iterdir()))],
                         capture_output=True, text=True, timeout=60)
    return out.returncode, (out.stdout + out.stderr).strip()


def unit_texts() -> dict[str, str]:
    return {unit.name: unit.read_text() for unit in UNITS}


def test_units_pass_systemd_analyze_verify(tmp_path):
    rc, output = verify_units(tmp_path, unit_texts())
    assert (rc, output) == (0, "")


@pytest.mark.parametrize("breakage", [
    ("ExecStart=/opt/panel/.venv/bin/python", "ExecStart=/opt/panel/.venv/bin/pyhton"),  # error
    ("KillMode=mixed", "KillMode=mixd"),  # only a warning, rc 0: the output counts too
])
def test_a_broken_unit_is_reported(tmp_path, breakage):
    texts = unit_texts()
    old, new = breakage
    texts["panel-web.service"] = texts["panel-web.service"].replace(old, new)
    rc, output = verify_units(tmp_path, texts)
    assert rc != 0 or output
    assert "panel-web.service" in output


def test_units_run_what_runpanel_runs():
    """Web = runpanel without its worker (daphne + monitor), worker = the qcluster it would start."""
    web = (DEPLOY / "systemd/panel-web.service").read_text()
    worker = (DEPLOY / "systemd/panel-worker.service").read_text()
    runpanel = (ROOT / "panel/management/commands/runpanel.py").read_text()
    assert "ExecStart=/opt/panel/.venv/bin/python manage.py runpanel --no-worker\n" in web
    assert '"--no-worker"' in runpanel and '"qcluster"' in runpanel
    assert "ExecStart=/opt/panel/.venv/bin/python manage.py qcluster\n" in worker
    for text in (web, worker):
        assert "EnvironmentFile=/etc/panel/panel.env\n" in text and "PartOf=panel.target\n" in text


# --- the environment template -----------------------------------------------------------------

def test_env_template_lists_every_setting_and_no_secret():
    names = set()
    for source in (ROOT / "panel/settings.py", ROOT / "panel/management/commands/runpanel.py"):
        names |= set(re.findall(r'(?:env(?:str|int|bool|list)|environ\.get)\("([A-Z_]+)"', source.read_text()))
    assert len(names) > 30
    text = ENV_EXAMPLE.read_text()
    assert sorted(n for n in names if not re.search(rf"^#?{n}=", text, re.M)) == []
    values = env_example()
    for line in text.splitlines():
        assert not line or line.startswith("#") or re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", line), line
    for secret in ("SECRET_KEY", "CREDENTIALS_KEY", "PANEL_BACKUP_KEY", "PANEL_INSTANCE_ID"):
        assert secret not in values  # generated into PANEL_DATA_DIR unless the admin sets one
    assert values["TRUSTED_PROXY"] == values["BEHIND_TLS_PROXY"] == "1"
    assert values["BIND"] == "127.0.0.1"


# --- nginx ------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def certificate(folder: Path) -> None:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=panel.example.com", "-addext", "subjectAltName=DNS:panel.example.com,IP:127.0.0.1",
                    "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem")],
                   check=True, capture_output=True, timeout=60)


def nginx_setup(folder: Path, site: str, *, http=80, https=443, upstream=8000) -> list[str]:
    """A throwaway nginx.conf including `site` with its paths moved into `folder`; the command line."""
    site = (site.replace("/etc/letsencrypt/live/panel.example.com/fullchain.pem", str(folder / "cert.pem"))
            .replace("/etc/letsencrypt/live/panel.example.com/privkey.pem", str(folder / "key.pem"))
            .replace("/var/log/nginx/", f"{folder}/")
            .replace("/var/lib/panel/static/", f"{folder}/static/")
            .replace("server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream};"))
    site = re.sub(r"listen \[::\]:\d+( ssl)?;\n", "", site)
    site = site.replace("listen 80;", f"listen 127.0.0.1:{http};").replace("listen 443 ssl;", f"listen 127.0.0.1:{https} ssl;")
    (folder / "site.conf").write_text(site)
    user = "user root;" if os.geteuid() == 0 else ""
    (folder / "nginx.conf").write_text(f"""{user}
worker_processes 1;
daemon off;
pid {folder}/nginx.pid;
error_log {folder}/error.log;
events {{ worker_connections 64; }}
http {{
    client_body_temp_path {folder}/client_body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    types_hash_max_size 2048;
    include {folder}/site.conf;
}}
""")
    return [NGINX, "-p", str(folder), "-c", str(folder / "nginx.conf"), "-e", str(folder / "error.log")]


def nginx_t(folder: Path, site: str) -> tuple[int, str]:
    certificate(folder)
    out = subprocess.run([*nginx_setup(folder, site), "-t"], capture_output=True, text=True, timeout=60)
    return out.returncode, out.stderr


def test_site_passes_nginx_t(tmp_path):
    rc, output = nginx_t(tmp_path, SITE.read_text())
    assert rc == 0, output
    assert "test is successful" in output


def test_a_broken_site_fails_nginx_t(tmp_path):
    rc, output = nginx_t(tmp_path, SITE.read_text().replace("proxy_read_timeout 1h;", "proxy_read_timeout 1h", 1))
    assert rc != 0
    assert "site.conf" in output


def test_site_matches_the_env_template():
    site, values = SITE.read_text(), env_example()
    assert f"server {values['BIND']}:{values['PORT']};" in site
    assert f"alias {values['PANEL_DATA_DIR']}/static/;" in site
    assert "client_max_body_size" in site
    # Set to nginx's own view of the client, never the client's header passed on.
    assert "$proxy_add_x_forwarded_for" not in site
    assert site.count("proxy_set_header X-Forwarded-For $remote_addr;") == 3


class Echo:
    """An upstream answering HTTP with the request it got (JSON) and websockets likewise."""

    def __init__(self):
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.stop.set_result, None)
        self.thread.join(10)

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())

    @staticmethod
    def _seen(request) -> str:
        return json.dumps({"path": request.path, "headers": {k.lower(): v for k, v in request.headers.raw_items()}})

    async def _serve(self):
        self.stop = self.loop.create_future()

        def http(connection, request):
            if request.headers.get("Upgrade", "").lower() != "websocket":
                return connection.respond(200, self._seen(request))
            return None

        async def ws(connection):
            await connection.send(self._seen(connection.request))
            await connection.send(await connection.recv())

        async with serve(ws, "127.0.0.1", self.port, process_request=http):
            self.ready.set()
            await self.stop


def test_site_live_behind_nginx(tmp_path):
    """nginx running the site: http→https, /provision/ on http, the websocket upgrade on /ws/,
    X-Forwarded-For replaced by the client's address, X-Forwarded-Proto, static files."""
    certificate(tmp_path)
    (tmp_path / "static").mkdir()
    (tmp_path / "static/panel.css").write_text("body{}")
    http, https = free_port(), free_port()
    with Echo() as echo:
        cmd = nginx_setup(tmp_path, SITE.read_text(), http=http, https=https, upstream=echo.port)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    socket.create_connection(("127.0.0.1", https), timeout=1).close()
                    break
                except OSError:
                    assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "error.log").read_text()
                    time.sleep(0.05)
            host = {"Host": "panel.example.com"}
            r = requests.get(f"http://127.0.0.1:{http}/servers/", headers=host, allow_redirects=False, timeout=10)
            assert (r.status_code, r.headers["Location"]) == (301, "https://panel.example.com/servers/")
            r = requests.get(f"http://127.0.0.1:{http}/provision/abc/", headers={**host, "X-Forwarded-For": "6.6.6.6"},
                             timeout=10)
            seen = r.json()["headers"]
            assert (seen["x-forwarded-for"], seen["x-forwarded-proto"]) == ("127.0.0.1", "http")

            # verify= on each request: a session's own would lose to REQUESTS_CA_BUNDLE.
            session, ca = requests.Session(), str(tmp_path / "cert.pem")
            base = f"https://127.0.0.1:{https}"
            r = session.get(base + "/console/tok/", headers={**host, "X-Forwarded-For": "6.6.6.6"}, timeout=10,
                            verify=ca)
            seen = r.json()
            assert seen["path"] == "/console/tok/"
            assert (seen["headers"]["x-forwarded-for"], seen["headers"]["x-forwarded-proto"]) == ("127.0.0.1", "https")
            r = session.get(base + "/static/panel.css", headers=host, timeout=10, verify=ca)
            assert (r.status_code, r.text) == (200, "body{}")

            async def console():
                ctx = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
                ctx.check_hostname = False
                async with websockets.connect(f"wss://127.0.0.1:{https}/ws/console/tok/", ssl=ctx,
                                              additional_headers={"X-Forwarded-For": "6.6.6.6"}) as ws:
                    seen = json.loads(await ws.recv())
                    await ws.send(b"RFB 003.008\n")
                    return seen, await ws.recv()

            seen, echoed = asyncio.run(console())
            assert seen["path"] == "/ws/console/tok/"
            assert seen["headers"]["upgrade"].lower() == "websocket"
            assert seen["headers"]["host"] == f"127.0.0.1:{https}"  # $http_host: the port kept
            assert (seen["headers"]["x-forwarded-for"], seen["headers"]["x-forwarded-proto"]) == ("127.0.0.1", "https")
            assert echoed == b"RFB 003.008\n"
        finally:
            proc.terminate()
            proc.wait(10)


# --- logrotate --------------------------------------------------------------------------------

def logrotate_d(tmp_path: Path, text: str) -> tuple[bool, str]:
    """Whether `logrotate -d` takes the file: it only warns (rc 0) about an unknown option."""
    logs = tmp_path / "log"
    logs.mkdir()
    (logs / "web.log").write_text("x\n")
    conf = tmp_path / "panel"
    conf.write_text(text.replace("/var/log/panel/", f"{logs}/"))
    out = subprocess.run(["logrotate", "-d", "-s", str(tmp_path / "state"), str(conf)],
                         capture_output=True, text=True, timeout=60)
    output = out.stdout + out.stderr
    return out.returncode == 0 and not re.search(r"^error:", output, re.M), output


def test_logrotate_file_passes_logrotate_d(tmp_path):
    ok, output = logrotate_d(tmp_path, LOGROTATE.read_text())
    assert ok, output
    assert "considering log" in output and "web.log" in output


def test_a_broken_logrotate_file_fails(tmp_path):
    ok, output = logrotate_d(tmp_path, LOGROTATE.read_text().replace("rotate 14", "rotat 14"))
    assert not ok and "unknown option 'rotat'" in output, output


# --- deploy/upgrade.sh ------------------------------------------------------------------------

STUB = """#!/bin/sh
echo "$(basename "$0") $* [in $PWD] [data $PANEL_DATA_DIR] [x $PANEL_TEST_QUOTED]" >> "$STUB_LOG"
case "$*" in *backup_panel*) [ -z "$FAIL_BACKUP" ] || { echo "backup refused" >&2; exit 1; } ;; esac
case "$*" in "is-enabled --quiet panel-web.service") ;; is-enabled*|is-active*) exit 1 ;; esac
"""


@pytest.fixture
def checkout(tmp_path):
    """A git checkout holding deploy/ (upgrade.sh, the units) with two commits, the first one
    recorded as deployed; stub python, systemctl and npm; an env file; installed units."""
    home = tmp_path / "panel"
    shutil.copytree(DEPLOY, home / "deploy")
    (home / "requirements.txt").write_text("Django\n")
    (home / "manage.py").write_text("")
    git = ["git", "-C", str(home), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q", str(home)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    first = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    (home / "requirements.txt").write_text("Django\nrequests\n")
    subprocess.run([*git, "commit", "-qam", "two"], check=True)
    bin_dir = tmp_path / "bin"
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    bin_dir.mkdir()
    for stub in (venv / "bin/python", bin_dir / "systemctl", bin_dir / "npm"):
        stub.write_text(STUB)
        stub.chmod(0o755)
    data = tmp_path / "data"
    data.mkdir()
    (data / "deployed-revision").write_text(first + "\n")
    units = tmp_path / "units"
    units.mkdir()
    (units / "panel-web.service").write_text("[Unit]\nDescription=an older copy\n")
    (tmp_path / "panel.env").write_text(f"# the env file\nPANEL_DATA_DIR={data}\nPANEL_TEST_QUOTED=\"a b\"\n")
    return {"home": home, "tmp": tmp_path, "first": first, "data": data, "units": units,
            "env": {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "STUB_LOG": str(tmp_path / "log"),
                    "PANEL_VENV": str(venv), "PANEL_ENV_FILE": str(tmp_path / "panel.env"),
                    "PANEL_UNIT_DIR": str(units), "PANEL_SYSTEMD": "yes", "FAIL_BACKUP": ""}}


def upgrade(checkout, **env) -> tuple[subprocess.CompletedProcess, list[str]]:
    log = checkout["tmp"] / "log"
    log.unlink(missing_ok=True)
    out = subprocess.run([str(checkout["home"] / "deploy/upgrade.sh")], env={**checkout["env"], **env},
                         capture_output=True, text=True, timeout=120)
    return out, log.read_text().splitlines() if log.exists() else []


def commands(log: list[str]) -> list[str]:
    return [line.split(" [in ")[0] for line in log]


def test_upgrade_runs_the_steps_in_order(checkout):
    out, log = upgrade(checkout)
    assert out.returncode == 0, out.stderr
    home, data = checkout["home"], checkout["data"]
    backup = data / "backups"
    ran = commands(log)
    assert ran[0].startswith(f"python manage.py backup_panel {backup}/before-upgrade-")
    assert ran[1:] == [
        "python -m pip install -q --disable-pip-version-check -r requirements.txt",
        "python manage.py compilemessages --ignore=.venv --ignore=.cache -v 0",
        "python manage.py collectstatic --noinput -v 0",
        "python manage.py migrate --noinput",
        "systemctl daemon-reload",
        "systemctl is-enabled --quiet panel-web.service",
        "systemctl is-enabled --quiet panel-worker.service",
        "systemctl is-active --quiet panel-worker.service",
        "systemctl restart panel-web.service",
    ]
    # The backup ran with the deployed (first) revision's code, in a worktree since removed;
    # the other steps in the checkout; all with the env file's settings.
    assert f"[in {home}]" not in log[0] and "panel-upgrade." in log[0]
    assert all(f"[in {home}]" in line for line in log[1:])
    assert all(f"[data {data}] [x a b]" in line for line in log)
    assert "git worktree" not in out.stdout and len(subprocess.run(
        ["git", "-C", str(home), "worktree", "list"], capture_output=True, text=True).stdout.splitlines()) == 1
    assert "with the deployed code" in out.stdout and "done: the panel runs" in out.stdout
    # The unit file installed before is refreshed; one not installed is not installed by it.
    assert (checkout["units"] / "panel-web.service").read_text() == (DEPLOY / "systemd/panel-web.service").read_text()
    assert not (checkout["units"] / "panel-worker.service").exists()
    head = subprocess.run(["git", "-C", str(home), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert (data / "deployed-revision").read_text() == head


def test_a_failed_backup_stops_the_upgrade_before_anything_changes(checkout):
    out, log = upgrade(checkout, FAIL_BACKUP="1")
    assert out.returncode != 0
    assert [line.split()[2] for line in log] == ["backup_panel"]
    assert "backup refused" in out.stderr
    assert "the upgrade stopped before changing anything" in out.stderr
    assert (checkout["data"] / "deployed-revision").read_text() == checkout["first"] + "\n"
    assert (checkout["units"] / "panel-web.service").read_text().startswith("[Unit]\nDescription=an older copy")


def test_upgrade_is_idempotent(checkout):
    first, _ = upgrade(checkout)
    again, log = upgrade(checkout)
    assert (first.returncode, again.returncode) == (0, 0), again.stderr
    # Deployed = HEAD now: the backup runs in the checkout itself; the units are up to date.
    assert f"[in {checkout['home']}]" in log[0] and "backup_panel" in log[0]
    assert "systemctl daemon-reload" not in commands(log)
    assert commands(log)[-1] == "systemctl restart panel-web.service"


def test_upgrade_without_systemd_restarts_nothing(checkout):
    out, log = upgrade(checkout, PANEL_SYSTEMD="no")
    assert out.returncode == 0, out.stderr
    assert not [line for line in log if line.startswith("systemctl")]
    assert "restart the panel yourself" in out.stdout


def test_make_upgrade_calls_the_script():
    out = subprocess.run(["make", "-n", "--no-print-directory", "-C", str(ROOT), "upgrade"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "deploy/upgrade.sh", out.stdout + out.stderr

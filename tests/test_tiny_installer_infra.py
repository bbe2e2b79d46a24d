"""Self-test of the tiny guest as an OS installer (panel.config=, tests/infra/README.md "Installer").

Run: cd /work/main && .venv/bin/python -m pytest tests/test_tiny_installer_infra.py -q -p no:xdist
Same requirements as tests/test_guest_network_infra.py, whose helpers and fixtures it uses:
root, the host's qemu:///system, the bridge pnltnet0 (10.77.9.1/24), domains named netcheck-*
(removed afterwards), qemu-img. No Django database. A small HTTP server on 10.77.9.1 serves
a hand-written config script once and records the guest's call-back.

One domain with a 64 MiB qcow2 disk (virtio, /dev/vda) boots three times:
  1. blank disk, no panel.config=         -> "TINY-GUEST not installed"
  2. panel.config=http://10.77.9.1:<port>/cfg…  -> fetched, run (it writes a marker, tars the
     "installed system" onto /dev/vda, POSTs its log back), "TINY-GUEST config exit 4"
  3. destroyed, booted again without panel.config= -> "TINY-GUEST installed <hostname>",
     the marker is there again.
test_user_data_template_installs does the same with templates_os/catalog/tiny/user-data
rendered as the panel does (stand-in recipe runner and call-back scripts).
"""
from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.guest import wait_shell
from tests.test_guest_network_infra import (  # noqa: F401  (fixtures used by name)
    BRIDGE, GATEWAY, PREFIX, TIMINGS, Guest, _define_and_start, _virsh, domain_xml, netbridge,
    tiny_guest,
)

pytestmark = [pytest.mark.e2e]

NAME = PREFIX + "inst"
SERIAL = f"/var/log/libvirt/qemu/{NAME}-serial.log"
GUEST_IP = "10.77.9.31"
HOSTNAME = "tiny-inst-1"
MARKER = "marker-7f3a9c"
# Shell metacharacters in the URL's query: the guest must pass them to wget untouched.
CFG_PATH = "/cfg?q=$(touch${IFS}/tmp/pwned)&g=*;x|y"

# The config script the "panel" serves: the same steps as templates_os/catalog/tiny/user-data
# (hostname, a recipe log and exit code, the installed system as a tar raw on /dev/vda, a
# call-back POST of the log with busybox wget), written out by hand. {port} is filled in.
CONFIG = """#!/bin/sh
echo "TINY-GUEST hostname {host}" >/dev/ttyS0
echo {host} >/etc/hostname && hostname {host}
mkdir -p /srv /var/log /etc/tiny-guest
echo {marker} >/srv/tiny-marker
echo "recipe says hi" >/var/log/panel-recipe.log
echo 0 >/var/log/panel-recipe.exit
date >/etc/tiny-guest/installed
cd / && tar -cf /dev/vda etc/hostname etc/tiny-guest/installed srv var/log/panel-recipe.log \\
  var/log/panel-recipe.exit && sync
echo "TINY-GUEST persist exit $?" >/dev/ttyS0
i=0
until wget -q -O /dev/null --post-file /var/log/panel-recipe.log "http://{gw}:{port}/callback?exit=0"; do
  i=$((i + 1)); [ $i -ge 10 ] && exit 9; sleep 1
done
exit 4
"""


class Panel:
    """A stand-in for the panel: GET <cfg_path> serves the script once (then 410; the first
    `busy` GETs get a 503 instead, to make the guest retry), POSTs recorded."""

    def __init__(self, host: str, cfg_path: str = CFG_PATH):
        panel = self
        self.gets: list[str] = []
        self.posts: list[tuple[str, bytes]] = []
        self.script = b""
        self.busy = 0

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                panel.gets.append(self.path)
                if self.path == cfg_path and len(panel.gets) <= panel.busy:
                    self._reply(503, b"busy\n")
                elif self.path == cfg_path and len(panel.gets) == panel.busy + 1:
                    self._reply(200, panel.script)
                else:
                    self._reply(410, b"gone\n")

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                panel.posts.append((self.path, body))
                self._reply(200, b"thanks\n")

            def _reply(self, code: int, body: bytes):
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _with_disk(xml: str, disk: str) -> str:
    dom = ET.fromstring(xml)
    d = ET.Element("disk", type="file", device="disk")
    ET.SubElement(d, "driver", name="qemu", type="qcow2")
    ET.SubElement(d, "source", file=disk)
    ET.SubElement(d, "target", dev="vda", bus="virtio")
    dom.find("devices").insert(0, d)
    return ET.tostring(dom, encoding="unicode")


def _reboot_with(guest: Guest, cmdline: str) -> Guest:
    """Destroy the domain, give it a new kernel command line (same definition otherwise:
    same UUID and disk), start it again with an empty serial log."""
    _virsh(guest.run, "destroy", guest.name, check=False)
    dom = ET.fromstring(_virsh(guest.run, "dumpxml", "--inactive", guest.name).stdout)
    dom.find("os/cmdline").text = cmdline
    return _define_and_start(guest.run, guest.name, ET.tostring(dom, encoding="unicode"), guest.serial)


def _lines(log: str) -> list[str]:
    return [l.rstrip("\r") for l in log.splitlines()
            if l.startswith("TINY-GUEST ") and not l.startswith("TINY-GUEST uptime")]


@pytest.fixture
def installer_env(netbridge):
    workdir = tempfile.mkdtemp(prefix="tiny-inst-")
    os.chmod(workdir, 0o755)              # libvirt-qemu must reach the disk
    disk = os.path.join(workdir, "disk.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", disk, "64M"], check=True)
    panel = Panel(GATEWAY)
    try:
        yield panel, disk
    finally:
        panel.close()
        _virsh(subprocess.run, "destroy", NAME, check=False)
        _virsh(subprocess.run, "undefine", NAME, check=False)
        shutil.rmtree(workdir, ignore_errors=True)
        for p in (SERIAL, f"/var/log/libvirt/qemu/{NAME}.log"):
            if os.path.exists(p):
                os.unlink(p)


def test_install_then_boot_installed(installer_env):
    panel, disk = installer_env
    run = subprocess.run
    net = f"console=ttyS0 panic=1 panel.ip=eth0,{GUEST_IP}/24,{GATEWAY}"
    panel.script = CONFIG.format(host=HOSTNAME, marker=MARKER, gw=GATEWAY, port=panel.port).encode()
    url = f"http://{GATEWAY}:{panel.port}{CFG_PATH}"

    # 1. blank disk, no panel.config=
    t0 = time.monotonic()
    g = _define_and_start(run, NAME, _with_disk(domain_xml(NAME, SERIAL, net, BRIDGE), disk), SERIAL)
    g.wait_for(r"^TINY-GUEST booted")
    TIMINGS["installer: blank disk -> booted"] = time.monotonic() - t0
    lines = _lines(g.log())
    print("\nblank disk:", *lines, sep="\n  ")
    assert "TINY-GUEST not installed" in lines, lines
    assert not [l for l in lines if l.startswith("TINY-GUEST config")], lines

    # 2. the install
    t0 = time.monotonic()
    g = _reboot_with(g, f"{net} panel.config={url}")
    g.wait_for(r"^TINY-GUEST booted", timeout=120)
    TIMINGS["installer: install boot -> booted"] = time.monotonic() - t0
    lines = _lines(g.log())
    print("install:", *lines, sep="\n  ")
    i = lines.index("TINY-GUEST config fetched")
    assert lines[i:] == [
        "TINY-GUEST config fetched",
        f"TINY-GUEST hostname {HOSTNAME}",
        "TINY-GUEST persist exit 0",
        "TINY-GUEST config exit 4",
        "TINY-GUEST booted",
    ], lines
    assert lines.index("TINY-GUEST net ready") < i
    assert not [l for l in lines if "installed" in l], lines
    assert panel.gets == [CFG_PATH], panel.gets           # fetched once, URL untouched
    assert panel.posts == [("/callback?exit=0", b"recipe says hi\n")], panel.posts
    wait_shell(run, NAME, g.log, timeout=60)
    assert g.cmd("hostname") == (0, HOSTNAME)
    assert g.cmd("cat /srv/tiny-marker") == (0, MARKER)
    assert g.cmd("ls /tmp/pwned")[0] != 0                   # the URL never reached a shell

    # 3. destroyed (no clean shutdown: the config script's sync must suffice), booted again
    t0 = time.monotonic()
    g = _reboot_with(g, net)
    g.wait_for(r"^TINY-GUEST booted")
    TIMINGS["installer: installed boot -> booted"] = time.monotonic() - t0
    lines = _lines(g.log())
    print("installed:", *lines, sep="\n  ")
    assert f"TINY-GUEST installed {HOSTNAME}" in lines, lines
    assert lines.index(f"TINY-GUEST installed {HOSTNAME}") < lines.index("TINY-GUEST booted")
    assert not [l for l in lines if l.startswith("TINY-GUEST config")], lines
    assert len(panel.gets) == 1 and len(panel.posts) == 1
    wait_shell(run, NAME, g.log, timeout=60)
    assert g.cmd("cat /srv/tiny-marker") == (0, MARKER)
    assert g.cmd("hostname") == (0, HOSTNAME)
    assert g.cmd("cat /var/log/panel-recipe.exit") == (0, "0")
    # ACPI power-off still works on an installed guest
    _virsh(run, "shutdown", NAME)
    g.wait_for(r"^TINY-GUEST poweroff", timeout=30)


def test_bad_config_value_fails_and_boots_on(installer_env):
    """Two panel.config= values: rejected at once ("config failed"), nothing fetched, the
    guest boots on (and, given a config, does not look at the disk)."""
    panel, disk = installer_env
    url = f"http://{GATEWAY}:{panel.port}{CFG_PATH}"
    cmd = f"console=ttyS0 panic=1 panel.ip=eth0,{GUEST_IP}/24,{GATEWAY} panel.config={url} panel.config={url}"
    g = _define_and_start(subprocess.run, NAME, _with_disk(domain_xml(NAME, SERIAL, cmd, BRIDGE), disk),
                          SERIAL)
    g.wait_for(r"^TINY-GUEST booted")
    lines = _lines(g.log())
    print("\nbad config:", *lines, sep="\n  ")
    assert "TINY-GUEST config failed" in lines, lines
    assert lines.index("TINY-GUEST config failed") < lines.index("TINY-GUEST booted")
    assert not [l for l in lines if re.match(r"TINY-GUEST (config (fetched|exit)|(not )?installed)", l)], lines
    assert panel.gets == [] and panel.posts == []


# Stand-ins for the panel's recipe runner and call-back scripts (their contract: the runner
# logs to /var/log/panel-recipe.log and .exit and exits with the recipe's code; the call-back
# POSTs the log and exit code, curl first, then busybox wget, until the panel answers 2xx).
RUNNER = """mkdir -p /var/log /srv
( echo "recipe: hello from $(hostname)"; echo done >/srv/recipe-done; exit 2 ) >/var/log/panel-recipe.log 2>&1
rc=$?; echo $rc >/var/log/panel-recipe.exit; exit $rc
"""
CALLBACK = """url="http://{gw}:{port}/callback?exit=$(cat /var/log/panel-recipe.exit)"
i=0
while [ $i -lt 30 ]; do
  if command -v curl >/dev/null 2>&1; then
    curl -fsS -o /dev/null --data-binary @/var/log/panel-recipe.log "$url" && exit 0
  else
    wget -q -O /dev/null --post-file /var/log/panel-recipe.log "$url" && exit 0
  fi
  i=$((i + 1)); sleep 2
done
exit 1
"""


def test_user_data_template_installs(installer_env):
    """templates_os/catalog/tiny/user-data, rendered as the panel does, installs the guest:
    hostname, root hash, SSH keys, recipe (exit 2), the installed system on /dev/vda, the
    call-back; booted again without panel.config= it is "installed"."""
    pytest.importorskip("jinja2")
    from tests.test_tiny_template_render import Trusted, render

    panel, disk = installer_env
    run = subprocess.run
    host = "tiny-tmpl-1"
    keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey1 alice@example", "ssh-rsa AAAAB3 $(reboot) 'x'"]
    pw_hash = "$6$saltsalt$0123456789abcdefghijABCDEFGHIJ./"
    b64 = lambda s: Trusted(base64.b64encode(s.encode()).decode())  # noqa: E731
    panel.script = render(
        hostname=host, ssh_keys=keys, root_password_hash=Trusted(pw_hash),
        recipe_runner_b64=b64(RUNNER),
        callback_b64=b64(CALLBACK.format(gw=GATEWAY, port=panel.port)),
    ).encode()
    panel.busy = 2                          # the guest must retry (twice, 1 s apart)
    net = f"console=ttyS0 panic=1 panel.ip=eth0,{GUEST_IP}/24,{GATEWAY}"
    cmd = f"{net} panel.config=http://{GATEWAY}:{panel.port}{CFG_PATH}"
    t0 = time.monotonic()
    g = _define_and_start(run, NAME, _with_disk(domain_xml(NAME, SERIAL, cmd, BRIDGE), disk), SERIAL)
    g.wait_for(r"^TINY-GUEST booted", timeout=120)
    TIMINGS["installer: user-data install -> booted"] = time.monotonic() - t0
    lines = _lines(g.log())
    print("\nuser-data install:", *lines, sep="\n  ")
    i = lines.index("TINY-GUEST config fetched")
    assert lines[i:] == [
        "TINY-GUEST config fetched",
        f"TINY-GUEST hostname {host}",
        "TINY-GUEST recipe exit 2",
        "TINY-GUEST persist exit 0",
        "TINY-GUEST callback exit 0",
        "TINY-GUEST config exit 2",
        "TINY-GUEST booted",
    ], lines
    assert panel.gets == [CFG_PATH] * 3, panel.gets
    assert panel.posts == [("/callback?exit=2", f"recipe: hello from {host}\n".encode())], panel.posts

    g = _reboot_with(g, net)
    g.wait_for(r"^TINY-GUEST booted")
    lines = _lines(g.log())
    print("user-data installed:", *lines, sep="\n  ")
    assert f"TINY-GUEST installed {host}" in lines, lines
    wait_shell(run, NAME, g.log, timeout=60)
    assert g.cmd("cat /srv/recipe-done") == (0, "done")
    assert g.cmd("cat /etc/shadow") == (0, f"root:{pw_hash}:19000:0:99999:7:::")
    assert g.cmd("grep ^root: /etc/passwd") == (0, "root:x:0:0:root:/root:/bin/sh")
    assert g.cmd("cat /root/.ssh/authorized_keys") == (0, "\n".join(keys))
    assert g.cmd("stat -c %a /root/.ssh /root/.ssh/authorized_keys") == (0, "700\n600")
    assert g.cmd("cat /var/log/panel-recipe.exit") == (0, "2")

"""The README's first command as a new user runs it: a fresh clone of the repository, `make run`
(the virtualenv with the production dependencies, noVNC, the local node, the demo OS, SQLite),
the login it prints; then, in chromium, a server made on the admin's "new server" page with
the quick start's defaults (the starter plan, the provider's own customer, the demo OS)
reaches running, and its console draws the guest's screen."""

import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, _remove_domains, free_port, wait_for
from tests.e2e.test_console_browser import canvas_stats

LOGIN = re.compile(r"admin login: (\S+) / (\S+)")


@pytest.mark.browser
def test_make_run_in_a_fresh_clone_serves_a_server_whose_console_draws(browser):
    # QEMU (another user) reads the demo OS from the clone: not under pytest's private folders.
    clone = Path(tempfile.mkdtemp(prefix="panel-quickstart-", dir="/tmp"))
    clone.chmod(0o755)
    port, instance = free_port(), f"qs{secrets.token_hex(3)}"
    env = {**os.environ, "PORT": str(port), "PANEL_INSTANCE_ID": instance,
           # The local node's NAT network in a test range of its own; guests fetch their install
           # config from the panel at its gateway.
           "LOCAL_NAT_CIDR": "10.77.4.0/24", "BIND": "127.0.0.1,10.77.4.1"}
    for name in ("DATABASE_URL", "PANEL_DATA_DIR", "TEMPLATE_SHARE", "TINY_GUEST_DIR", "REDIS_URL", "MAKEFLAGS"):
        env.pop(name, None)  # the quick start's defaults
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    log_path = clone / "make-run.log"
    started = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(["make", "run"], cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    page = None
    try:
        def output() -> str:
            return log_path.read_text(errors="replace")

        def opened():
            if proc.poll() is not None:
                raise AssertionError(f"make run exited with {proc.returncode}:\n{output()[-3000:]}")
            return "open http://" in output()

        wait_for(opened, 600, "make run to print the panel's URL")
        to_panel = time.monotonic() - started
        text = output()
        user, password = LOGIN.search(text).groups()
        assert "local node: qemu:///system" in text and "OS template tiny: offered" in text, text[-3000:]
        assert "next: the dashboard's checklist" in text

        url = f"http://127.0.0.1:{port}"
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url + "/login/")
        page.fill("input[name=username]", user)
        page.fill("input[name=password]", password)
        page.click("form:has(input[name=password]) button[type=submit]")
        page.wait_for_url("**/admin/**")

        page.goto(url + "/admin/servers/new/")
        page.fill("input[name=hostname]", "first")
        form = "form[method=post]:has(input[name=hostname])"
        # Only what a new user must choose; everything else stays as the page offers it.
        for field, wanted in (("plan", None), ("os_template", "tiny")):
            select = page.locator(f"{form} select[name={field}]")
            if select.count() and not select.input_value():
                select.select_option(wanted or select.locator("option:not([value=''])").first.get_attribute("value"))
        clicked = time.monotonic()
        page.click(f"{form} button[type=submit]")
        page.wait_for_url(re.compile(r".*/servers/\d+/$"))
        page.wait_for_selector("#server-state[data-state=running]", timeout=180_000)
        to_running = time.monotonic() - clicked

        page.click("#open-console")
        page.wait_for_selector("#console-state[data-state=connected]", timeout=30_000)
        stats = wait_for(lambda: canvas_stats(page), 60, "the console to draw the guest's screen")
        assert stats["width"] >= 640, stats
        print(f"quick start: make run to the panel's URL {to_panel:.0f} s; 'Create server' to running "
              f"{to_running:.0f} s")
    finally:
        if page is not None:
            page.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        _remove_domains(instance)
        shutil.rmtree(clone, ignore_errors=True)


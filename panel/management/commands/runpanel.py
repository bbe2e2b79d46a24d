"""`manage.py runpanel`: the web processes (daphne), the worker (django-q2) and the node
health monitor together.

Registers the local libvirt host as a node and the reconciler's schedule first. Ctrl-C (or
SIGTERM) stops both children cleanly; if one of them dies, the other is stopped too.
"""

import os
import signal
import socket
import subprocess
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Run the panel: web (HTTP + websockets) and worker."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--bind", default=os.environ.get("BIND", "0.0.0.0"),
                            help="address(es) to listen on, comma-separated")
        parser.add_argument("--web-processes", type=int,
                            default=int(os.environ.get("WEB_PROCESSES", min(os.cpu_count() or 1, 4))))
        parser.add_argument("--no-worker", action="store_true", help="no worker (run `manage.py qcluster` elsewhere)")

    def handle(self, *args, port, bind, web_processes, no_worker, **options):
        from django.core.exceptions import ImproperlyConfigured
        from django.core.management.base import CommandError

        from nodes.local import register_local_node
        from panel.forwarded import is_trusted_proxy
        from panel.vps.schedules import ensure_schedules
        from templates_os.demo import prepare_catalog
        from templates_os.models import OsTemplate

        try:
            is_trusted_proxy("127.0.0.1")  # a TRUSTED_PROXIES typo stops here, not at each request
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from None
        node = register_local_node()
        if node:
            self.stdout.write(f"local node: {node.uri} ({node.cpus} CPUs, {node.ram_mib} MiB, {node.virt_type})")
        elif not settings.LOCAL_LIBVIRT_URI:
            self.stdout.write("no local node: a panel only (LOCAL_LIBVIRT_URI is empty)")
        else:
            self.stdout.write(f"no local node: libvirt does not answer at {settings.LOCAL_LIBVIRT_URI}")
        ensure_schedules()
        prepare_catalog()
        for template in OsTemplate.objects.all():
            state = "offered" if template.offered else f"not offered: {template.invalid_reason or 'disabled'}"
            self.stdout.write(f"OS template {template.slug}: {state}")

        from panel.metrics.prometheus import clear_gone_processes

        # /metrics: the counts of the panel's processes that are gone go with them (a worker of
        # its own unit still running keeps its files).
        clear_gone_processes()
        manage = [sys.executable, str(settings.BASE_DIR / "manage.py")]
        # One listening socket shared by several daphne processes: a Python process serves one
        # request at a time on one core, so more processes serve more at once.
        listeners = [_listen(address.strip(), port) for address in bind.split(",")]
        endpoints = []
        for listener in listeners:
            listener.set_inheritable(True)
            endpoints += ["-e", f"fd:fileno={listener.fileno()}"]
        # No --proxy-headers: daphne would believe X-Forwarded-For's first entry (the client's own
        # words) from any peer. panel.asgi reads the headers instead, from TRUSTED_PROXIES only,
        # with the same walk as the views (panel/forwarded.py).
        children = {}
        for index in range(max(1, web_processes)):
            children[f"web{index + 1}"] = subprocess.Popen(
                [sys.executable, "-m", "daphne", *endpoints, "panel.asgi:application"],
                cwd=settings.BASE_DIR, pass_fds=[listener.fileno() for listener in listeners])
        for listener in listeners:
            listener.close()
        children["monitor"] = subprocess.Popen([*manage, "monitor_nodes"], cwd=settings.BASE_DIR)
        if not no_worker:
            children["worker"] = subprocess.Popen([*manage, "qcluster"], cwd=settings.BASE_DIR)
        self.stdout.write(f"panel on http://{bind}:{port}/ with {web_processes} web processes (Ctrl-C stops it)")
        self.stdout.write(f"open {_url(bind, port)} and sign in with the admin login above; next: the dashboard's "
                          "checklist (a node, a network with addresses, a plan, an OS, a customer), then "
                          "Servers → New server")

        stopping = False

        def stop(signum, _frame):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        exit_code = 0
        while not stopping:
            for name, proc in children.items():
                if proc.poll() is not None:
                    self.stderr.write(f"{name} exited with {proc.returncode}; stopping")
                    exit_code, stopping = proc.returncode or 1, True
            time.sleep(0.2)
        for proc in children.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in children.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.stdout.write("panel stopped")
        sys.exit(exit_code)


def _listen(address: str, port: int) -> socket.socket:
    """A listening socket; IP_FREEBIND lets it take an address its interface does not carry
    yet (a bridge made later, a floating address)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_IP, getattr(socket, "IP_FREEBIND", 15), 1)
    sock.bind((address, port))
    sock.listen(512)
    return sock


def _url(bind: str, port: int) -> str:
    """Where a browser reaches the panel: the first bound address, or for a wildcard the
    address of the interface towards the outside."""
    from templates_os.provisioning import source_address

    address = bind.split(",")[0].strip()
    if address in ("0.0.0.0", "::", ""):
        address = source_address("192.0.2.1") or socket.gethostname()
    return f"http://[{address}]:{port}/" if ":" in address else f"http://{address}:{port}/"

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
        parser.add_argument("--bind", default=os.environ.get("BIND", "0.0.0.0"))
        parser.add_argument("--web-processes", type=int,
                            default=int(os.environ.get("WEB_PROCESSES", min(os.cpu_count() or 1, 4))))
        parser.add_argument("--no-worker", action="store_true", help="no worker (run `manage.py qcluster` elsewhere)")

    def handle(self, *args, port, bind, web_processes, no_worker, **options):
        from nodes.local import register_local_node
        from panel.vps.schedules import ensure_schedules

        node = register_local_node()
        if node:
            self.stdout.write(f"local node: {node.uri} ({node.cpus} CPUs, {node.ram_mib} MiB, {node.virt_type})")
        else:
            self.stdout.write(f"no local node: libvirt does not answer at {settings.LOCAL_LIBVIRT_URI}")
        ensure_schedules()

        manage = [sys.executable, str(settings.BASE_DIR / "manage.py")]
        # One listening socket shared by several daphne processes: a Python process serves one
        # request at a time on one core, so more processes serve more at once.
        listener = socket.create_server((bind, port), backlog=512, reuse_port=False)
        listener.set_inheritable(True)
        children = {}
        for index in range(max(1, web_processes)):
            # X-Forwarded-* are read only behind a trusted proxy: anyone else could forge them.
            proxy = ["--proxy-headers"] if settings.TRUSTED_PROXY else []
            children[f"web{index + 1}"] = subprocess.Popen(
                [sys.executable, "-m", "daphne", "--fd", str(listener.fileno()), *proxy, "panel.asgi:application"],
                cwd=settings.BASE_DIR, pass_fds=[listener.fileno()])
        listener.close()
        children["monitor"] = subprocess.Popen([*manage, "monitor_nodes"], cwd=settings.BASE_DIR)
        if not no_worker:
            children["worker"] = subprocess.Popen([*manage, "qcluster"], cwd=settings.BASE_DIR)
        self.stdout.write(f"panel on http://{bind}:{port}/ with {web_processes} web processes (Ctrl-C stops it)")

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

"""`/metrics` for Prometheus: who may scrape, what each process counts, and the one scrape.

Two kinds of figures go into a scrape:

- counted by the processes as things happen: the HTTP requests every web process answers (a
  middleware) and the tasks the worker runs (django-q2's `post_execute`). The panel runs several
  web processes and a worker, so prometheus-client's multiprocess mode keeps each process's
  counts in its own file in `PROMETHEUS_MULTIPROC_DIR` (panel/settings.py puts it under
  PANEL_DATA_DIR) and a scrape adds the files up: whichever web process answers, the sums are the
  panel's. `runpanel` removes the files of processes that are gone when the panel starts
  (`clear_gone_processes`); a live worker's files stay, so restarting the web side alone loses
  none of its counts.
- read from the database at scrape time: servers, nodes, storages, networks, IP pools,
  operations, the queue and the collector's freshness (panel/metrics/exporter.py).

Access: a bearer token (METRICS_TOKEN) or a client address in METRICS_ALLOW_FROM; with neither
configured the URL does not exist (404); without a valid token from elsewhere, 401.
"""

import gzip
import hmac
import ipaddress
import logging
import os
import re
import time
from pathlib import Path

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.dispatch import receiver
from django.http import HttpResponse, HttpResponseNotAllowed
from django_q.signals import post_execute
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from panel.forwarded import networks

log = logging.getLogger(__name__)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# Labelled metrics only: a labelled metric writes its file when a child is first used, so the
# management commands (migrate, collectstatic…) that load this module leave no files behind.
HTTP_REQUESTS = Counter("panel_http_requests", "HTTP requests answered by the panel's web processes.",
                        ["method", "status"])
HTTP_SECONDS = Histogram("panel_http_request_duration_seconds", "Time to answer an HTTP request.", ["method"],
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
WORKER_TASKS = Counter("panel_worker_tasks", "Tasks the worker (django-q2) finished, by function and result.",
                       ["task", "result"])
WORKER_SECONDS = Histogram("panel_worker_task_duration_seconds", "Time the worker took for a task.", ["task"],
                           buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600))


def multiproc_dir() -> Path:
    path = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or settings.DATA_DIR / "prometheus")
    path.mkdir(parents=True, exist_ok=True)
    return path


multiproc_dir()  # before the first count: prometheus-client opens its files there

_FILE = re.compile(r"^[a-z_]+_(\d+)\.db$")


def clear_gone_processes(path: Path | None = None) -> int:
    """Remove the count files of processes that no longer run (runpanel, at start-up); returns
    how many. Files of live processes (a worker run by its own unit) stay."""
    removed = 0
    for entry in (path or multiproc_dir()).iterdir():
        match = _FILE.match(entry.name)
        if match and not _alive(int(match.group(1))):
            entry.unlink(missing_ok=True)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True


# -- counted in the processes -------------------------------------------------------------------

class RequestCounter:
    """Counts every response by method and status (first in MIDDLEWARE, so it sees the answers of
    the other middlewares too). Unknown methods count as "other": a client cannot grow the labels."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        response = self.get_response(request)
        method = request.method if request.method in METHODS else "other"
        try:
            HTTP_REQUESTS.labels(method, str(response.status_code)).inc()
            HTTP_SECONDS.labels(method).observe(time.perf_counter() - started)
        except OSError as exc:  # the count files' folder gone or full: the answer still goes out
            log.warning("/metrics: cannot count a request: %s", exc)
        return response


@receiver(post_execute, dispatch_uid="panel.metrics.prometheus.count_task")
def count_task(sender, task, **kwargs):
    """The worker's cluster sends this after each task (in its monitor process)."""
    from django_q.utils import get_func_repr

    name = get_func_repr(task.get("func"))[:100]
    WORKER_TASKS.labels(name, "success" if task.get("success") else "failure").inc()
    started, stopped = task.get("started"), task.get("stopped")
    if started and stopped:
        WORKER_SECONDS.labels(name).observe(max((stopped - started).total_seconds(), 0))


# -- who may scrape -----------------------------------------------------------------------------

def allowed_networks(entries: tuple[str, ...]) -> tuple:
    return networks("METRICS_ALLOW_FROM", entries)


@checks.register(checks.Tags.security)
def check_settings(app_configs=None, **kwargs):
    """A METRICS_ALLOW_FROM typo stops runpanel and qcluster at start, not each scrape."""
    try:
        allowed_networks(tuple(settings.METRICS_ALLOW_FROM))
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), id="metrics.E001")]
    return []


def _from_allowed_address(request) -> bool:
    from panel.accounts.tenancy import client_address

    networks = allowed_networks(tuple(settings.METRICS_ALLOW_FROM))
    if not networks:
        return False
    try:
        address = ipaddress.ip_address(client_address(request) or "")
    except ValueError:
        return False
    address = getattr(address, "ipv4_mapped", None) or address
    return any(address in network for network in networks)


def _has_token(request) -> bool:
    scheme, _, given = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), settings.METRICS_TOKEN.encode())


def refusal(request) -> HttpResponse | None:
    """None when the request may scrape; else the answer: 404 while /metrics is off (no token,
    no address list) or for an address outside the list when there is no token, 401 otherwise."""
    if not settings.METRICS_TOKEN and not settings.METRICS_ALLOW_FROM:
        return HttpResponse("Not Found\n", status=404, content_type="text/plain")
    if _from_allowed_address(request):
        return None
    if not settings.METRICS_TOKEN:
        return HttpResponse("Not Found\n", status=404, content_type="text/plain")
    if _has_token(request):
        return None
    response = HttpResponse("a bearer token is needed (METRICS_TOKEN)\n", status=401, content_type="text/plain")
    response["WWW-Authenticate"] = 'Bearer realm="metrics"'
    return response


# -- the scrape ---------------------------------------------------------------------------------

def registry() -> CollectorRegistry:
    """Every process's counts (the multiprocess files) and the database's figures."""
    from panel.metrics.exporter import PanelCollector

    out = CollectorRegistry()
    MultiProcessCollector(out, path=str(multiproc_dir()))
    out.register(PanelCollector())
    return out


def metrics_view(request):
    if request.method not in ("GET", "HEAD"):
        return HttpResponseNotAllowed(["GET", "HEAD"])
    refused = refusal(request)
    if refused is not None:
        return refused
    encoder, content_type = choose_encoder(request.META.get("HTTP_ACCEPT", ""))
    body = encoder(registry())
    response = HttpResponse(content_type=content_type)
    if "gzip" in request.META.get("HTTP_ACCEPT_ENCODING", ""):
        body = gzip.compress(body, compresslevel=1)  # a 1,000-server scrape is megabytes of text
        response["Content-Encoding"] = "gzip"
    response["Cache-Control"] = "no-store"
    response["Vary"] = "Accept, Accept-Encoding"
    response.content = body
    return response

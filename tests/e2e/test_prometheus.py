"""/metrics on a live panel with TWO web processes and the worker, scraped by a real Prometheus.

- N requests spread over both daphne processes show as exactly N in one scrape (each process
  counted into its own file; the scrape adds them up), and tasks the worker runs show too;
- the worker's real collection of the local node (libvirt) shows as the node's gauges and a
  fresh collector age;
- a real scrape passes `promtool check metrics`;
- Debian's Prometheus on a loopback port scrapes the panel with the token (the same target
  without it is down with a 401), loads the shipped rules, and answers queries over its HTTP API.
"""

import json
import os
import secrets
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import ROOT, free_port, running_panel, wait_for

RULES = ROOT / "deploy/prometheus/panel_rules.yml"
N = 150


@pytest.fixture(scope="module")
def panel(tmp_path_factory):
    token = secrets.token_urlsafe(24)
    data = tmp_path_factory.mktemp("prom-panel")
    # No NAT network and loopback only: nothing here boots a guest, and the session's live panel
    # (10.77.5.0/24) may be running beside this one.
    env = {"WEB_PROCESSES": "2", "METRICS_TOKEN": token, "LOCAL_NAT_CIDR": "", "BIND": "127.0.0.1"}
    with running_panel(data, tag="prom", env=env) as live:
        live.metrics_token = token
        live.data = data
        yield live


def scrape(panel, token: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token or panel.metrics_token}"}
    return requests.get(panel.url + "/metrics", headers=headers, timeout=30)


def sample(text: str, name: str, **labels) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def web_pids(panel) -> list[int]:
    """The daphne processes runpanel started."""
    parent = panel.procs["web"].pid
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[1]) == parent and b"daphne" in cmdline and stat[0] not in ("Z", "X"):
            pids.append(int(entry))
    return sorted(pids)


def own_count(panel, pid: int, method: str, status: str) -> float:
    """One process's count of (method, status), read from its own file."""
    path = panel.data / "prometheus" / f"counter_{pid}.db"
    if not path.exists():
        return 0
    for key, value, _timestamp, _pos in MmapedDict.read_all_values_from_file(str(path)):
        _metric, name, labels, _help = json.loads(key)  # prometheus_client.mmap_dict.mmap_key
        if name == "panel_http_requests_total" and labels == {"method": method, "status": status}:
            return value
    return 0


def test_401_without_the_token(panel):
    assert requests.get(panel.url + "/metrics", timeout=10).status_code == 401
    assert scrape(panel, token="wrong").status_code == 401
    r = scrape(panel)
    assert r.status_code == 200 and "panel_http_requests_total" in r.text


def test_n_requests_over_two_web_processes_show_as_exactly_n(panel):
    pids = web_pids(panel)
    assert len(pids) == 2, pids
    url = panel.url + "/api/v1/servers/"  # no key: 401, a status nothing else here produces
    before = sample(scrape(panel).text, "panel_http_requests_total", method="GET", status="401") or 0
    per_process = {pid: own_count(panel, pid, "GET", "401") for pid in pids}

    def one(_):
        return requests.get(url, timeout=30, headers={"Connection": "close"}).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(one, range(N)))
    assert statuses == [401] * N
    after = sample(scrape(panel).text, "panel_http_requests_total", method="GET", status="401")
    assert after - before == N
    served = {pid: own_count(panel, pid, "GET", "401") - per_process[pid] for pid in pids}
    assert sum(served.values()) == N and all(n > 0 for n in served.values()), served  # both processes counted


def test_the_workers_tasks_and_its_collection_of_the_local_node_show_in_a_scrape(panel):
    panel.manage("shell", "-c", "from django_q.tasks import async_task\n"
                                "for _ in range(3): async_task('time.time')\n"
                                "async_task('panel.metrics.collector.collect')")

    def done():
        text = scrape(panel).text
        finished = sample(text, "panel_worker_tasks_total", task="time.time", result="success")
        collected = sample(text, "panel_worker_tasks_total", task="panel.metrics.collector.collect",
                           result="success")
        return text if finished == 3 and collected else None

    text = wait_for(done, 120, "the worker's tasks in a scrape", interval=1)
    assert sample(text, "panel_node_state", node="local", state="online") == 1
    assert (sample(text, "panel_node_memory_total_bytes", node="local") or 0) > 2**28
    assert 0 <= sample(text, "panel_collector_last_read_age_seconds", node="local") < 120


def test_a_real_scrape_passes_promtool_check_metrics(panel):
    panel.manage("shell", "-c", "from benchmarks.metrics_scrape import seed; seed(5)")
    text = scrape(panel).text
    assert sample(text, "panel_server_cpu_percent") is not None
    assert sample(text, "panel_server_network_receive_bytes_total") is not None
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing (Debian's prometheus package: tests/infra/install_deps.sh)"
    out = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and not (out.stdout + out.stderr).strip(), out.stdout + out.stderr


@pytest.fixture
def prometheus_server(panel, tmp_path):
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing (Debian's prometheus package: tests/infra/install_deps.sh)"
    port, target = free_port(), panel.url.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": "panel", "authorization": {"type": "Bearer", "credentials": panel.metrics_token},
             "static_configs": [{"targets": [target]}]},
            {"job_name": "panel-without-token", "static_configs": [{"targets": [target]}]},
        ],
    }))
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(url), 60, "prometheus to be ready")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _ready(url: str) -> bool:
    try:
        return requests.get(url + "/-/ready", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def query(url: str, promql: str) -> list:
    r = requests.get(url + "/api/v1/query", params={"query": promql}, timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "success", r.text
    return r.json()["data"]["result"]


def test_a_real_prometheus_scrapes_the_panel_with_the_token_and_answers_queries(panel, prometheus_server):
    def scraped():
        up = {r["metric"]["job"]: r["value"][1] for r in query(prometheus_server, "up")}
        return up if up.get("panel") == "1" and up.get("panel-without-token") == "0" else None

    wait_for(scraped, 60, "both targets scraped once")
    targets = requests.get(prometheus_server + "/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    refused = next(t for t in targets if t["labels"]["job"] == "panel-without-token")
    assert "401" in refused["lastError"], refused
    result = wait_for(lambda: query(prometheus_server, 'panel_node_state{job="panel",node="local",state="online"}'),
                      30, "the node's state in Prometheus")
    assert result[0]["value"][1] == "1"
    requests_total = query(prometheus_server, 'sum(panel_http_requests_total{job="panel"})')
    assert float(requests_total[0]["value"][1]) >= N
    rules = requests.get(prometheus_server + "/api/v1/rules", timeout=10).json()["data"]["groups"]
    loaded = [rule for group in rules for rule in group["rules"]]
    assert len(loaded) >= 9 and all(rule["health"] in ("ok", "unknown") for rule in loaded), loaded
    assert {"PanelNodeOffline", "PanelStorageFull95", "PanelQueueBackingUp"} <= {r["name"] for r in loaded}
    wait_for(lambda: all(r["health"] == "ok" for g in requests.get(prometheus_server + "/api/v1/rules", timeout=10)
                         .json()["data"]["groups"] for r in g["rules"]), 30, "every rule evaluated without error")

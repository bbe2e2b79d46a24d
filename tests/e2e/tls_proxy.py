"""Debian's nginx as a TLS-terminating reverse proxy in front of a URL, as a panel is usually
deployed: HTTPS and websockets (wss) on the outside, plain HTTP to the upstream, with the
X-Forwarded-* headers that daphne's --proxy-headers reads.

    with TlsProxy("http://127.0.0.1:8000") as proxy:
        requests.get(proxy.url + "/login/", verify=proxy.cafile)

Everything (certificate, config, pid, logs, temp paths) lives in its own temporary directory;
nginx runs in the foreground (`daemon off;`) as a child process and is stopped on leaving.
Loopback only.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

CONF = """\
{user}
worker_processes 1;
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;

events {{
    worker_connections 256;
}}

http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    types_hash_max_size 2048;

    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}

    server {{
        listen 127.0.0.1:{port} ssl;
        server_name localhost 127.0.0.1;
        ssl_certificate {dir}/cert.pem;
        ssl_certificate_key {dir}/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;

        location / {{
            proxy_pass {upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            # $http_host, not $host: $host drops the port, and this proxy does not listen on 443.
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto https;
            proxy_read_timeout 1h;
        }}
    }}
}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TlsProxy:
    """`.url` is https://127.0.0.1:<port>; `.cafile` is the self-signed certificate to trust."""

    def __init__(self, upstream: str, *, start_timeout: float = 15):
        self.upstream = upstream.rstrip("/")
        self.start_timeout = start_timeout
        self.dir: Path | None = None
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def cafile(self) -> str:
        return str(self.dir / "cert.pem")

    def error_log(self) -> str:
        path = self.dir / "error.log" if self.dir else None
        return path.read_text(errors="replace") if path and path.exists() else ""

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> Self:
        self.dir = Path(tempfile.mkdtemp(prefix="tls-proxy-"))
        try:
            self._certificate()
            self._start()
        except BaseException:
            self._stop()
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _certificate(self) -> None:
        out = subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
             "-keyout", str(self.dir / "key.pem"), "-out", str(self.dir / "cert.pem")],
            check=False, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"openssl req failed:\n{out.stderr}")

    def _start(self) -> None:
        self.port = _free_port()
        # As root, nginx's workers would switch to `nobody`, who cannot write the temp paths here.
        user = "user root;" if os.geteuid() == 0 else ""
        conf = self.dir / "nginx.conf"
        conf.write_text(CONF.format(user=user, dir=self.dir, port=self.port, upstream=self.upstream))
        cmd = [NGINX, "-p", str(self.dir), "-c", str(conf), "-e", str(self.dir / "error.log")]
        test = subprocess.run([*cmd, "-t"], check=False, capture_output=True, text=True, timeout=30)
        if test.returncode != 0:
            raise RuntimeError(f"nginx -t failed:\n{test.stderr}\n{self.error_log()}")
        with open(self.dir / "nginx.out", "wb") as output:  # the child keeps its own copy
            self.proc = subprocess.Popen(cmd, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.proc.returncode}:\n{self._output()}\n{self.error_log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"nginx did not listen on 127.0.0.1:{self.port} within {self.start_timeout} s:\n"
                           f"{self._output()}\n{self.error_log()}")

    def _output(self) -> str:
        path = self.dir / "nginx.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def _stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            # SIGTERM is nginx's fast shutdown: a graceful one (SIGQUIT) would wait for open
            # websockets (proxy_read_timeout 1h).
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

"""How a webhook delivery leaves the panel: one small interface, one HTTP implementation.

A transport either returns (the receiver accepted) or raises TransportError; `permanent`
says whether trying again can ever help. The delivery loop (delivery.py) decides about
retries and back-off; transports know nothing about them.

The HTTP transport uses http.client directly rather than urllib.request: urllib follows
redirects (a public URL could redirect the panel to 127.0.0.1) and cannot be told which
address to connect to, and the destination check (destinations.py) must pin the addresses
it checked.
"""

import http.client
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field

from panel.webhooks import destinations

USER_AGENT = "Panel-Webhooks/1.0"


class TransportError(Exception):
    """The receiver did not accept the delivery."""

    def __init__(self, message: str, *, permanent: bool = False, status_code: int | None = None):
        super().__init__(message)
        self.message, self.permanent, self.status_code = message, permanent, status_code


@dataclass
class Request:
    url: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    public_only: bool = False  # only public addresses (destinations.py)


class Transport:
    """Sends one request. Returns the 2xx status code, or raises TransportError."""

    def send(self, request: Request) -> int:
        raise NotImplementedError


class _PinnedConnectionMixin:
    """Connects to the given, already checked addresses instead of resolving the host again;
    the Host header, TLS SNI and certificate check still use the host name."""

    def __init__(self, *args, addresses: list[str], deadline: float, **kwargs):
        super().__init__(*args, **kwargs)
        self._addresses, self._deadline = addresses, deadline
        self._create_connection = self._connect_pinned

    def _connect_pinned(self, address, timeout, source_address=None):
        _host, port = address
        error: OSError = TimeoutError("no time left to connect")
        for ip in self._addresses:
            left = self._deadline - time.monotonic()  # many dead addresses must not add up
            if left <= 0:
                break
            try:
                return socket.create_connection((ip, port), min(timeout, left), source_address)
            except OSError as exc:
                error = exc
        raise error


class _PinnedHTTPConnection(_PinnedConnectionMixin, http.client.HTTPConnection):
    pass


class _PinnedHTTPSConnection(_PinnedConnectionMixin, http.client.HTTPSConnection):
    pass


def _abort(conn: http.client.HTTPConnection, cut_off: threading.Event) -> None:
    cut_off.set()
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)  # wakes the sending thread's blocked read or write
        except OSError:
            pass


class HttpTransport(Transport):
    """POST over HTTP(S) with a timeout; no redirects are followed (a 3xx is not accepted)."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.total_seconds = 2 * timeout  # the whole attempt, connect to last byte read

    def send(self, request: Request) -> int:
        try:
            target = destinations.parse(request.url)
        except destinations.BadUrl as exc:
            raise TransportError(str(exc), permanent=True)
        try:
            addresses = destinations.resolve(target, public_only=request.public_only)
        except destinations.Forbidden as exc:
            # Not retried: the address was refused by policy, not by a network failure.
            raise TransportError(str(exc), permanent=True)
        except destinations.Unresolvable as exc:
            raise TransportError(str(exc))
        pinned = {"timeout": self.timeout, "addresses": addresses, "deadline": time.monotonic() + self.total_seconds}
        if target.scheme == "https":
            conn = _PinnedHTTPSConnection(target.host, target.port, context=ssl.create_default_context(), **pinned)
        else:
            conn = _PinnedHTTPConnection(target.host, target.port, **pinned)
        headers = {"User-Agent": USER_AGENT, "Content-Type": "application/json", **request.headers}
        # The socket timeout bounds each wait, not the whole exchange: a receiver that trickles
        # a byte now and then would hold the attempt open past the delivery's claim (and so let
        # a second sender in). The watchdog cuts the connection at the total deadline.
        cut_off = threading.Event()
        watchdog = threading.Timer(self.total_seconds, _abort, args=(conn, cut_off))
        watchdog.daemon = True
        watchdog.start()
        try:
            conn.request("POST", target.path, body=request.body, headers=headers)
            response = conn.getresponse()
            status = response.status
        except (OSError, http.client.HTTPException) as exc:  # refused, timeout, TLS, bad answer
            if not cut_off.is_set():
                raise TransportError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        finally:
            watchdog.cancel()
            conn.close()
        if cut_off.is_set():  # whatever was read: the cut looks like a clean end of the answer
            raise TransportError(f"No complete answer within {self.total_seconds:g} s.")
        if not 200 <= status < 300:
            # The status only, never the body: the body of an internal service's answer is what an
            # attacker who aimed a webhook at it would want to read in the delivery log.
            raise TransportError(f"HTTP {status}", status_code=status)
        return status

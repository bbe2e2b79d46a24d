"""ASGI entry point: HTTP through Django, websockets through channels.

Behind a trusted proxy the scope's client and scheme come from its X-Forwarded-* headers
(ProxyHeaders, panel/forwarded.py); websockets must come from the panel's own origin
(SameOriginValidator) before the session cookie is looked at.
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "panel.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_app = get_asgi_application()

from urllib.parse import urlsplit  # noqa: E402

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import WebsocketDenier  # noqa: E402
from django.conf import settings  # noqa: E402
from django.http.request import is_same_domain, split_domain_port, validate_host  # noqa: E402

from novnc.routing import websocket_urlpatterns as console_urlpatterns  # noqa: E402
from panel.forwarded import client_of, scheme_of  # noqa: E402
from panel.ui.routing import websocket_urlpatterns  # noqa: E402


def _header(scope, name: bytes) -> str | None:
    values = [value.decode("latin1") for key, value in scope.get("headers", []) if key == name]
    return ",".join(values) if values else None


class ProxyHeaders:
    """The client's address and scheme as the trusted proxy saw them, for HTTP and websockets
    alike (REMOTE_ADDR, request.is_secure(), the websocket's Origin check). In place of daphne's
    --proxy-headers, which takes X-Forwarded-For's first entry, the client's own, from any peer."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket") and settings.TRUSTED_PROXY:
            peer = scope.get("client") or (None, 0)
            client = client_of(peer[0], _header(scope, b"x-forwarded-for"))
            scheme = scheme_of(peer[0], _header(scope, b"x-forwarded-proto"))
            scope = dict(scope)
            if client != peer[0]:
                scope["client"] = (client, 0)
            if scheme:
                scope["scheme"] = scheme if scope["type"] == "http" else {"http": "ws", "https": "wss"}[scheme]
        return await self.app(scope, receive, send)


class SameOriginValidator:
    """A websocket opens only from a page of the panel's own origin (the scheme and Host it was
    reached on) or one in CSRF_TRUSTED_ORIGINS: the browser sends the panel's cookie with a
    websocket any site opens, and no CSRF token guards it. Django's CSRF origin rule, with
    ALLOWED_HOSTS for the Host as on HTTP; channels' AllowedHostsOriginValidator took any Origin
    while ALLOWED_HOSTS is '*' (the default).

    Without an Origin the client is not a browser (browsers always send one on a websocket),
    so no page is speaking with someone else's cookie: it passes."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if self.allowed(scope):
            return await self.app(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)

    @staticmethod
    def allowed(scope) -> bool:
        host, origin = _header(scope, b"host") or "", _header(scope, b"origin")
        allowed_hosts = settings.ALLOWED_HOSTS
        if settings.DEBUG and not allowed_hosts:
            allowed_hosts = [".localhost", "127.0.0.1", "[::1]"]
        domain, _port = split_domain_port(host)
        if not domain or not validate_host(domain, allowed_hosts):
            return False
        if origin is None:
            return True
        origin = origin.strip().lower()
        if settings.SECURE_PROXY_SSL_HEADER:
            name, value = settings.SECURE_PROXY_SSL_HEADER
            header = _header(scope, name.removeprefix("HTTP_").lower().replace("_", "-").encode())
            secure = (header or "").split(",")[0].strip() == value
        else:
            secure = scope.get("scheme") == "wss"
        if origin == f"{'https' if secure else 'http'}://{host.lower()}":
            return True
        trusted = [entry.lower() for entry in settings.CSRF_TRUSTED_ORIGINS]
        if origin in trusted:
            return True
        try:
            parsed = urlsplit(origin)
        except ValueError:
            return False
        return any(entry.startswith(f"{parsed.scheme}://*") and
                   is_same_domain(parsed.netloc, entry.split("://", 1)[1][1:]) for entry in trusted)


application = ProxyHeaders(ProtocolTypeRouter(
    {
        "http": django_app,
        "websocket": SameOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns + console_urlpatterns))),
    }
))

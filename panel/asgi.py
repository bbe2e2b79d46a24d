"""ASGI entry point: HTTP through Django, websockets through channels."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "panel.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from novnc.routing import websocket_urlpatterns as console_urlpatterns  # noqa: E402
from panel.ui.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_app,
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns + console_urlpatterns))),
    }
)

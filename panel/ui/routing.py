from django.urls import path

from panel.ui.consumers import ServerConsumer

websocket_urlpatterns = [
    path("ws/servers/<int:server_id>/", ServerConsumer.as_asgi()),
]

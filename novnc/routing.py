from django.urls import path

from novnc.consumers import ConsoleProxy

websocket_urlpatterns = [path("ws/console/<str:token>/", ConsoleProxy.as_asgi())]

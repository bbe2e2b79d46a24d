from django.urls import path

from novnc import views

app_name = "novnc"

urlpatterns = [
    path("servers/<int:server_id>/console/", views.console, name="console"),
    path("console/<str:token>/", views.console_by_token, name="console-token"),
]

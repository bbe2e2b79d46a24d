from django.urls import path

from templates_os import views

app_name = "provision"
urlpatterns = [
    path("<str:token>/", views.config, name="config"),
    path("<str:token>/done", views.callback, name="callback"),
]

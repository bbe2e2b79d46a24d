from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from panel.metrics.prometheus import metrics_view

urlpatterns = [
    path("api/v1/", include("panel.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("metrics", metrics_view, name="metrics"),  # Prometheus' default path
    path("i18n/", include("django.conf.urls.i18n")),
    path("provision/", include("templates_os.urls")),
    path("", include("novnc.urls")),
    path("", include("panel.ui.urls")),
]

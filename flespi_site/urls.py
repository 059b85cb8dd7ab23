from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularRedocView, SpectacularSwaggerView

from flespi_site.api.schema_views import SchemaView
from flespi_site.landing import landing
from flespi_site.metrics_view import metrics_view

urlpatterns = [
    path("", landing, name="landing"),
    path("admin/", admin.site.urls),
    path("metrics", metrics_view, name="metrics"),
    path("api/schema/", SchemaView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema", authentication_classes=[], permission_classes=[]), name="docs"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema", authentication_classes=[], permission_classes=[]), name="redoc"),
    path("", include("accounts.api.urls")),
    path("", include("devices.api.urls")),
    path("", include("analytics.api.urls")),
    path("", include("webhooks.api.urls")),
]

handler400 = "flespi_site.api.handlers.bad_request"
handler404 = "flespi_site.api.handlers.not_found"
handler500 = "flespi_site.api.handlers.server_error"

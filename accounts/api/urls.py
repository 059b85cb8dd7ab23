from django.urls import path

from accounts.api import views
from flespi_site.api.resources import resource_paths

urlpatterns = [
    path("auth/regions", views.RegionsView.as_view(), name="auth-regions"),
    path("auth/info", views.AuthInfoView.as_view(), name="auth-info"),
    path("platform/customer", views.CustomerView.as_view(), name="platform-customer"),
    *resource_paths(views.SubaccountsView, "platform-subaccounts"),
    *resource_paths(views.TokensView, "platform-tokens"),
]

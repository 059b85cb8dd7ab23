from flespi_site.api.resources import resource_paths, selection_path
from webhooks.api import views

urlpatterns = [
    *resource_paths(views.WebhooksView, "platform-webhooks"),
    selection_path(views.WebhookLogsView, "platform-webhook-logs"),
    selection_path(views.WebhookReplayView, "platform-webhook-replay"),
]

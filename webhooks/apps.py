from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    name = "webhooks"
    verbose_name = "Webhooks"

    def ready(self) -> None:
        # A wrong WEBHOOK_ALLOW stops every process at its start with the entry named.
        from webhooks.services import address_policy

        address_policy()

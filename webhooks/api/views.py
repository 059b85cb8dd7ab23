"""``/platform/webhooks``: the account's webhooks, their delivery logs and replays."""

from __future__ import annotations

import time

from rest_framework.request import Request
from rest_framework.response import Response

from flespi_site.api.params import validated_params
from flespi_site.api.permissions import IsMasterToken
from flespi_site.api.resources import Resource, ResourceView, SelectionView
from flespi_site.api.selection import SelectionField
from flespi_site.api.views import json_body
from webhooks import selectors, services
from webhooks.api.serializers import (
    LogQuerySerializer,
    ReplaySerializer,
    WebhookCreateSerializer,
    WebhookUpdateSerializer,
)
from webhooks.choices import DeliveryStatus
from webhooks.models import Webhook

LOG_DEFAULT_COUNT = 1000
REPLAY_DEFAULT_COUNT = 10_000


def render_webhook(webhook: Webhook) -> dict:
    return {
        "id": webhook.pk,
        "cid": webhook.account_id,
        "name": webhook.name,
        "triggers": webhook.triggers,
        "configuration": webhook.configuration,
        "enabled": webhook.enabled,
        "retry_seconds": webhook.retry_seconds,
        "timeout": webhook.timeout,
        "created": webhook.created,
    }


class WebhookResource(Resource):
    name = "webhook"
    url_path = "platform/webhooks"
    selection_fields = {
        "id": SelectionField("pk", "int"),
        "name": SelectionField("name", "str"),
        "enabled": SelectionField("enabled", "bool"),
    }
    create_serializer = WebhookCreateSerializer
    update_serializer = WebhookUpdateSerializer
    output_fields = ("id", "cid", "name", "triggers", "configuration", "enabled", "retry_seconds", "timeout",
                     "created", "secret")

    def queryset(self):
        return selectors.webhooks_of(account=self.account)

    def render(self, obj):
        item = render_webhook(obj)
        if getattr(obj, "_show_secret", False):
            item["secret"] = obj.secret
        return item

    def create(self, data):
        webhook = services.webhook_create(account=self.account, data=data)
        webhook._show_secret = True
        return webhook

    def update(self, obj, data):
        webhook = services.webhook_update(webhook=obj, data=data)
        webhook._show_secret = "secret" in data
        return webhook

    def delete(self, obj):
        services.webhook_delete(webhook=obj)


class WebhooksView(ResourceView):
    """``POST|GET|PUT|DELETE /platform/webhooks[/{sel}]``. The secret is answered by the POST (and
    by a PUT that sets it) only."""

    permission_classes = [IsMasterToken]
    resource_class = WebhookResource


class WebhookLogsView(SelectionView):
    """``GET /platform/webhooks/{sel}/logs``: each event of the selected webhooks queued in
    ``begin``..``end`` (the last day by default), oldest first: its status, attempts, last
    answer and error."""

    permission_classes = [IsMasterToken]
    selection_of = WebhookResource
    url_path = "logs"
    query_parameters = {"GET": LogQuerySerializer}

    def get(self, request: Request, selector: str) -> Response:
        params = validated_params(request, LogQuerySerializer)
        end = params.get("end", time.time())
        status = params.get("status")
        rows = selectors.delivery_log(
            webhooks=self.selection(),  # type: ignore[arg-type]  # WebhookResource selects webhooks
            region=self.account.region.code,
            begin=params.get("begin", end - 86400),
            end=end,
            status=None if status is None else int(DeliveryStatus[status.upper()]),
            count=params.get("count", LOG_DEFAULT_COUNT),
        )
        return Response({"result": rows})


class WebhookReplayView(SelectionView):
    """``POST /platform/webhooks/{sel}/replay`` with ``{"begin", "end"}``: the logged events
    queued in that range are sent again, in order, after what is queued now."""

    permission_classes = [IsMasterToken]
    selection_of = WebhookResource
    url_path = "replay"
    request_serializers = {"POST": ReplaySerializer}

    def post(self, request: Request, selector: str) -> Response:
        serializer = ReplaySerializer(data=json_body(request))
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        result = []
        for webhook in self.selection():
            replayed = services.webhook_replay(
                webhook=webhook,  # type: ignore[arg-type]
                begin=data["begin"], end=data["end"], limit=data.get("count", REPLAY_DEFAULT_COUNT),
            )
            result.append({"id": webhook.pk, "replayed": replayed})
        return Response({"result": result})

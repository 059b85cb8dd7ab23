"""/gw/devices, its messages and its telemetry."""

from __future__ import annotations

from rest_framework.request import Request
from rest_framework.response import Response

from devices import selectors, services
from devices.api.serializers import (
    DeviceCreateSerializer,
    DeviceUpdateSerializer,
    MessagesDeleteSerializer,
    MessageSerializer,
    MessagesQuerySerializer,
)
from devices.models import Device
from flespi_site.api.selectors import SelectorField, parse_selector
from flespi_site.api.views import FlespiAPIView, Resource, ResourceView, validated_params
from flespi_site.errors import DomainError, InvalidInput, NotFound

DEVICE_FIELDS = ("id", "name", "cid", "configuration", "enabled", "messages_ttl", "metadata", "shard", "created")


def render_device(device: Device) -> dict:
    return {
        "id": device.pk,
        "name": device.name,
        "cid": device.account_id,
        "configuration": device.configuration,
        "enabled": device.enabled,
        "messages_ttl": device.messages_ttl,
        "metadata": device.metadata,
        "shard": device.shard,
        "created": device.created,
    }


class DeviceResource(Resource):
    name = "device"
    selector_fields = {
        "id": SelectorField("pk", "int"),
        "name": SelectorField("name", "str"),
        "enabled": SelectorField("enabled", "bool"),
        "configuration": SelectorField("configuration", "json"),
        "metadata": SelectorField("metadata", "json"),
    }
    create_serializer = DeviceCreateSerializer
    update_serializer = DeviceUpdateSerializer
    output_fields = DEVICE_FIELDS

    def queryset(self):
        return selectors.devices_of(account=self.account)

    def render(self, obj):
        return render_device(obj)

    def create(self, data):
        return services.device_create(account=self.account, **data)

    def update(self, obj, data):
        if "cid" in data:
            data["account_id"] = data.pop("cid")
        try:
            return services.device_update(device=obj, account=self.account, data=data)
        except DomainError as exc:
            # The service speaks of account_id; the client sent cid.
            if exc.field == "account_id":
                exc.field = "cid"
            raise

    def delete(self, obj):
        services.device_delete(device=obj)


class DevicesView(ResourceView):
    """``POST|GET|PUT|DELETE /gw/devices[/{sel}]``."""

    resource_class = DeviceResource


class DeviceChildView(FlespiAPIView):
    """A view under ``/gw/devices/{sel}/...``: the selected devices of the acting account."""

    def selected_devices(self, selector: str) -> list[Device]:
        query = parse_selector(selector, DeviceResource.selector_fields)
        devices = list(selectors.devices_of(account=self.account).filter(query))
        if not devices:
            raise NotFound(f"no device matches {selector!r}")
        return devices


def _message_filter(text: str | None):
    if text is None:
        return None
    from analytics.engine import ExpressionError, compile_expression

    try:
        return compile_expression(text)
    except ExpressionError as exc:
        raise InvalidInput(f"filter: {exc}", field="filter") from None


class MessagesView(DeviceChildView):
    """``GET|POST|DELETE /gw/devices/{sel}/messages``."""

    query_parameters = {"GET": MessagesQuerySerializer, "DELETE": MessagesDeleteSerializer}
    request_serializers = {"POST": MessageSerializer(many=True)}

    def get(self, request: Request, selector: str) -> Response:
        params = validated_params(request, MessagesQuerySerializer)
        devices = self.selected_devices(selector)
        condition = _message_filter(params.get("filter"))
        window = {
            "begin": params.get("begin"),
            "end": params.get("end"),
            "count": params.get("count", 100_000),
            "reverse": params.get("reverse", False),
        }
        if condition is None:
            messages = selectors.messages_of(devices=devices, **window)
        else:
            messages = selectors.messages_matching(devices=devices, condition=condition, **window)
        if "fields" in params:
            names = [name.strip() for name in params["fields"].split(",") if name.strip()]
            messages = [{name: message[name] for name in names if name in message} for message in messages]
        return Response({"result": messages})

    def post(self, request: Request, selector: str) -> Response:
        if not isinstance(request.data, list):
            raise InvalidInput("the body must be a JSON array of messages")
        devices = self.selected_devices(selector)
        result = services.messages_ingest(devices=devices, messages=request.data, source="rest")
        body: dict = {"result": []}
        if result.errors:
            body["errors"] = [error.as_error() for error in result.errors]
        codes = {error.status for error in result.errors}
        status = 200 if result.accepted or not codes else (codes.pop() if len(codes) == 1 else 400)
        return Response(body, status=status)

    def delete(self, request: Request, selector: str) -> Response:
        params = validated_params(request, MessagesDeleteSerializer)
        devices = self.selected_devices(selector)
        services.messages_delete(devices=devices, begin=params.get("begin"), end=params.get("end"))
        return Response({"result": []})


class TelemetryView(DeviceChildView):
    """``GET /gw/devices/{sel}/telemetry``: the latest value of every parameter and its time."""

    def get(self, request: Request, selector: str) -> Response:
        devices = self.selected_devices(selector)
        telemetry = selectors.telemetry_of(devices=devices)
        return Response({"result": [{"id": device.pk, "telemetry": telemetry[device.pk]} for device in devices]})

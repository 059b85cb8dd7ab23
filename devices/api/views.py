"""/gw/devices, its messages and its telemetry."""

from __future__ import annotations

from django.http.response import HttpResponseBase
from rest_framework.request import Request
from rest_framework.response import Response

from analytics.engine import ExpressionError, compile_expression
from devices import exports, selectors, services
from devices.api.serializers import (
    DeviceCreateSerializer,
    DeviceUpdateSerializer,
    MessagesDeleteSerializer,
    MessageSerializer,
    MessagesExportQuerySerializer,
    MessagesQuerySerializer,
)
from devices.models import Device
from flespi_site.api.batch import batch_response
from flespi_site.api.exports import CSV, GEOJSON, GPX, JSON, export_format, streamed
from flespi_site.api.params import project, projection, validated_params
from flespi_site.api.resources import Resource, ResourceView, SelectionView
from flespi_site.api.selection import SelectionField
from flespi_site.errors import DomainError, InvalidInput

DEVICE_FIELDS = (
    "id", "name", "cid", "device_type_id", "configuration", "enabled", "messages_ttl", "messages_rotate",
    "media_ttl", "media_rotate", "metadata", "shard", "created",
)
# flespi's device fields answered when fields= names them: computed from the stored messages, or
# fixed here (null: no meaning on this platform, which has no channels, protocols, commands,
# media, plugins or streams; a device is never blocked).
DEVICE_COMPUTED_FIELDS = ("telemetry", "last_active", "messages_size")
DEVICE_FLESPI_FIELDS = {
    "blocked": False,
    "media_blocked": False,
    **dict.fromkeys((
        "device_type_name", "protocol_id", "protocol_name", "connected", "commands", "commands_queue",
        "settings", "media_size", "media_traffic", "groups", "plugins", "streams", "calcs",
    )),
}


# Messages answered by one GET when the request names no count.
MESSAGES_DEFAULT_COUNT = 100_000

render_device = selectors.device_item


class DeviceResource(Resource):
    name = "device"
    url_path = "gw/devices"
    selection_fields = {
        "id": SelectionField("pk", "int"),
        "cid": SelectionField("account_id", "int"),
        "name": SelectionField("name", "str"),
        "enabled": SelectionField("enabled", "bool"),
        "configuration": SelectionField("configuration", "json"),
        "metadata": SelectionField("metadata", "json"),
    }
    create_serializer = DeviceCreateSerializer
    update_serializer = DeviceUpdateSerializer
    output_fields = DEVICE_FIELDS
    computed_fields = DEVICE_COMPUTED_FIELDS
    merge_fields = ("configuration", "metadata")
    flespi_fields = DEVICE_FLESPI_FIELDS

    def queryset(self):
        return selectors.devices_of(account=self.account)

    def computed(self, objs, names):
        return selectors.devices_state(devices=list(objs), names=names)

    def render(self, obj):
        return render_device(obj)

    def create(self, data):
        return services.device_create(account=self.account, **data)

    def create_many(self, items):
        return services.devices_create(account=self.account, items=items)

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


class DeviceSelectionView(SelectionView):
    """A view under ``/gw/devices/{sel}/...``: the selected devices of the acting account."""

    selection_of = DeviceResource

    def selected_devices(self) -> list[Device]:
        return self.selection()  # type: ignore[return-value]  # DeviceResource selects devices


def _message_filter(text: str | None):
    if text is None:
        return None
    try:
        return compile_expression(text)
    except ExpressionError as exc:
        raise InvalidInput(f"filter: {exc}", field="filter") from None


class MessagesView(DeviceSelectionView):
    """``GET|POST|DELETE /gw/devices/{sel}/messages``."""

    url_path = "messages"
    ingestion = True  # POST is charged to the token's messages budget (flespi_site.api.throttling)
    query_parameters = {"GET": MessagesQuerySerializer, "DELETE": MessagesDeleteSerializer}
    request_serializers = {"POST": MessageSerializer(many=True)}
    export_formats = (CSV, GEOJSON, GPX)

    def get(self, request: Request, selector: str) -> HttpResponseBase:
        format = export_format(request, accepted=(JSON, *self.export_formats))
        if format != JSON:
            return self._export(request, format)
        params = validated_params(request, MessagesQuerySerializer)
        devices = self.selected_devices()
        condition = _message_filter(params.get("filter"))
        window = {
            "begin": params.get("begin"),
            "end": params.get("end"),
            "count": params.get("count", MESSAGES_DEFAULT_COUNT),
            "reverse": params.get("reverse", False),
        }
        if condition is None:
            messages = selectors.messages_of(devices=devices, **window)
        else:
            messages = selectors.messages_matching(devices=devices, condition=condition, **window)
        names = projection(params)
        return Response({"result": [project(message, names) for message in messages]})

    def _export(self, request: Request, format: str) -> HttpResponseBase:
        params = validated_params(request, MessagesExportQuerySerializer)
        export = exports.messages_export(
            devices=self.selected_devices(),
            format=format,
            names=projection(params),
            begin=params.get("begin"),
            end=params.get("end"),
            count=params.get("count", MESSAGES_DEFAULT_COUNT),
            reverse=params.get("reverse", False),
            condition=_message_filter(params.get("filter")),
        )
        return streamed(export.chunks, format=format, filename=export.filename)

    def post(self, request: Request, selector: str) -> Response:
        if not isinstance(request.data, list):
            raise InvalidInput("the body must be a JSON array of messages")
        devices = self.selected_devices()
        result = services.messages_ingest(devices=devices, messages=request.data, source="rest")
        return batch_response([], [error.as_error() for error in result.errors], done=result.accepted)

    def delete(self, request: Request, selector: str) -> Response:
        params = validated_params(request, MessagesDeleteSerializer)
        devices = self.selected_devices()
        services.messages_delete(devices=devices, begin=params.get("begin"), end=params.get("end"))
        return Response({"result": []})


class TelemetryView(DeviceSelectionView):
    """``GET|DELETE /gw/devices/{sel}/telemetry[/{telemetry-sel}]``: the latest value of each
    selected parameter and its time (``all`` when the path names none); a DELETE forgets them
    and must name them."""

    url_path = "telemetry"

    def get(self, request: Request, selector: str, telemetry_selector: str = "all") -> Response:
        selection = selectors.TelemetrySelection.parse(telemetry_selector)
        devices = self.selected_devices()
        telemetry = selectors.telemetry_selected(devices=devices, selection=selection)
        return Response({"result": [{"id": device.pk, "telemetry": telemetry[device.pk]} for device in devices]})

    def delete(self, request: Request, selector: str, telemetry_selector: str | None = None) -> Response:
        if telemetry_selector is None:
            raise InvalidInput(
                "name the parameters to forget: /telemetry/all, /telemetry/name,name or /telemetry/position.*",
                field="selector",
            )
        selection = selectors.TelemetrySelection.parse(telemetry_selector)
        services.telemetry_delete(devices=self.selected_devices(), selection=selection)
        return Response({"result": []})

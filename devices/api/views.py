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
    GroupCreateSerializer,
    GroupUpdateSerializer,
    MessagesDeleteSerializer,
    MessageSerializer,
    MessagesExportQuerySerializer,
    MessagesQuerySerializer,
)
from devices.models import Device, Group
from flespi_site.api.batch import batch_response
from flespi_site.api.exports import CSV, GEOJSON, GPX, JSON, export_format, streamed
from flespi_site.api.params import project, projection, validated_params
from flespi_site.api.resources import (
    Resource,
    ResourceView,
    SelectionView,
    selected_rows,
    selected_with_missing_ids,
    selector_kwarg,
)
from flespi_site.api.selection import SelectionField, is_id_list, names_ids
from flespi_site.api.views import FlespiAPIView
from flespi_site.errors import DomainError, InvalidInput, NotFound

DEVICE_FIELDS = (
    "id", "name", "cid", "device_type_id", "configuration", "enabled", "messages_ttl", "messages_rotate",
    "media_ttl", "media_rotate", "metadata", "shard", "created",
)
# flespi's device fields answered when fields= names them: computed (from the stored messages or
# the groups), or fixed here (null: no meaning on this platform, which has no channels,
# protocols, commands, media, plugins or streams; a device is never blocked).
DEVICE_COMPUTED_FIELDS = ("telemetry", "last_active", "connected", "messages_size", "groups")
DEVICE_FLESPI_FIELDS = {
    "blocked": False,
    "media_blocked": False,
    **dict.fromkeys((
        "device_type_name", "protocol_id", "protocol_name", "commands", "commands_queue",
        "settings", "media_size", "media_traffic", "plugins", "streams", "calcs",
    )),
}


# Messages answered by one GET when the request names no count.
MESSAGES_DEFAULT_COUNT = 100_000

render_device = selectors.device_item


class DeviceResource(Resource):
    name = "device"
    url_path = "gw/devices"
    selection_fields = selectors.DEVICE_SELECTION_FIELDS
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

    def updating(self, obj, data):
        return services.device_update_locks(device=obj, data=data)

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


# --- groups --------------------------------------------------------------------------------

GROUP_FIELDS = ("id", "cid", "name", "metadata", "selector", "created")


class GroupResource(Resource):
    """Groups of devices: explicit members (``devices``) or a stored device selector
    (``selector``). ``devices`` (the member ids now) is answered when ``fields=`` names it."""

    name = "group"
    url_path = "gw/groups"
    selection_fields = {
        "id": SelectionField("pk", "int"),
        "cid": SelectionField("account_id", "int"),
        "name": SelectionField("name", "str"),
        "metadata": SelectionField("metadata", "json"),
    }
    create_serializer = GroupCreateSerializer
    update_serializer = GroupUpdateSerializer
    output_fields = GROUP_FIELDS
    computed_fields = ("devices",)
    merge_fields = ("metadata",)

    def queryset(self):
        return selectors.groups_of(account=self.account)

    def render(self, obj):
        return selectors.group_item(obj)

    def computed(self, objs, names):
        members = selectors.group_member_ids(groups=list(objs)) if objs else {}
        return {pk: {"devices": ids} for pk, ids in members.items()}

    def create(self, data):
        return services.group_create(account=self.account, **data)

    def updating(self, obj, data):
        return services.group_update_locks(group=obj)

    def update(self, obj, data):
        return services.group_update(group=obj, account=self.account, data=data)

    def delete(self, obj):
        services.group_delete(group=obj)


class GroupsView(ResourceView):
    """``POST|GET|PUT|PATCH|DELETE /gw/groups[/{group-sel}]``."""

    resource_class = GroupResource


class GroupDevicesView(FlespiAPIView):
    """``GET|POST|DELETE /gw/groups/{group-sel}/devices[/{dev-sel}]``: list a group's members
    (explicit or selected), add devices to its member list, remove them from it. An item is a
    device of a group: ``{"id": device id, "group_id": ..., "name": device name}``."""

    url_path = "devices"

    def _groups(self) -> list[Group]:
        return selected_rows(self, GroupResource, kwarg=selector_kwarg(GroupResource))  # type: ignore[return-value]

    @staticmethod
    def _item(group: Group, device: Device) -> dict:
        return {"id": device.pk, "group_id": group.pk, "name": device.name}

    @staticmethod
    def _no_body(request: Request) -> None:
        if request.stream is not None and request.content_type and request.data not in ([], {}):
            raise InvalidInput("adding and removing members takes no body (or an empty JSON array)")

    def get(self, request: Request, selector: str = "all", **parents: str) -> Response:
        condition = selectors.device_selection(selector)
        groups = self._groups()
        members = selectors.group_member_ids(groups=groups)
        ids = {device_id for group_ids in members.values() for device_id in group_ids}
        devices = Device.objects.using(groups[0].database).filter(pk__in=list(ids)).filter(condition).in_bulk()
        result = [
            self._item(group, devices[device_id])
            for group in groups for device_id in members[group.pk] if device_id in devices
        ]
        if not result and names_ids(selector):
            raise NotFound(f"no member matches {selector!r}")
        return Response({"result": result})

    def post(self, request: Request, selector: str | None = None, **parents: str) -> Response:
        if selector is None:
            raise InvalidInput("POST adds devices: name them in the path, /gw/groups/{group}/devices/{devices}")
        self._no_body(request)
        groups = self._groups()
        devices, missing = selected_with_missing_ids(self, DeviceResource, selector)
        result: list[dict] = []
        errors: list[dict] = [error.as_error() for error in missing]
        for group in groups:
            try:
                services.group_members_add(group=group, devices=devices)  # type: ignore[arg-type]  # DeviceResource selects devices
            except DomainError as exc:
                exc.id = group.pk
                errors.append(exc.as_error())
                continue
            result.extend(self._item(group, device) for device in devices)  # type: ignore[arg-type]
        return batch_response(result, errors)

    def delete(self, request: Request, selector: str | None = None, **parents: str) -> Response:
        if selector is None:
            raise InvalidInput("DELETE removes devices: name them in the path, /gw/groups/{group}/devices/{devices}")
        self._no_body(request)
        groups = self._groups()
        devices, missing = selected_with_missing_ids(self, DeviceResource, selector)
        result: list[dict] = []
        errors: list[dict] = [error.as_error() for error in missing]
        for group in groups:
            try:
                removed = set(services.group_members_remove(group=group, devices=devices))  # type: ignore[arg-type]
            except DomainError as exc:
                exc.id = group.pk
                errors.append(exc.as_error())
                continue
            result.extend(self._item(group, device) for device in devices if device.pk in removed)  # type: ignore[arg-type]
            if is_id_list(selector):
                errors.extend(
                    NotFound(f"device {device.pk} is not a member of group {group.pk}", id=device.pk,
                             selector=f"group_id={group.pk}").as_error()
                    for device in devices if device.pk not in removed
                )
        return batch_response(result, errors)

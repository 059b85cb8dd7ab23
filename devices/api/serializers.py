from __future__ import annotations

from rest_framework import serializers

from flespi_site.api.fields import (
    JSONObjectField,
    StrictBooleanField,
    StrictCharField,
    StrictFloatField,
    StrictIntegerField,
    StrictSerializer,
)

MAX_MESSAGES_TTL = 100 * 365 * 86400
MAX_STORAGE_BYTES = 2**62
MAX_DEVICE_TYPE_ID = 2**31 - 1
# The latest time (unix seconds) whose microseconds, the unit messages are stored in, fit in a
# 64-bit integer.
MAX_QUERY_TIME = (2**63 - 1) // 1_000_000
# The largest count of a streamed export (CSV, GeoJSON, GPX): it holds one page at a time.
MAX_EXPORT_COUNT = 1_000_000_000
EXPORT_FORMAT_HELP = "json (default), csv, geojson or gpx: a streamed file (or Accept: text/csv, ...)"


class DeviceCreateSerializer(StrictSerializer):
    name = StrictCharField(required=False, allow_blank=True, max_length=255)
    configuration = JSONObjectField()
    enabled = StrictBooleanField(required=False)
    messages_ttl = StrictIntegerField(required=False, min_value=1, max_value=MAX_MESSAGES_TTL)
    messages_rotate = StrictIntegerField(
        required=False, min_value=0, max_value=MAX_STORAGE_BYTES,
        help_text="bytes of stored messages to keep; the oldest beyond are deleted (0: no limit)",
    )
    device_type_id = StrictIntegerField(
        required=False, min_value=1, max_value=MAX_DEVICE_TYPE_ID,
        help_text="flespi's device type: stored and answered, any positive integer",
    )
    media_ttl = StrictIntegerField(required=False, min_value=1, max_value=MAX_MESSAGES_TTL)
    media_rotate = StrictIntegerField(required=False, min_value=0, max_value=MAX_STORAGE_BYTES)
    metadata = JSONObjectField(required=False)


class DeviceUpdateSerializer(DeviceCreateSerializer):
    cid = StrictIntegerField(required=False)


def _time_field(help_text: str, **options) -> StrictFloatField:
    return StrictFloatField(required=False, min_value=0, max_value=MAX_QUERY_TIME, help_text=help_text, **options)


class TimeRangeSerializer(StrictSerializer):
    """``begin`` and ``end`` (unix seconds, inclusive), or flespi's names of them, ``from`` and
    ``to``: the validated data names them ``begin`` and ``end``. Both names of one bound is
    refused, naming flespi's."""

    begin = _time_field("unix seconds, inclusive; flespi's name: from")
    end = _time_field("unix seconds, inclusive; flespi's name: to")

    def get_fields(self):
        fields = super().get_fields()
        # Python keeps "from" for itself: flespi's names are added here.
        fields["from"] = _time_field("flespi's name of begin", source="begin_alias")
        fields["to"] = _time_field("flespi's name of end", source="end_alias")
        return fields

    def validate(self, attrs):
        for name, alias, flespis in (("begin", "begin_alias", "from"), ("end", "end_alias", "to")):
            if alias in attrs:
                if name in attrs:
                    raise serializers.ValidationError(
                        {flespis: [f"{name} and {flespis} name the same bound: give one of them"]}
                    )
                attrs[name] = attrs.pop(alias)
        return super().validate(attrs)


class MessagesQuerySerializer(TimeRangeSerializer):
    count = StrictIntegerField(required=False, min_value=1, max_value=100_000)
    reverse = StrictBooleanField(required=False)
    fields = StrictCharField(required=False)  # type: ignore[assignment]  # DRF's metaclass takes it out of the class
    filter = StrictCharField(required=False, max_length=4096)
    format = StrictCharField(required=False, help_text=EXPORT_FORMAT_HELP)


class MessagesExportQuerySerializer(MessagesQuerySerializer):
    """The same parameters for a streamed export (CSV, GeoJSON, GPX): ``count`` may be larger."""

    count = StrictIntegerField(required=False, min_value=1, max_value=MAX_EXPORT_COUNT)


class MessagesDeleteSerializer(TimeRangeSerializer):
    pass


class MessageSerializer(serializers.Serializer):
    """A message in the body of ``POST /gw/devices/{sel}/messages``, for the OpenAPI schema only:
    messages are checked by ``devices.validation`` (any other parameter is a dotted name with a JSON
    value)."""

    timestamp = serializers.FloatField(min_value=0, help_text="unix time in seconds")



MAX_GROUP_DEVICES = 10_000
MAX_SELECTOR_LENGTH = 4096


class GroupCreateSerializer(StrictSerializer):
    name = StrictCharField(max_length=255)
    metadata = JSONObjectField(required=False)
    devices = serializers.ListField(
        child=StrictIntegerField(min_value=1), required=False, max_length=MAX_GROUP_DEVICES,
        help_text="ids of the account's devices: the group's explicit members (not with selector)",
    )
    selector = StrictCharField(
        required=False, allow_null=True, max_length=MAX_SELECTOR_LENGTH,
        help_text="a device selector (the grammar of /gw/devices/{selector}): the group holds every device of its "
        "account that it selects, now and later (not with devices)",
    )


class GroupUpdateSerializer(GroupCreateSerializer):
    name = StrictCharField(required=False, max_length=255)

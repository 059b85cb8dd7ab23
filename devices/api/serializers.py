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
# The latest time (unix seconds) whose microseconds, the unit messages are stored in, fit in a
# 64-bit integer.
MAX_QUERY_TIME = (2**63 - 1) // 1_000_000


class DeviceCreateSerializer(StrictSerializer):
    name = StrictCharField(required=False, allow_blank=True, max_length=255)
    configuration = JSONObjectField()
    enabled = StrictBooleanField(required=False)
    messages_ttl = StrictIntegerField(required=False, min_value=1, max_value=MAX_MESSAGES_TTL)
    metadata = JSONObjectField(required=False)


class DeviceUpdateSerializer(DeviceCreateSerializer):
    cid = StrictIntegerField(required=False)


class MessagesQuerySerializer(StrictSerializer):
    begin = StrictFloatField(required=False, min_value=0, max_value=MAX_QUERY_TIME)
    end = StrictFloatField(required=False, min_value=0, max_value=MAX_QUERY_TIME)
    count = StrictIntegerField(required=False, min_value=1, max_value=100_000)
    reverse = StrictBooleanField(required=False)
    fields = StrictCharField(required=False)  # type: ignore[assignment]  # DRF's metaclass takes it out of the class
    filter = StrictCharField(required=False, max_length=4096)


class MessagesDeleteSerializer(StrictSerializer):
    begin = StrictFloatField(required=False, min_value=0, max_value=MAX_QUERY_TIME)
    end = StrictFloatField(required=False, min_value=0, max_value=MAX_QUERY_TIME)


class MessageSerializer(serializers.Serializer):
    """A message in the body of ``POST /gw/devices/{sel}/messages``, for the OpenAPI schema only:
    messages are checked by ``devices.validation`` (any other parameter is a dotted name with a JSON
    value)."""

    timestamp = serializers.FloatField(min_value=0, help_text="unix time in seconds")


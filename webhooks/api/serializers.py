"""Input of /platform/webhooks: the shape and types; what the values mean (templates, addresses,
topic filters) is checked by ``webhooks.services``."""

from __future__ import annotations

from rest_framework import serializers

from flespi_site.api.fields import (
    StrictBooleanField,
    StrictCharField,
    StrictFloatField,
    StrictIntegerField,
    StrictSerializer,
)
from webhooks.choices import DeliveryStatus, Method
from webhooks.constants import MAX_HEADERS, MAX_RETRY_SECONDS, MAX_TIMEOUT, MAX_TRIGGERS, MAX_URL
from webhooks.templates import MAX_TEMPLATE

MAX_TIME = 2**40


class TriggerSerializer(StrictSerializer):
    topic = StrictCharField(max_length=1024, help_text="an MQTT topic filter (+, #) of the platform's events")


class HeaderSerializer(StrictSerializer):
    name = StrictCharField(max_length=256)
    value = StrictCharField(max_length=MAX_TEMPLATE, allow_blank=True, trim_whitespace=False)


class ConfigurationSerializer(StrictSerializer):
    type = StrictCharField(required=False)
    uri = StrictCharField(max_length=MAX_URL)
    method = serializers.ChoiceField(choices=Method.choices, required=False)
    headers = HeaderSerializer(many=True, required=False, max_length=MAX_HEADERS)  # type: ignore[call-arg]  # DRF takes it; its stubs lack it
    body = StrictCharField(required=False, allow_blank=True, max_length=MAX_TEMPLATE, trim_whitespace=False)


class WebhookCreateSerializer(StrictSerializer):
    name = StrictCharField(max_length=255, min_length=1)
    triggers = TriggerSerializer(many=True, allow_empty=False, max_length=MAX_TRIGGERS)  # type: ignore[call-arg]  # as above
    configuration = ConfigurationSerializer()
    enabled = StrictBooleanField(required=False)
    secret = StrictCharField(required=False, max_length=128, allow_blank=True)
    retry_seconds = StrictIntegerField(required=False, min_value=0, max_value=MAX_RETRY_SECONDS)
    timeout = StrictIntegerField(required=False, min_value=1, max_value=MAX_TIMEOUT)


class WebhookUpdateSerializer(WebhookCreateSerializer):
    pass


class LogQuerySerializer(StrictSerializer):
    begin = StrictFloatField(required=False, min_value=0, max_value=MAX_TIME)
    end = StrictFloatField(required=False, min_value=0, max_value=MAX_TIME)
    count = StrictIntegerField(required=False, min_value=1, max_value=10_000)
    status = serializers.ChoiceField(choices=[label for _value, label in DeliveryStatus.choices], required=False)


class ReplaySerializer(StrictSerializer):
    begin = StrictFloatField(min_value=0, max_value=MAX_TIME)
    end = StrictFloatField(min_value=0, max_value=MAX_TIME)
    count = StrictIntegerField(required=False, min_value=1, max_value=100_000)

"""Input validation of /platform; output is rendered by the resources in views.py."""

from __future__ import annotations

from rest_framework import serializers

from flespi_site.api.fields import (
    JSONObjectField,
    StrictBooleanField,
    StrictCharField,
    StrictIntegerField,
    StrictSerializer,
)


class AccessSerializer(StrictSerializer):
    type = StrictIntegerField(min_value=0, max_value=1)

    def validate(self, attrs):
        # Required in a partial update too: ``{"access": {}}`` must not read as "standard".
        if "type" not in attrs:
            raise serializers.ValidationError({"type": ["This field is required."]})
        return attrs


class TokenCreateSerializer(StrictSerializer):
    info = StrictCharField(required=False, allow_blank=True, max_length=255)
    enabled = StrictBooleanField(required=False)
    expire = StrictIntegerField(required=False, min_value=0, max_value=2**62)
    ttl = StrictIntegerField(required=False, min_value=0, max_value=2**62)
    access = AccessSerializer(required=False)


class TokenUpdateSerializer(TokenCreateSerializer):
    pass


class AccountUpdateSerializer(StrictSerializer):
    name = StrictCharField(required=False, max_length=255, min_length=1)
    metadata = JSONObjectField(required=False)
    # Present so that a request to change them gets a clear reason rather than "unknown field".
    region = StrictCharField(required=False)
    datacenter = StrictCharField(required=False)
    parent_id = StrictIntegerField(required=False)


class SubaccountCreateSerializer(StrictSerializer):
    name = StrictCharField(max_length=255, min_length=1)
    parent_id = StrictIntegerField(required=False)
    region = StrictCharField(required=False)
    datacenter = StrictCharField(required=False)
    metadata = JSONObjectField(required=False)


def validated_or_error(serializer_class: type[serializers.Serializer], data, *, partial: bool = False) -> dict:
    serializer = serializer_class(data=data, partial=partial)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)

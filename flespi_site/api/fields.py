"""Serializer fields that refuse what DRF would coerce: ``"5"`` is not an integer, ``1`` is not a
string, ``"yes"`` is not a boolean. Bad input is an error, not a guess."""

from __future__ import annotations

import math

from rest_framework import serializers

from flespi_site.jsontext import unstorable


class StrictCharField(serializers.CharField):
    default_error_messages = {"invalid": "must be a string"}

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    default_error_messages = {"invalid": "must be an integer"}

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictFloatField(serializers.FloatField):
    default_error_messages = {"invalid": "must be a number"}

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, (int, float)) or not math.isfinite(data):
            self.fail("invalid")
        return float(data)


class StrictBooleanField(serializers.BooleanField):
    default_error_messages = {"invalid": "must be true or false"}

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("invalid")
        return data


class JSONObjectField(serializers.JSONField):
    default_error_messages = {
        "invalid": "must be a JSON object",
        "unstorable": "must not contain {what}",
    }

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            self.fail("invalid")
        what = unstorable(data)
        if what is not None:
            self.fail("unstorable", what=what)
        return data


class StrictSerializer(serializers.Serializer):
    """Unknown fields are an error, so that a typo is never silently ignored."""

    def run_validation(self, data=serializers.empty):
        # DRF would say "This field may not be null" (nested) or "No data provided" (top level).
        if data is None and not self.allow_null:
            raise serializers.ValidationError({"non_field_errors": ["must be a JSON object, not null"]})
        return super().run_validation(data)

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise serializers.ValidationError({"non_field_errors": ["must be a JSON object"]})
        unknown = sorted(set(data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError({name: ["unknown field"] for name in unknown})
        read_only = sorted(name for name in data if self.fields[name].read_only)
        if read_only:
            raise serializers.ValidationError({name: ["read-only field"] for name in read_only})
        return super().to_internal_value(data)

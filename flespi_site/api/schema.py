"""OpenAPI generation for views built on ``ResourceView`` and ``FlespiAPIView``: request bodies
come from the resource's serializers, responses are the envelope, and the token scheme is named."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from rest_framework import serializers

from flespi_site.api.fields import JSONObjectField, StrictSerializer

ERROR_ENVELOPE = {
    "type": "object",
    "required": ["errors"],
    "properties": {
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["code", "reason"],
                "additionalProperties": False,
                "properties": {
                    "code": {"type": "integer"},
                    "reason": {"type": "string"},
                    "id": {"type": "integer"},
                    "selector": {"type": "string"},
                    "field": {"type": "string"},
                },
            },
        },
        "result": {"type": "array", "items": {"type": "object"}},
    },
}


class FlespiAutoSchema(AutoSchema):
    def is_excluded(self):
        # One view serves a resource's collection and its selector path; each path takes only
        # some methods (the others are refused with a reason), and the schema lists only those.
        resource = getattr(self.view, "resource_class", None)
        if resource is None:
            return False
        if self.method == "PATCH" and not resource.merge_fields:
            return True
        if "{selector}" in self.path:
            return self.method == "POST"
        return self.method in ("PUT", "PATCH", "DELETE")

    def _map_basic_serializer(self, serializer, direction):
        schema = super()._map_basic_serializer(serializer, direction)
        if isinstance(serializer, StrictSerializer) or (
            isinstance(serializer, type) and issubclass(serializer, StrictSerializer)
        ):
            schema["additionalProperties"] = False  # unknown fields are refused
        return schema

    def get_request_serializer(self):
        resource = getattr(self.view, "resource_class", None)
        if resource is not None:
            if self.method == "POST" and resource.create_serializer:
                return resource.create_serializer(many=True)
            if self.method == "PUT" and resource.update_serializer:
                return resource.update_serializer
        serializers = getattr(self.view, "request_serializers", {})
        return serializers.get(self.method)

    def get_override_parameters(self):
        parameters_of = getattr(self.view, "parameters_of", None)
        if parameters_of is None:
            return []
        parameters = parameters_of(self.method)
        if not parameters().fields:
            return []
        data = OpenApiParameter(
            "data",
            OpenApiTypes.STR,
            description="the same parameters as one JSON object (values keep their JSON types)",
        )
        resource = getattr(self.view, "resource_class", None)
        if resource is not None and set(parameters().fields) == {"fields"}:
            # The names a resource answers (flespi's included), so that the schema says which
            # ``fields`` are valid.
            name = "(?:" + "|".join(resource.answerable_fields()) + ")"
            fields = OpenApiParameter(
                "fields",
                OpenApiTypes.STR,
                description="the fields of each item in the answer, separated by commas: fields=id,name",
                pattern=f"^{name}(?:,{name})*$",
            )
            return [fields, data]
        return [parameters, data]

    def _get_request_body(self, direction="request"):
        # Every POST and PUT of this API needs its JSON body, even when each field is optional.
        body = super()._get_request_body(direction)
        if body is not None:
            body["required"] = True
        return body

    def _map_serializer_field(self, field, direction, bypass_extensions=False):
        schema = super()._map_serializer_field(field, direction, bypass_extensions)
        if isinstance(field, JSONObjectField):
            schema = {"type": "object", "additionalProperties": True}
        elif isinstance(field, serializers.CharField) and not field.allow_blank:
            schema.setdefault("minLength", 1)
        return schema

    def get_response_serializers(self):
        return {"200": OpenApiTypes.OBJECT, "307": ERROR_ENVELOPE, "4XX": ERROR_ENVELOPE}

    def get_operation_id(self):
        operation_id = super().get_operation_id()
        return operation_id + "_selected" if "{selector}" in self.path else operation_id


class FlespiTokenScheme(OpenApiAuthenticationExtension):
    target_class = "flespi_site.api.authentication.FlespiTokenAuthentication"
    name = "FlespiToken"

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "header", "name": "Authorization", "description": "FlespiToken <key>"}


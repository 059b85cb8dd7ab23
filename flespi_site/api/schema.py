"""OpenAPI generation for views built on ``ResourceView`` and ``FlespiAPIView``: request bodies
come from the resource's serializers, responses are the envelope, and the token scheme is named."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter


class FlespiAutoSchema(AutoSchema):
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
        return [parameters, data]

    def get_response_serializers(self):
        return {"200": OpenApiTypes.OBJECT}

    def get_operation_id(self):
        operation_id = super().get_operation_id()
        return operation_id + "_selected" if "{selector}" in self.path else operation_id


class FlespiTokenScheme(OpenApiAuthenticationExtension):
    target_class = "flespi_site.api.authentication.FlespiTokenAuthentication"
    name = "FlespiToken"

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "header", "name": "Authorization", "description": "FlespiToken <key>"}

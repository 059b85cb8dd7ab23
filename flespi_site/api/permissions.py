from __future__ import annotations

from typing import TYPE_CHECKING

from rest_framework.permissions import BasePermission

from accounts.choices import AccessType
from flespi_site.api.authentication import token_of

if TYPE_CHECKING:
    # rest_framework.views loads the default permission classes (this module) as it is imported.
    from rest_framework.request import Request
    from rest_framework.views import APIView


class HasToken(BasePermission):
    message = "a token is required: send 'Authorization: FlespiToken <key>'"

    def has_permission(self, request: Request, view: APIView) -> bool:
        return token_of(request) is not None


class IsMasterToken(HasToken):
    message = "this token's access type is standard; /platform needs a master token"

    def has_permission(self, request: Request, view: APIView) -> bool:
        token = token_of(request)
        return token is not None and token.access_type == AccessType.MASTER

from __future__ import annotations

from rest_framework.permissions import BasePermission

from accounts.choices import AccessType


class HasToken(BasePermission):
    message = "a token is required: send 'Authorization: FlespiToken <key>'"

    def has_permission(self, request, view):
        return request.auth is not None


class IsMasterToken(HasToken):
    message = "this token's access type is standard; /platform needs a master token"

    def has_permission(self, request, view):
        return request.auth is not None and request.auth.access_type == AccessType.MASTER

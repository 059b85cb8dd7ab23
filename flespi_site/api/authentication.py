"""``Authorization: FlespiToken <key>`` (or ``Bearer <key>``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed

from accounts.services import token_authenticate
from flespi_site.errors import Unauthorized

if TYPE_CHECKING:
    # rest_framework.views loads the default authentication classes (this module) as it is imported.
    from rest_framework.request import Request

    from accounts.models import Token

SCHEMES = ("flespitoken", "bearer")


class TokenUser:
    """What ``request.user`` is for a token: enough for DRF, no Django user behind it."""

    is_authenticated = True
    is_anonymous = False

    def __init__(self, token: Token):
        self.token = token
        self.account = token.account

    def __str__(self) -> str:
        return f"account {self.account.pk}"


def token_of(request: Request) -> Token | None:
    """The token the request authenticated with, if any."""
    # DRF's stubs type ``request.auth`` as rest_framework.authtoken's Token; our only
    # authentication class (below) sets it to accounts.models.Token.
    return cast("Token | None", request.auth)


class FlespiTokenAuthentication(BaseAuthentication):
    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        scheme, _, key = header.strip().partition(" ")
        if scheme.lower() not in SCHEMES or not key.strip():
            raise AuthenticationFailed("Authorization must be 'FlespiToken <key>' or 'Bearer <key>'")
        try:
            token = token_authenticate(key=key.strip())
        except Unauthorized as exc:
            raise AuthenticationFailed(exc.reason) from None
        return TokenUser(token), token

    def authenticate_header(self, request):
        return "FlespiToken"

"""The base view of the API.

``FlespiAPIView`` resolves the acting account (the token's, or ``x-flespi-cid``), has the request
served in the right region (``flespi_site.api.regions``) and refuses query parameters a method
does not declare (``flespi_site.api.params``). Endpoints on a resource build on
``flespi_site.api.resources``.
"""

from __future__ import annotations

from typing import Any, ClassVar, NoReturn

from rest_framework import serializers
from rest_framework.exceptions import NotAuthenticated, ParseError, UnsupportedMediaType
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.request import Request
from rest_framework.views import APIView

from accounts.models import Account, Token
from accounts.services import acting_account
from flespi_site.api.authentication import token_of
from flespi_site.api.exports import accepted_exports
from flespi_site.api.params import NoParameters, refuse_unknown_parameters
from flespi_site.api.permissions import HasToken
from flespi_site.api.regions import Serving, acting_region, region_check


def json_body(request: Request) -> Any:
    """The parsed JSON body. DRF reads an empty body, or one without a content type, as ``{}``,
    which would make such a PUT a silent no-op and such a POST a puzzling "not an array"."""
    if request.stream is None:
        raise ParseError("request body is empty; send JSON")
    if not request.content_type:
        raise UnsupportedMediaType("", detail="the body has no Content-Type; send it as application/json")
    return request.data


class _NegotiationSettings:
    # DRF reads ``?format=`` as a renderer name (``format=api`` was a bare 404); here it is just a
    # query parameter, refused like any other the endpoint does not take.
    URL_FORMAT_OVERRIDE = None


class ContentNegotiation(DefaultContentNegotiation):
    settings = _NegotiationSettings  # type: ignore[assignment]


class FlespiAPIView(APIView):
    """A view that acts for an account and is served only in that account's region."""

    content_negotiation_class = ContentNegotiation

    # Views that need no token (``/auth/regions``) set this to False.
    acts_for_account: ClassVar[bool] = True
    # The query parameters of each method, by a serializer that declares them (the OpenAPI schema
    # documents them from it); any other parameter is refused. A method missing here takes none.
    query_parameters: ClassVar[dict[str, type[serializers.Serializer]]] = {}
    # The export formats (``flespi_site.api.exports``) the view answers besides JSON: an Accept
    # header naming one of them is the view's to read (``export_format``), not a 406.
    export_formats: ClassVar[tuple[str, ...]] = ()

    def perform_content_negotiation(self, request: Request, force: bool = False):
        if self.export_formats and accepted_exports(request):
            renderer = self.get_renderers()[0]  # what errors and JSON answers are rendered with
            return renderer, renderer.media_type
        return super().perform_content_negotiation(request, force)

    def initial(self, request: Request, *args, **kwargs) -> None:
        super().initial(request, *args, **kwargs)
        self._token = token_of(request)
        self._account: Account | None = None
        if self.acts_for_account and self._token is not None:
            self._account = acting_account(token=self._token, cid=request.headers.get("x-flespi-cid"))
            region_check(request, self._account, self.region_to_serve(request, self._account))
        method = (request.method or "").lower()
        if method in self.http_method_names and hasattr(self, method):
            refuse_unknown_parameters(request, self.parameters_of(method.upper()))

    @property
    def token(self) -> Token:
        """The request's token. A handler of a view that requires one (``HasToken``, the default
        permission) runs only when there is one."""
        if self._token is None:
            raise RuntimeError(f"{type(self).__name__}: the request has no token")
        return self._token

    @property
    def account(self) -> Account:
        """The account the request acts for, resolved by ``initial`` from the token (and
        ``x-flespi-cid``) in a view that ``acts_for_account`` and requires a token."""
        if self._account is None:
            raise RuntimeError(f"{type(self).__name__}: the request acts for no account")
        return self._account

    @classmethod
    def parameters_of(cls, method: str) -> type[serializers.Serializer]:
        method = "GET" if method == "HEAD" else method
        return cls.query_parameters.get(method, NoParameters)

    def permission_denied(self, request: Request, message=None, code=None) -> NoReturn:
        # DRF drops the permission's message when no token was sent; say how to send one.
        if request.authenticators and not request.successful_authenticator:
            raise NotAuthenticated(HasToken.message)
        super().permission_denied(request, message=message, code=code)

    def region_to_serve(self, request: Request, account: Account) -> Serving:
        """The region that must serve this request, and the account that decides it: by default
        the acting account (a view whose writes reach another region's data says so here, with
        ``flespi_site.api.regions``)."""
        return acting_region(account)

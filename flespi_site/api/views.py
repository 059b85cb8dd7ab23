"""The base views of the API.

``FlespiAPIView`` resolves the acting account (the token's, or ``x-flespi-cid``) and sends
requests that reached the wrong region to the right one. ``ResourceView`` is the shared
POST/GET/PUT/DELETE-on-a-selector behaviour; an endpoint declares a ``Resource`` and nothing else.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any, ClassVar, NoReturn

from django.db.models import Model, QuerySet
from django.urls import path
from rest_framework import serializers
from rest_framework.exceptions import NotAuthenticated, ParseError, UnsupportedMediaType, ValidationError
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import Account, Token
from accounts.services import acting_account
from flespi_site.api import fields as strict
from flespi_site.api.authentication import token_of
from flespi_site.api.exceptions import RegionRedirect
from flespi_site.api.parsers import loads_strict
from flespi_site.api.permissions import HasToken
from flespi_site.api.selectors import SelectorField, is_id_list, parse_selector
from flespi_site.errors import Conflict, DomainError, ErrorKind, InvalidInput, NotFound
from regions.selectors import region_config


class ProjectionParameters(strict.StrictSerializer):
    """The query parameters of an endpoint that renders items: ``fields`` (read by ``projection``,
    which also takes a JSON array of names through ``data=``)."""

    fields = strict.StrictCharField(  # type: ignore[assignment]  # DRF's metaclass takes it out of the class
        required=False, help_text="the fields of each item in the answer, separated by commas: fields=id,name"
    )


class NoParameters(strict.StrictSerializer):
    """An endpoint method that takes no query parameter."""


# Parameter names are echoed in errors; a name longer than this is cut.
_ECHOED_NAME_LENGTH = 64


def _echoed(name: str) -> str:
    return name if len(name) <= _ECHOED_NAME_LENGTH else name[:_ECHOED_NAME_LENGTH] + "..."


def refuse_unknown_parameters(request: Request, parameters: type[serializers.Serializer]) -> None:
    """Refuse query parameters (plain, or keys of ``data=``) that ``parameters`` does not
    declare, and plain ones given twice: a typo must not silently change what a request does."""
    known = set(parameters().fields)
    given = list(request.query_params)
    problems: dict[str, list[str]] = {}
    for name in given:
        if len(request.query_params.getlist(name)) > 1:
            problems[_echoed(name)] = ["query parameter given more than once; give it once"]
    if known and "data" in given:
        data = loads_strict(request.query_params["data"], what="query parameter data")
        if not isinstance(data, dict):
            raise InvalidInput("query parameter data must be a JSON object", field="data")
        given += [name for name in data if name not in given]
    if known:
        takes = "this endpoint takes " + ", ".join(sorted(known)) + " (plain, or in data=<JSON object>)"
        known.add("data")
    else:
        takes = "this endpoint takes no query parameters"
    for name in given:
        if name not in known:
            problems[_echoed(name)] = [f"unknown query parameter; {takes}"]
    if problems:
        raise ValidationError(problems)


def query_params(request: Request) -> dict[str, Any]:
    """Query parameters, with ``data=<JSON object>`` merged over the plain ones."""
    params: dict[str, Any] = {key: request.query_params.get(key) for key in request.query_params if key != "data"}
    raw = request.query_params.get("data")
    if raw is not None:
        data = loads_strict(raw, what="query parameter data")
        if not isinstance(data, dict):
            raise InvalidInput("query parameter data must be a JSON object", field="data")
        params.update(data)
    return params


def json_body(request: Request) -> Any:
    """The parsed JSON body. DRF reads an empty body, or one without a content type, as ``{}``,
    which would make such a PUT a silent no-op and such a POST a puzzling "not an array"."""
    if request.stream is None:
        raise ParseError("request body is empty; send JSON")
    if not request.content_type:
        raise UnsupportedMediaType("", detail="the body has no Content-Type; send it as application/json")
    return request.data


# int() and float() also read "1_000", " 1", other scripts' digits, "nan" and "inf".
_PLAIN_INTEGER = re.compile(r"-?[0-9]+")
_PLAIN_NUMBER = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


def validated_params(request: Request, serializer_class: type[serializers.Serializer]) -> dict[str, Any]:
    """Query parameters validated by ``serializer_class``. Plain parameters arrive as text and
    are read as the type the serializer expects; ``data=`` values keep their JSON types."""
    texts = {key: values[-1] for key, values in request.query_params.lists() if key != "data"}
    params: dict[str, Any] = dict(texts)
    declared = serializer_class().fields
    for name, text in texts.items():
        field = declared.get(name)
        try:
            if isinstance(field, strict.StrictBooleanField):
                if text not in ("true", "false"):
                    raise ValueError
                params[name] = text == "true"
            elif isinstance(field, strict.StrictIntegerField):
                if not _PLAIN_INTEGER.fullmatch(text):
                    raise ValueError
                params[name] = int(text)
            elif isinstance(field, strict.StrictFloatField):
                if not _PLAIN_NUMBER.fullmatch(text):
                    raise ValueError
                params[name] = float(text)
        except ValueError:
            raise InvalidInput(f"query parameter {name}={text!r} is not a valid {type(field).__name__[6:-5].lower()}",
                               field=name) from None
    raw = request.query_params.get("data")
    if raw is not None:
        data = loads_strict(raw, what="query parameter data")
        if not isinstance(data, dict):
            raise InvalidInput("query parameter data must be a JSON object", field="data")
        params.update(data)
    serializer = serializer_class(data=params)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def projection(params: dict[str, Any], allowed: Iterable[str] | None = None) -> list[str] | None:
    """The ``fields=a,b`` parameter as a list (None: every field)."""
    raw = params.get("fields")
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = raw.split(",")
    if not isinstance(raw, list) or not all(isinstance(name, str) for name in raw):
        raise InvalidInput("fields must be names separated by commas, or a JSON array of names", field="fields")
    names = [name.strip() for name in raw if name.strip()]
    if not names:
        raise InvalidInput("fields must name at least one field", field="fields")
    if allowed is not None:
        allowed = set(allowed)
        unknown = [name for name in names if name not in allowed]
        if unknown:
            raise InvalidInput(
                f"unknown field(s) {', '.join(unknown)} in fields; known: {', '.join(sorted(allowed))}", field="fields"
            )
    return names


def project(item: dict, names: list[str] | None) -> dict:
    if names is None:
        return item
    return {name: item[name] for name in names if name in item}


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

    def initial(self, request: Request, *args, **kwargs) -> None:
        super().initial(request, *args, **kwargs)
        self._token = token_of(request)
        self._account: Account | None = None
        if self.acts_for_account and self._token is not None:
            self._account = acting_account(token=self._token, cid=request.headers.get("x-flespi-cid"))
            self._check_region(request, self._account)
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

    def region_to_serve(self, request: Request, account: Account) -> tuple[str, int]:
        """The region that must serve this request, and the account that decides it: by default
        the acting account."""
        return account.region.code, account.pk

    def _check_region(self, request: Request, account: Account) -> None:
        if region_config(code=account.region.code) is None:
            raise Conflict(
                f"account {account.pk} lives in region {account.region.code}, which is not in the platform's "
                "configuration (FLESPI_TOPOLOGY): an operator must add the region back and run "
                "`manage.py platform_setup` before the account can be used",
                kind=ErrorKind.REGION_NOT_CONFIGURED,
            )
        host_region = getattr(request._request, "host_region", None)
        region, account_id = self.region_to_serve(request, account)
        config = region_config(code=region)
        if host_region is None or host_region == region or config is None:
            return
        url = config.rest_url
        raise RegionRedirect(
            region=region, url=url, location=url + request.get_full_path(), account_id=account_id
        )


class Resource(ABC):
    """What an endpoint serves: which rows an account sees, how they render, how they are
    created, updated and deleted (each through a service)."""

    name: ClassVar[str] = "item"
    selector_fields: ClassVar[dict[str, SelectorField]] = {"id": SelectorField("pk", "int")}
    # Every resource creates and updates (``create`` and ``update`` are abstract): it names the
    # serializers of their input.
    create_serializer: ClassVar[type[serializers.Serializer]]
    update_serializer: ClassVar[type[serializers.Serializer]]
    output_fields: ClassVar[tuple[str, ...]] = ("id",)
    max_batch: ClassVar[int] = 1000

    def __init__(self, view: ResourceView):
        self.view = view

    @property
    def account(self) -> Account:
        return self.view.account

    @abstractmethod
    def queryset(self) -> QuerySet: ...

    @abstractmethod
    def render(self, obj: Model) -> dict: ...

    @abstractmethod
    def create(self, data: dict) -> Model: ...

    @abstractmethod
    def update(self, obj: Model, data: dict) -> Model: ...

    @abstractmethod
    def delete(self, obj: Model) -> None: ...


def _status_of(errors: list[dict], done: int) -> int:
    if done or not errors:
        return 200
    return max(error["code"] for error in errors) if len({e["code"] for e in errors}) == 1 else 400


class ResourceView(FlespiAPIView):
    resource_class: ClassVar[type[Resource]]
    query_parameters = {"GET": ProjectionParameters, "POST": ProjectionParameters, "PUT": ProjectionParameters}

    def _resource(self) -> Resource:
        return self.resource_class(self)

    def selected(self, selector: str | None) -> QuerySet:
        resource = self._resource()
        queryset = resource.queryset()
        if selector is not None:
            queryset = queryset.filter(parse_selector(selector, resource.selector_fields))
            if is_id_list(selector) and not queryset.exists():
                # Ids the account cannot see do not exist for it.
                raise NotFound(f"no {resource.name} with id {selector}")
        return queryset

    def get(self, request: Request, selector: str | None = None) -> Response:
        resource = self._resource()
        params = query_params(request)
        names = projection(params, resource.output_fields)
        rows = self.selected(selector or "all")
        return Response({"result": [project(resource.render(obj), names) for obj in rows]})

    def post(self, request: Request, selector: str | None = None) -> Response:
        resource = self._resource()
        if selector is not None:
            raise InvalidInput(f"POST creates {resource.name}s: send it to the collection, without a selector")
        items = json_body(request)
        if not isinstance(items, list):
            raise InvalidInput(f"the body must be a JSON array of {resource.name}s to create")
        if len(items) > resource.max_batch:
            raise InvalidInput(f"at most {resource.max_batch} {resource.name}s per request")
        names = projection(query_params(request), resource.output_fields)
        result, errors = [], []
        for index, item in enumerate(items):
            serializer = resource.create_serializer(data=item)
            try:
                serializer.is_valid(raise_exception=True)
                obj = resource.create(serializer.validated_data)
            except serializers.ValidationError as exc:
                errors += _validation_errors(exc, index=index)
                continue
            except DomainError as exc:
                errors.append({**exc.as_error(), "index": index})
                continue
            result.append(project(resource.render(obj), names))
        return self._batch_response(result, errors)

    def put(self, request: Request, selector: str | None = None) -> Response:
        resource = self._resource()
        if selector is None:
            raise InvalidInput(f"PUT updates selected {resource.name}s: add a selector to the path, like /all or /12")
        data = json_body(request)
        if not isinstance(data, dict):
            raise InvalidInput("the body must be a JSON object with the fields to change")
        serializer = resource.update_serializer(data=data, partial=True)
        serializer.is_valid(raise_exception=True)
        names = projection(query_params(request), resource.output_fields)
        objects = list(self.selected(selector))
        if not objects:
            raise NotFound(f"no {resource.name} matches {selector!r}")
        result, errors = [], []
        for obj in objects:
            try:
                obj = resource.update(obj, dict(serializer.validated_data))
            except DomainError as exc:
                errors.append({**exc.as_error(), "id": obj.pk})
                continue
            result.append(project(resource.render(obj), names))
        return self._batch_response(result, errors)

    def delete(self, request: Request, selector: str | None = None) -> Response:
        resource = self._resource()
        if selector is None:
            raise InvalidInput(f"DELETE removes selected {resource.name}s: add a selector to the path")
        objects = list(self.selected(selector))
        if not objects:
            raise NotFound(f"no {resource.name} matches {selector!r}")
        result, errors = [], []
        for obj in objects:
            pk = obj.pk
            try:
                resource.delete(obj)
            except DomainError as exc:
                errors.append({**exc.as_error(), "id": pk})
                continue
            result.append({"id": pk})
        return self._batch_response(result, errors)

    @staticmethod
    def _batch_response(result: list, errors: list[dict]) -> Response:
        body: dict[str, Any] = {"result": result}
        if errors:
            body["errors"] = errors
        return Response(body, status=_status_of(errors, len(result)))


def _validation_errors(exc: serializers.ValidationError, *, index: int) -> list[dict]:
    from flespi_site.api.exceptions import _flatten

    return [
        {
            "code": 400,
            "type": "invalid",
            "reason": f"{field}: {message}" if field else message,
            **({"field": field} if field else {}),
            "index": index,
        }
        for field, message in _flatten(exc.detail)
    ]


def resource_paths(prefix: str, view: type[ResourceView], name: str) -> list:
    """The collection path and the selector path of a resource."""
    handler = view.as_view()
    return [
        path(prefix, handler, name=name),
        path(f"{prefix}/<str:selector>", handler, name=f"{name}-selected"),
    ]

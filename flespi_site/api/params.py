"""Query parameters: the one reader of a request's parameters, plain (``?count=5``) or in
``data=<JSON object>``, and what the views do with them (refuse unknown ones, validate them by a
serializer, project items by ``fields``).

``data=`` is parsed once per request (``QueryParameters.of``), whoever asks first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cached_property
from typing import Any

from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request

from flespi_site.api import fields as strict
from flespi_site.api.parsers import loads_strict
from flespi_site.errors import InvalidInput


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
# int() and float() also read "1_000", " 1", other scripts' digits, "nan" and "inf".
_PLAIN_INTEGER = re.compile(r"-?[0-9]+")
_PLAIN_NUMBER = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


def _echoed(name: str) -> str:
    return name if len(name) <= _ECHOED_NAME_LENGTH else name[:_ECHOED_NAME_LENGTH] + "..."


class QueryParameters:
    """The parameters of one request: ``plain`` (the last value of each plain parameter, as
    text), ``repeated`` (plain ones given more than once) and ``data`` (the JSON object of
    ``data=``, parsed on first use)."""

    def __init__(self, request: Request):
        self._query = request.query_params
        self.plain: dict[str, str] = {key: values[-1] for key, values in self._query.lists() if key != "data"}
        self.repeated = [key for key, values in self._query.lists() if len(values) > 1]
        self.has_data = "data" in self._query

    @classmethod
    def of(cls, request: Request) -> QueryParameters:
        """The reader of ``request``, made once per request."""
        reader = getattr(request, "_flespi_query", None)
        if reader is None:
            reader = cls(request)
            request._flespi_query = reader  # type: ignore[attr-defined]
        return reader

    @cached_property
    def data(self) -> dict[str, Any]:
        if not self.has_data:
            return {}
        data = loads_strict(self._query["data"], what="query parameter data")
        if not isinstance(data, dict):
            raise InvalidInput("query parameter data must be a JSON object", field="data")
        return data

    def merged(self) -> dict[str, Any]:
        """Plain parameters as text, with ``data=`` values (keeping their JSON types) over them."""
        return {**self.plain, **self.data}


def refuse_unknown_parameters(request: Request, parameters: type[serializers.Serializer]) -> None:
    """Refuse query parameters (plain, or keys of ``data=``) that ``parameters`` does not
    declare, and plain ones given twice: a typo must not silently change what a request does."""
    reader = QueryParameters.of(request)
    known = set(parameters().fields)
    problems: dict[str, list[str]] = {
        _echoed(name): ["query parameter given more than once; give it once"] for name in reader.repeated
    }
    given = list(reader.plain) + (["data"] if reader.has_data else [])
    if known:
        given += [name for name in reader.data if name not in given]
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
    """Query parameters, with ``data=<JSON object>`` merged over the plain ones (all text)."""
    return QueryParameters.of(request).merged()


def validated_params(request: Request, serializer_class: type[serializers.Serializer]) -> dict[str, Any]:
    """Query parameters validated by ``serializer_class``. Plain parameters arrive as text and
    are read as the type the serializer expects; ``data=`` values keep their JSON types."""
    reader = QueryParameters.of(request)
    params: dict[str, Any] = dict(reader.plain)
    declared = serializer_class().fields
    for name, text in reader.plain.items():
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
    params.update(reader.data)
    serializer = serializer_class(data=params)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def projection(params: dict[str, Any], allowed: Iterable[str] | None = None) -> list[str] | None:
    """The ``fields=a,b`` parameter (or a JSON array of names) as a list; None: every field.
    ``allowed``: the names the items have (None: any name, as in messages)."""
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
    """``item`` with only ``names`` (those it has), or whole when ``names`` is None."""
    if names is None:
        return item
    return {name: item[name] for name in names if name in item}

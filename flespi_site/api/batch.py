"""The answer of a batch: ``{"result": [...], "errors": [...]}`` with one status for the whole.

A batch that did part of its work answers 200 with both; one that did nothing answers with the
status its errors share (400 when they differ); one with no errors is 200.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from rest_framework import serializers
from rest_framework.response import Response

from flespi_site.api.exceptions import flatten_detail
from flespi_site.errors import DomainError, error_item, named_error

Item = TypeVar("Item")


def batch_status(errors: list[dict], *, done: int) -> int:
    if done or not errors:
        return 200
    codes = {error["code"] for error in errors}
    return codes.pop() if len(codes) == 1 else 400


def batch_response(result: list, errors: list[dict], *, done: int | None = None) -> Response:
    """The envelope of a batch. ``done``: how many items it did (default: ``len(result)``; a
    write that answers no items, like a message upload, says how many it stored)."""
    body: dict[str, Any] = {"result": result}
    if errors:
        body["errors"] = errors
    return Response(body, status=batch_status(errors, done=len(result) if done is None else done))


def each_item(
    items: Iterable[Item], write: Callable[[Item], dict], *, named: Callable[[Item], dict]
) -> Response:
    """``write`` each item, in one batch: the dicts it returns are the result; an item it refuses
    with a domain error is an error naming it by ``named(item)`` (``named_error``), and the
    others go on."""
    result, errors = [], []
    for item in items:
        name = named(item)  # before the write: a deleted row has no pk
        try:
            result.append(write(item))
        except DomainError as exc:
            errors.append(named_error(exc.as_error(), name))
    return batch_response(result, errors)


def item_validation_errors(exc: serializers.ValidationError, *, index: int) -> list[dict]:
    """The errors of one item of a POSTed array that its serializer refused, naming its index."""
    return [
        error_item(code=400, reason=f"{field}: {message}" if field else message, field=field or None, index=index)
        for field, message in flatten_detail(exc.detail)
    ]

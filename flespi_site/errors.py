"""Domain errors. Services raise them, or return them for the items of a batch they refused; the
API's exception handler and batch responses render them into the ``{"errors": [...]}`` envelope,
and other entry points (the MQTT consumer, commands) log or print them.

An error's ``kind`` (an ``ErrorKind``) is machine-readable and stable: services, the MQTT
consumer, logs and tests branch on it. ``status`` is the HTTP status the API renders it with (the
wire's ``"code"``). ``index`` (the position in a batch), ``id`` (of the entity) or ``selector``
say which item of a batch an error is about.

On the wire an error is flespi's error item (``error_item``): ``code``, ``reason`` and, when
they apply, ``id``, ``selector`` and ``field``, nothing else (flespi's clients build their error
objects from exactly these keys, and fail on any other). The position of an item in a POSTed
array is the head of ``field``, as a path from the body's root: ``[2].configuration.ident``.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorKind(StrEnum):
    INVALID = "invalid"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    TOO_LARGE = "too_large"
    UNAUTHORIZED = "unauthorized"
    ACCOUNT_NOT_FOUND = "account_not_found"
    REGION_NOT_CONFIGURED = "region_not_configured"
    DATACENTER_NOT_CONFIGURED = "datacenter_not_configured"
    WRONG_REGION = "wrong_region"
    DEVICE_DISABLED = "device_disabled"
    INVALID_MESSAGE = "invalid_message"
    INVALID_CALCULATOR = "invalid_calculator"
    RANGE_TOO_LONG = "range_too_long"
    TOO_MANY_MESSAGES = "too_many_messages"
    ACCOUNT_MOVING = "account_moving"
    RATE_LIMITED = "rate_limited"


def field_path(*, index: int | None, field: str | None) -> str | None:
    """The path of a faulty field from the root of a body: ``[index]`` first for an item of a
    POSTed array."""
    if index is None:
        return field
    return f"[{index}]" + (f".{field}" if field else "")


def error_item(
    *,
    code: int,
    reason: str,
    id: int | None = None,  # the wire names an entity's id "id"
    selector: str | None = None,
    field: str | None = None,
    index: int | None = None,
) -> dict:
    """flespi's error item: the one shape of an error on the wire."""
    item: dict = {"code": code, "reason": reason}
    if id is not None:
        item["id"] = id
    if selector:
        item["selector"] = selector
    path = field_path(index=index, field=field)
    if path:
        item["field"] = path
    return item


def named_error(error: dict, name: dict) -> dict:
    """An error item naming the item of a batch it is about: ``name`` is what names the item
    (``Resource.named``: its ``id``, and the other ids it is selected by, which go to
    ``selector`` as ``key=value`` conditions, ``calc_id=3``)."""
    named = dict(error)
    if "id" in name:
        named["id"] = name["id"]
    others = ",".join(f"{key}={value}" for key, value in name.items() if key != "id")
    if others:
        named["selector"] = others
    return named


class DomainError(Exception):
    status = 400
    kind = ErrorKind.INVALID

    def __init__(
        self,
        reason: str,
        *,
        kind: ErrorKind | None = None,
        field: str | None = None,
        index: int | None = None,
        id: int | None = None,  # the wire names an entity's id "id"
        selector: str | None = None,
        **extra,
    ):
        super().__init__(reason)
        self.reason = reason
        if kind is not None:
            self.kind = kind
        self.field = field
        self.index = index
        self.id = id
        self.selector = selector
        # What else the platform knows of the error (a rate's limit, burst): for logs and
        # headers; flespi's error item has no place for it.
        self.extra = extra

    def as_error(self) -> dict:
        """The error as the API renders it (``error_item``)."""
        return error_item(
            code=self.status, reason=self.reason, id=self.id, selector=self.selector, field=self.field, index=self.index
        )


class InvalidInput(DomainError):
    status = 400
    kind = ErrorKind.INVALID


class NotAllowed(DomainError):
    status = 403
    kind = ErrorKind.FORBIDDEN


class NotFound(DomainError):
    status = 404
    kind = ErrorKind.NOT_FOUND


class Conflict(DomainError):
    status = 409
    kind = ErrorKind.CONFLICT


class TooLarge(DomainError):
    status = 413
    kind = ErrorKind.TOO_LARGE


class Unauthorized(DomainError):
    status = 401
    kind = ErrorKind.UNAUTHORIZED


class RateLimited(DomainError):
    """Over the token's rate (``flespi_site.api.throttling``); ``retry_after`` seconds until the
    request would be allowed, sent as ``Retry-After``."""

    status = 429
    kind = ErrorKind.RATE_LIMITED

    def __init__(self, reason: str, *, retry_after: int, **extra):
        super().__init__(reason, retry_after=retry_after, **extra)
        self.headers = {"Retry-After": str(retry_after)}

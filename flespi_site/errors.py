"""Domain errors. Services raise them, or return them for the items of a batch they refused; the
API's exception handler and batch responses render them into the ``{"errors": [...]}`` envelope,
and other entry points (the MQTT consumer, commands) log or print them.

An error's ``kind`` (an ``ErrorKind``, the wire's ``"type"``) is machine-readable and stable;
``status`` is the HTTP status the API renders it with (the wire's ``"code"``): nothing but the
API looks at it. ``index`` (the position in a batch) or ``id`` (of the entity) say which item
of a batch an error is about.
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
        **extra,
    ):
        super().__init__(reason)
        self.reason = reason
        if kind is not None:
            self.kind = kind
        self.field = field
        self.index = index
        self.id = id
        self.extra = extra

    def as_error(self) -> dict:
        """The error as the API renders it."""
        error: dict = {"code": self.status, "type": str(self.kind), "reason": self.reason}
        if self.field:
            error["field"] = self.field
        if self.index is not None:
            error["index"] = self.index
        if self.id is not None:
            error["id"] = self.id
        error.update(self.extra)
        return error


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

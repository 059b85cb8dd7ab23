"""Domain errors. Services raise them; the API's exception handler renders them into the
``{"errors": [...]}`` envelope with their status. ``code`` is machine-readable and stable."""

from __future__ import annotations


class DomainError(Exception):
    status = 400
    code = "invalid"

    def __init__(self, reason: str, *, code: str | None = None, field: str | None = None, **extra):
        super().__init__(reason)
        self.reason = reason
        if code is not None:
            self.code = code
        self.field = field
        self.extra = extra

    def as_error(self) -> dict:
        error = {"code": self.status, "type": self.code, "reason": self.reason}
        if self.field:
            error["field"] = self.field
        error.update(self.extra)
        return error


class InvalidInput(DomainError):
    status = 400
    code = "invalid"


class NotAllowed(DomainError):
    status = 403
    code = "forbidden"


class NotFound(DomainError):
    status = 404
    code = "not_found"


class Conflict(DomainError):
    status = 409
    code = "conflict"


class TooLarge(DomainError):
    status = 413
    code = "too_large"


class Unauthorized(DomainError):
    status = 401
    code = "unauthorized"

"""The one exception handler of the API: every failure becomes ``{"errors": [...]}``."""

from __future__ import annotations

import logging

from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import Http404
from rest_framework import exceptions as drf
from rest_framework.response import Response
from rest_framework.settings import api_settings

from flespi_site.errors import DomainError, error_item

logger = logging.getLogger(__name__)


class RegionRedirect(Exception):
    """The acting account lives in another region: the client must go there."""

    def __init__(self, *, region: str, url: str, location: str, account_id: int):
        super().__init__(region)
        self.region = region
        self.url = url
        self.location = location
        self.account_id = account_id


def flatten_detail(detail, path: str = "") -> list[tuple[str, str]]:
    if isinstance(detail, dict):
        items = []
        for key, value in detail.items():
            # DRF files an error of a whole object under "non_field_errors": it is the object's own.
            if key == api_settings.NON_FIELD_ERRORS_KEY:
                items += flatten_detail(value, path)
            elif isinstance(key, int):  # an item of a list of objects (DRF files it by index)
                items += flatten_detail(value, f"{path}[{key}]")
            else:
                items += flatten_detail(value, f"{path}.{key}" if path else str(key))
        return items
    if isinstance(detail, list):
        if all(not isinstance(item, (dict, list)) for item in detail):
            return [(path, str(item)) for item in detail]
        items = []
        for index, value in enumerate(detail):
            items += flatten_detail(value, f"{path}[{index}]")
        return items
    return [(path, str(detail))]


def errors_response(errors: list[dict], status: int, headers: dict | None = None) -> Response:
    return Response({"errors": errors}, status=status, headers=headers)


def exception_handler(exc, context):
    if isinstance(exc, RegionRedirect):
        return Response(
            {
                "errors": [
                    error_item(
                        code=307,
                        reason=f"account {exc.account_id} lives in region {exc.region}: send requests to {exc.url}",
                    )
                ],
                "region": exc.region,
                "url": exc.url,
            },
            status=307,
            headers={"Location": exc.location, "X-Flespi-Region": exc.region, "X-Flespi-Region-Url": exc.url},
        )
    if isinstance(exc, DomainError):
        return errors_response([exc.as_error()], exc.status, getattr(exc, "headers", None))
    if isinstance(exc, RequestDataTooBig):
        return errors_response([error_item(code=413, reason="request body too large")], 413)
    if isinstance(exc, Http404):
        return errors_response([error_item(code=404, reason=str(exc) or "not found")], 404)
    if isinstance(exc, PermissionDenied):
        return errors_response([error_item(code=403, reason=str(exc) or "forbidden")], 403)
    if isinstance(exc, drf.ValidationError):
        errors = [
            error_item(code=400, reason=f"{path}: {message}" if path else message, field=path or None)
            for path, message in flatten_detail(exc.detail)
        ]
        return errors_response(errors, 400)
    if isinstance(exc, drf.APIException):
        headers = {}
        if isinstance(exc, (drf.NotAuthenticated, drf.AuthenticationFailed)):
            headers["WWW-Authenticate"] = "FlespiToken"
        if getattr(exc, "wait", None):
            headers["Retry-After"] = str(int(exc.wait))
        status = exc.status_code
        if isinstance(exc, drf.NotAuthenticated):
            status = 401
        reasons = [message for _path, message in flatten_detail(exc.detail)]
        if isinstance(exc, drf.UnsupportedMediaType):
            reasons = [
                f"{reason}; send the body as JSON with Content-Type: application/json (curl: --json)"
                if reason.startswith("Unsupported media type") else reason
                for reason in reasons
            ]
        return errors_response([error_item(code=status, reason=reason) for reason in reasons], status, headers)
    logger.exception("unhandled error in %s", context.get("view").__class__.__name__ if context else "?")
    return errors_response([error_item(code=500, reason="internal error; it has been logged")], 500)

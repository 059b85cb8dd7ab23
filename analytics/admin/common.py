"""What the analytics admin's modules share: the JSON answers of the pages' endpoints and the
reading of a configuration typed as JSON text.

A page's endpoint answers JSON the page's script reads: a result, or a refusal in the API's
envelope (``{"errors": [{"code", "reason", "field"?, ...}]}``), rendered by the API's one
exception handler from the same domain errors and validation errors the API raises.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

from django.http import JsonResponse
from rest_framework.exceptions import APIException
from rest_framework.utils.encoders import JSONEncoder

from flespi_site.api.exceptions import exception_handler
from flespi_site.errors import DomainError

DAY = 86400
MAX_TIMELINE_INTERVALS = 5000  # per assignment and page


def json_response(body: dict, status: int = 200) -> JsonResponse:
    return JsonResponse(body, status=status, encoder=JSONEncoder, json_dumps_params={"ensure_ascii": False})


def error_response(exc: DomainError | APIException) -> JsonResponse:
    """A refusal, as the API answers the same error (``flespi_site.api.exceptions``)."""
    rendered = exception_handler(exc, None)
    return json_response(rendered.data, status=rendered.status_code)


def json_endpoint(view: Callable[..., dict]) -> Callable[..., JsonResponse]:
    """A page's endpoint: the dict ``view`` returns is the answer; a domain error or a validation
    error it raises is the refusal."""

    @functools.wraps(view)
    def endpoint(*args: Any, **kwargs: Any) -> JsonResponse:
        try:
            return json_response(view(*args, **kwargs))
        except (DomainError, APIException) as exc:
            return error_response(exc)

    return endpoint


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def configuration_from_text(text: str) -> dict:
    """A calculator configuration typed as JSON text; ``ValueError`` saying where the text is
    wrong, or that it is not a JSON object. ``NaN`` and ``Infinity`` are refused: the platform
    does not store them."""
    try:
        config = json.loads(text, parse_constant=_refuse_constant)
    except ValueError as exc:  # JSONDecodeError is a ValueError
        raise ValueError(f"not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ValueError("the configuration is a JSON object")
    return config
